"""Pins agree everywhere: pyproject.toml, requirements.txt, requirements-dev.txt and poetry.lock."""

import re
import tomllib

from _support import REPO_ROOT


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins |= requirement_pins(path.parent / line[3:].strip())
            continue
        name, separator, version = line.partition("==")
        assert separator, f"{path.name}: {line!r} is not pinned with =="
        pins[normalise(name)] = version.strip()
    return pins


def lock_versions() -> dict[str, str]:
    lock = tomllib.loads((REPO_ROOT / "poetry.lock").read_text())
    return {normalise(p["name"]): p["version"] for p in lock["package"]}


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pins = {}
    for spec in project["project"]["dependencies"]:
        name, separator, version = spec.partition("==")
        assert separator, f"pyproject.toml: {spec!r} is not pinned with =="
        pins[normalise(name)] = version
    for name, version in project["tool"]["poetry"]["group"]["dev"]["dependencies"].items():
        pins[normalise(name)] = version.lstrip("=")
    return pins


def test_every_pin_matches_the_lock():
    locked = lock_versions()
    for source, pins in (("requirements.txt", requirement_pins(REPO_ROOT / "requirements.txt")),
                         ("requirements-dev.txt", requirement_pins(REPO_ROOT / "requirements-dev.txt")),
                         ("pyproject.toml", pyproject_pins())):
        for name, version in pins.items():
            assert name in locked, f"{source} pins {name}, which poetry.lock does not hold"
            assert locked[name] == version, f"{source} pins {name}=={version}, poetry.lock has {locked[name]}"


def test_dev_pins_cover_pyproject_and_runtime_is_a_subset():
    dev, runtime, declared = (requirement_pins(REPO_ROOT / "requirements-dev.txt"),
                              requirement_pins(REPO_ROOT / "requirements.txt"), pyproject_pins())
    assert set(declared) == set(dev), "requirements-dev.txt and pyproject.toml must name the same packages"
    assert set(runtime) <= set(dev)


def test_no_package_index_is_committed():
    for name in ("pyproject.toml", "requirements.txt", "requirements-dev.txt", "poetry.lock"):
        text = (REPO_ROOT / name).read_text()
        assert "[[tool.poetry.source]]" not in text and "index-url" not in text and "find-links" not in text
        assert "[package.source]" not in text, f"{name} records a package source"
