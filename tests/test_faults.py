"""Faults of the process and the disk (issue 17): what a command prints and leaves on disk when a write fails."""

import json
import resource
import subprocess
import sys

import pytest

from _support import REPO_ROOT, data_tree, subprocess_env, write_config

FILE_LIMIT = 256 * 1024  # bytes: the exported model files are larger, the config and temp names are not


def cli_with_file_limit(*args: str, config, home, limit: int = FILE_LIMIT) -> subprocess.CompletedProcess:
    """``coco-seg`` in a subprocess whose files cannot grow past ``limit`` (RLIMIT_FSIZE: writes fail with EFBIG,
    as on a full disk; Python ignores the SIGXFSZ that comes with it)."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), *args], cwd=REPO_ROOT,
                          env=subprocess_env(home=home), capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_files)


@pytest.fixture(scope="module")
def small(tmp_path_factory, generated_root):
    folder = tmp_path_factory.mktemp("faults")
    return folder, write_config(folder, data_tree(generated_root) | {"image_size": 32})


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(small, tmp_path):
    home, config = small
    result = cli_with_file_limit("export", "--untrained", "--encoder-weights", "none", "--alpha", "0.35", "--out",
                                 str(tmp_path / "model"), config=config, home=home)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("coco-seg export: error: File too large"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the folder nor a temporary


def test_export_on_a_full_disk_keeps_the_previous_export_whole(small, tmp_path):
    home, config = small
    subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), "export", "--untrained",
                    "--encoder-weights", "none", "--alpha", "0.35", "--out", str(tmp_path / "model")], cwd=REPO_ROOT,
                   env=subprocess_env(home=home), check=True, capture_output=True, timeout=600)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    result = cli_with_file_limit("export", "--untrained", "--encoder-weights", "none", "--alpha", "0.5", "--out",
                                 str(tmp_path / "model"), config=config, home=home)
    assert result.returncode == 2 and "coco-seg export: error: File too large" in result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert json.loads(before["model_card.json"])["image_size"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_io_error_names_what_and_where():
    import errno
    import os

    from coco_seg.cli import describe_os_error

    assert describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/model.onnx")) == \
        "No space left on device, /data/out/model.onnx"
    assert describe_os_error(OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b")) == \
        "Invalid cross-device link, /a, /b"
    assert describe_os_error(OSError(errno.EROFS, None)) == "Read-only file system"
    assert describe_os_error(OSError("h5py: unable to create file")) == "h5py: unable to create file"
