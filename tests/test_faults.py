"""Faults of the process and the disk (issue 17): what a command prints and leaves on disk when a write fails."""

import contextlib
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


@pytest.fixture(scope="module")
def small_export(small):
    """An untrained 32 px model, exported (analyze needs one; its quality does not matter here)."""
    home, config = small
    subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), "export", "--untrained",
                    "--encoder-weights", "none", "--alpha", "0.35", "--out", str(home / "model")], cwd=REPO_ROOT,
                   env=subprocess_env(home=home), check=True, capture_output=True, timeout=600)
    return home / "model" / "model.onnx"


@contextlib.contextmanager
def tmpfs(folder, *, size: str, read_only: bool = False):
    """A small tmpfs at ``folder`` (a real full disk, or a read-only one even for root); skipped where mounting is
    not allowed (it needs CAP_SYS_ADMIN: CI runs as root; the RLIMIT_FSIZE tests cover full disks anywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def analyze_cli(*args: str, config, home, limit: int | None = None) -> subprocess.CompletedProcess:
    if limit is not None:
        return cli_with_file_limit("analyze", *args, config=config, home=home, limit=limit)
    return subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), "analyze", *args],
                          cwd=REPO_ROOT, env=subprocess_env(home=home), capture_output=True, text=True, timeout=600)


def assert_one_line(result: subprocess.CompletedProcess, command: str, starts: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])  # not -7 (SIGBUS), not a traceback
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"coco-seg {command}: error: {starts}"), result.stderr[-3000:]
    return last


def test_analyze_on_a_full_disk_is_an_error_not_a_sigbus(small, small_export, tmp_path):
    home, config = small
    # 8 samples x 3 classes x 32 x 32 float16 = 48 KiB of probabilities: the manifest fits, the memmap does not
    with tmpfs(tmp_path / "disk", size="40k") as disk:
        result = analyze_cli("--model", str(small_export), "--out", str(disk / "analysis"), config=config, home=home)
        last = assert_one_line(result, "analyze", "cannot allocate")
        assert "No space left on device" in last and str(disk / "analysis" / "work" / "validation") in last
        left = sorted(p.name for p in (disk / "analysis" / "work" / "validation").iterdir())
        assert left == ["manifest.json"], left  # no half-allocated memmap, no part


def test_analyze_past_the_file_size_limit_is_an_error_not_a_sigbus(small, small_export, tmp_path):
    home, config = small
    result = analyze_cli("--model", str(small_export), "--out", str(tmp_path / "analysis"), config=config, home=home,
                         limit=40 * 1024)
    assert_one_line(result, "analyze", "cannot allocate")
    assert not list((tmp_path / "analysis").rglob("*.npy"))


@pytest.mark.parametrize("command", ["export", "train", "analyze", "make-sample"])
def test_an_out_folder_in_a_read_only_place_is_one_line(small, small_export, tmp_path, command):
    home, config = small
    with tmpfs(tmp_path / "ro", size="1m", read_only=True) as read_only:
        out = read_only / "out"
        args = {"export": ["export", "--untrained", "--encoder-weights", "none", "--alpha", "0.35"],
                "train": ["train", "--epochs", "1", "--encoder-weights", "none", "--alpha", "0.35"],
                "analyze": ["analyze", "--model", str(small_export)],
                "make-sample": ["make-sample", "--images", "8"]}[command]
        result = subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), *args, "--out",
                                 str(out)], cwd=REPO_ROOT, env=subprocess_env(home=home), capture_output=True,
                                text=True, timeout=600)
        last = assert_one_line(result, command, "Read-only file system")
        assert str(read_only) in last
        assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("command", ["export", "train", "analyze", "make-sample"])
def test_an_out_that_names_a_file_is_one_line_and_the_file_stays(small, small_export, tmp_path, command):
    home, config = small
    out = tmp_path / "notes.txt"
    out.write_text("a user's own file")
    args = {"export": ["export", "--untrained", "--encoder-weights", "none", "--alpha", "0.35"],
            "train": ["train", "--epochs", "1", "--encoder-weights", "none", "--alpha", "0.35"],
            "analyze": ["analyze", "--model", str(small_export)],
            "make-sample": ["make-sample", "--images", "8"]}[command]
    result = subprocess.run([sys.executable, "-m", "coco_seg.cli", "--config", str(config), *args, "--out", str(out)],
                            cwd=REPO_ROOT, env=subprocess_env(home=home), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert str(out) in result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
    assert out.read_text() == "a user's own file" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
