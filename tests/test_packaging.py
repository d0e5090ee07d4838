"""Pins agree everywhere, and requirements.txt is exactly what the Tensorleap platform needs.

requirements-dev.txt and pyproject.toml pin exactly the poetry.lock versions. requirements.txt (what the
platform pip-installs) holds compatible-release (``~=``) ranges, each satisfied by the locked version, and names
only packages the runtime imports: every third-party module leap_binder.py imports at module level (following
the coco_seg modules it imports) is covered, and nothing else is there (no TensorFlow: the platform runs ONNX).
"""

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from _support import REPO_ROOT

RUNTIME_REQUIREMENTS = REPO_ROOT / "requirements.txt"
DEV_REQUIREMENTS = REPO_ROOT / "requirements-dev.txt"
# Import name -> distribution name, for the modules the runtime imports.
IMPORT_TO_DIST = {
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "code_loader": "code-loader",
    "pycocotools": "pycocotools",
    "orjson": "orjson",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
}
# Needed at runtime but imported inside functions: export.load_model opens the ONNX model with onnxruntime.
LAZY_RUNTIME_DISTS = {"onnxruntime"}
# Training, export and analysis only; a .h5/.keras model needs TensorFlow installed separately.
NOT_RUNTIME = ("tensorflow", "tensorflow-cpu", "tf2onnx", "onnx", "umap-learn", "cleanlab", "plotly", "pandas",
               "scikit-learn", "h5py", "keras", "scipy", "pyarrow", "tqdm", "pytest", "hypothesis", "playwright")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_specs(path: Path) -> dict[str, SpecifierSet]:
    """name -> specifier of a requirements file (following ``-r``); any other pip option is refused."""
    specs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            specs |= requirement_specs(path.parent / line[3:].strip())
            continue
        assert not line.startswith("-"), f"{path.name}: {line!r}: only requirements and -r belong here"
        requirement = Requirement(line)
        assert not requirement.url and not requirement.extras and requirement.marker is None, \
            f"{path.name}: {line!r}: a plain name and version specifier only"
        name = normalise(requirement.name)
        assert name not in specs, f"{path.name} names {name} twice"
        specs[name] = requirement.specifier
    return specs


def exact_pin(source: str, name: str, specifier: SpecifierSet) -> str:
    (only, *rest) = list(specifier) or [None]
    assert only is not None and not rest and only.operator == "==" and "*" not in only.version, \
        f"{source}: {name}{specifier} is not pinned with == to one version"
    return only.version


def requirement_pins(path: Path) -> dict[str, str]:
    return {name: exact_pin(path.name, name, spec) for name, spec in requirement_specs(path).items()}


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


# --- what the runtime imports ------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def module_level_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: not inside functions, ``if TYPE_CHECKING`` or optional imports."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.orelse:
                yield from module_level_imports(ast.Module(body=[statement], type_ignores=[]))
        elif isinstance(child, (ast.Try, ast.TryStar)) and _catches_import_error(child):
            for statement in child.orelse + child.finalbody:
                yield from module_level_imports(ast.Module(body=[statement], type_ignores=[]))
        else:
            yield from module_level_imports(child)


def local_module_file(dotted: str) -> Path | None:
    base = REPO_ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def runtime_entry_files() -> list[Path]:
    entries = {yaml.safe_load((REPO_ROOT / name).read_text())["entryFile"]
               for name in ("leap.yaml", ".tensorleap.yaml") if (REPO_ROOT / name).is_file()}
    entries |= {"leap_binder.py", "leap_integration.py"}
    return sorted(REPO_ROOT / entry for entry in entries if (REPO_ROOT / entry).is_file())


