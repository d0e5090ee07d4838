"""The commands a user types: the test runner's exit status and make-sample (the demo: test_analysis.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _support import REPO_ROOT, subprocess_env



def run_tests_on(folder: Path) -> int:
    code = ("from pathlib import Path; from coco_seg.run_tests import main; "
            f"main(['-q', '-p', 'no:cacheprovider'], tests=Path({str(folder)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=subprocess_env()).returncode


def test_test_runner_exits_non_zero_when_a_test_fails_or_none_ran(tmp_path):
    (tmp_path / "passing").mkdir()
    (tmp_path / "passing" / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    (tmp_path / "failing").mkdir()
    (tmp_path / "failing" / "test_bad.py").write_text("def test_bad():\n    assert 1 + 1 == 3\n")
    (tmp_path / "empty").mkdir()
    assert run_tests_on(tmp_path / "passing") == 0
    assert run_tests_on(tmp_path / "failing") == 1
    assert run_tests_on(tmp_path / "empty") == 5


def test_make_sample_is_byte_identical_for_the_same_seed(tmp_path):
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "coco_seg.cli", "make-sample", "--out", str(tmp_path / name),
                        "--images", "12", "--seed", "5", "--plant-defects", "0.3"], cwd=REPO_ROOT, check=True,
                       capture_output=True, env=subprocess_env(home=tmp_path))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 12
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_relative_config_reaches_subprocesses_as_an_absolute_path(tmp_path, monkeypatch, given):
    from coco_seg.cli import _use_config
    from coco_seg.config import CONFIG_ENV_VAR

    (tmp_path / "my.yaml").write_text("image_size: 64\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CONFIG_ENV_VAR, "")  # _use_config exports the path: undone after the test
    monkeypatch.delenv(CONFIG_ENV_VAR)
    if given == "environment":
        monkeypatch.setenv(CONFIG_ENV_VAR, "my.yaml")
    _use_config("my.yaml" if given == "flag" else None)
    assert os.environ[CONFIG_ENV_VAR] == str(tmp_path / "my.yaml")
    monkeypatch.chdir("/")  # as a subprocess started elsewhere sees it
    from coco_seg.config import load_config
    assert load_config().image_size == 64


def test_an_untrained_export_is_reproducible_by_its_seed(tmp_path, generated_root):
    """export --untrained --seed N: the same seed gives the same weights (tests and benchmarks that analyse an
    untrained model rely on it), another seed other weights."""
    import h5py
    import numpy as np

    from _support import data_tree, write_config

    config = write_config(tmp_path, data_tree(generated_root) | {"image_size": 32})

    def weights(name: str, seed: str) -> dict:
        subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), "export", "--untrained",
                        "--encoder-weights", "none", "--alpha", "0.35", "--seed", seed, "--out", str(tmp_path / name)],
                       cwd=REPO_ROOT, env=subprocess_env(home=tmp_path), check=True, capture_output=True, timeout=600)
        found = {}
        with h5py.File(tmp_path / name / "model.h5") as model:
            model.visititems(lambda key, item: found.__setitem__(key, item[()]) if isinstance(item, h5py.Dataset)
                             else None)
        return found

    first, again, other = weights("a", "3"), weights("b", "3"), weights("c", "4")
    kernels = [key for key in first if "kernel" in key]
    assert len(kernels) > 10 and first.keys() == again.keys() == other.keys()
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert sum(not np.array_equal(first[key], other[key]) for key in kernels) == len(kernels)