def third_party_runtime_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the local files importing it at module level, from the entry files on."""
    found: dict[str, set[str]] = {}
    queue = [(path, "") for path in runtime_entry_files()]
    seen: set[Path] = set()
    while queue:
        path, package = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in module_level_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".") if package else []
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                modules = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for module in modules:
                top = module.split(".")[0]
                if not top or top == "__future__" or top in sys.stdlib_module_names:
                    continue
                if local_module_file(top) is None:
                    found.setdefault(top, set()).add(path.relative_to(REPO_ROOT).as_posix())
                    continue
                parts = module.split(".")
                for end in range(1, len(parts) + 1):  # the packages above run too
                    file = local_module_file(".".join(parts[:end]))
                    if file is not None:
                        pkg = ".".join(parts[:end] if file.name == "__init__.py" else parts[:end - 1])
                        queue.append((file, pkg))
    return found


# --- the tests ---------------------------------------------------------------------------------------------


def test_exact_pins_match_the_lock():
    locked = lock_versions()
    for source, pins in (("requirements-dev.txt", requirement_pins(DEV_REQUIREMENTS)),
                         ("pyproject.toml", pyproject_pins())):
        for name, version in pins.items():
            assert name in locked, f"{source} pins {name}, which poetry.lock does not hold"
            assert locked[name] == version, f"{source} pins {name}=={version}, poetry.lock has {locked[name]}"


def test_runtime_ranges_are_compatible_releases_holding_the_locked_version():
    locked, dev = lock_versions(), requirement_pins(DEV_REQUIREMENTS)
    for name, specifier in requirement_specs(RUNTIME_REQUIREMENTS).items():
        operators = [s.operator for s in specifier]
        assert operators == ["~="], f"requirements.txt: {name}{specifier} is not one compatible-release (~=) range"
        assert name in locked, f"requirements.txt names {name}, which poetry.lock does not hold"
        assert specifier.contains(locked[name], prereleases=True), \
            f"requirements.txt: {name}{specifier} excludes the locked {locked[name]}"
        assert specifier.contains(dev[name], prereleases=True), \
            f"requirements.txt: {name}{specifier} excludes requirements-dev.txt's {dev[name]}"


def test_dev_pins_cover_pyproject_and_runtime_is_a_subset():
    dev, runtime, declared = (requirement_pins(DEV_REQUIREMENTS), requirement_specs(RUNTIME_REQUIREMENTS),
                              pyproject_pins())
    assert set(declared) == set(dev), "requirements-dev.txt and pyproject.toml must name the same packages"
    assert set(runtime) <= set(dev), f"requirements.txt names {sorted(set(runtime) - set(dev))}, dev does not"


def test_runtime_requirements_name_only_what_the_runtime_imports():
    runtime = set(requirement_specs(RUNTIME_REQUIREMENTS))
    present = sorted(runtime & {normalise(name) for name in NOT_RUNTIME})
    assert not present, f"requirements.txt names {present}, which the platform runtime does not import"
    imported = {normalise(IMPORT_TO_DIST.get(module, module)) for module in third_party_runtime_imports()}
    unused = sorted(runtime - imported - LAZY_RUNTIME_DISTS)
    assert not unused, f"requirements.txt names {unused}, which no runtime module imports"


def test_every_runtime_import_is_covered_by_requirements():
    imports = third_party_runtime_imports()
    assert {"numpy", "code_loader", "cv2", "yaml", "orjson", "pycocotools"} <= set(imports), \
        f"the import walk missed known runtime imports: found {sorted(imports)}"
    runtime = set(requirement_specs(RUNTIME_REQUIREMENTS))
    missing = {module: sorted(files) for module, files in imports.items()
               if normalise(IMPORT_TO_DIST.get(module, module)) not in runtime}
    assert not missing, f"imported at module level by the runtime but not in requirements.txt: {missing}" \
                        " (map the import name in IMPORT_TO_DIST if its distribution is named differently)"


def test_no_package_index_is_committed():
    for name in ("pyproject.toml", "requirements.txt", "requirements-dev.txt", "requirements-gpu.txt", "poetry.lock"):
        text = (REPO_ROOT / name).read_text()
        assert "[[tool.poetry.source]]" not in text and "index-url" not in text and "find-links" not in text
        assert "[package.source]" not in text, f"{name} records a package source"


def test_the_gpu_requirements_are_the_dev_pins_with_tensorflow_for_cuda():
    """requirements-gpu.txt swaps tensorflow-cpu for tensorflow[and-cuda] at the same version; nothing else
    differs, so a GPU machine trains with exactly the packages CI tests."""
    gpu: dict[str, str] = {}
    for line in (REPO_ROOT / "requirements-gpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            key = normalise(requirement.name) + "".join(f"[{e}]" for e in sorted(requirement.extras))
            gpu[key] = exact_pin("requirements-gpu.txt", key, requirement.specifier)
    dev = requirement_pins(DEV_REQUIREMENTS)
    assert gpu.pop("tensorflow[and-cuda]") == dev.pop("tensorflow-cpu")
    assert gpu == dev
