"""Faults of the process and the disk (issue 17): what a command prints and leaves on disk when a write fails."""

import contextlib
import json
import resource
import subprocess
import sys

import pytest

from _support import REPO_ROOT, data_tree, subprocess_env, write_config
from coco_seg.analysis.insights import KINDS
from coco_seg.analysis.run import PART_ARRAYS

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
        result = analyze_cli("--model", str(small_export), "--out", str(disk / "analysis"), "--split", "validation",
                             config=config, home=home)
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


BROKEN_MODEL_CLI = """
import os, sys
import numpy as np
from coco_seg import cli
from coco_seg.analysis import run

# The model outputs NaN everywhere for the samples at these positions of the stream (splits in order), and one Inf
# logit at one pixel for those in ONE_INF: what a diverged or numerically broken model does to some inputs.
ALL_NAN = {int(p) for p in os.environ["ALL_NAN"].split(",") if p.isdigit()}
ONE_INF = {int(p) for p in os.environ["ONE_INF"].split(",") if p}
real_model = run.analysis_model


def broken_model(*args, **kwargs):
    predict, seen = real_model(*args, **kwargs), [0]

    def wrapped(images):
        logits, *features = predict(images)
        logits = np.array(logits, copy=True)
        for i in range(len(images)):
            if seen[0] + i in ALL_NAN or "all" in os.environ["ALL_NAN"]:
                logits[i] = np.nan
            elif seen[0] + i in ONE_INF:
                logits[i, 0, 0, 1] = np.inf
        seen[0] += len(images)
        return (logits, *features)
    return wrapped


run.analysis_model = broken_model
sys.exit(cli.main(sys.argv[1:]))
"""


def broken_analyze(script, *args, config, home, all_nan: str, one_inf: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), "--config", str(config), "analyze", *args], cwd=REPO_ROOT,
                          env=subprocess_env(home=home, ALL_NAN=all_nan, ONE_INF=one_inf), capture_output=True,
                          text=True, timeout=600)


def strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path.name} holds the non-JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_samples_with_non_finite_logits_are_counted_and_kept_out_of_every_ranking(small, small_export, tmp_path,
                                                                                  generated_root):
    """A model whose output is NaN for some samples (and Inf at one pixel of another): each such sample is counted
    (non_finite_logits, degenerate), warned about, and has no uncertainty, label-issue score or rank, map point,
    cluster, neighbours or pruning; the other samples get the metrics of a clean run; every JSON is strict."""
    import numpy as np
    import pandas as pd

    from _support import render_report

    home, _ = small
    config = write_config(tmp_path, data_tree(generated_root, splits={
        "training": {"images": "train2017", "annotations": "annotations/instances_train2017.json"},
        "validation": {"images": "val2017", "annotations": "annotations/instances_val2017.json"},
        "unlabeled": {"images": "val2017"}}) | {"image_size": 32})
    script = tmp_path / "broken_cli.py"
    script.write_text(BROKEN_MODEL_CLI)
    splits = ["--split", "validation,unlabeled"]
    clean = broken_analyze(script, "--model", str(small_export), "--out", str(tmp_path / "clean"), "--batch-size",
                           "3", *splits, config=config, home=home, all_nan="")
    assert clean.returncode == 0, clean.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "clean" / "samples.parquet")
    reference = table[table["split"] == "validation"]
    count, pixels = len(reference), 32 * 32
    assert (reference["non_finite_logits"] == 0).all() and not reference["degenerate"].any()
    assert "NaN" not in clean.stderr

    # validation rows 0 and 4 all NaN, row 1 one Inf pixel; the first unlabeled sample all NaN
    result = broken_analyze(script, "--model", str(small_export), "--out", str(tmp_path / "broken"), "--batch-size",
                            "3", *splits, config=config, home=home, all_nan=f"0,4,{count}", one_inf="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"coco-seg analyze: warning: the model's output is NaN or Inf in 3 of {count} validation samples"
            in result.stderr), result.stderr[-3000:]
    unlabeled = len(list((generated_root / "val2017").iterdir()))
    assert f"NaN or Inf in 1 of {unlabeled} unlabeled samples" in result.stderr
    assert "left out of the map, clusters, label issues, pruning, dashboards, labelling suggestions" in result.stderr
    out = tmp_path / "broken"
    table = pd.read_parquet(out / "samples.parquet")
    samples = table[table["split"] == "validation"]
    assert table.loc[table["split"] == "unlabeled", "degenerate"].tolist()[:2] == [True, False]
    bad = [0, 1, 4]
    good = [r for r in range(count) if r not in bad]
    expected_counts = np.zeros(count, np.int64)
    expected_counts[[0, 4]], expected_counts[1] = pixels, 1
    assert samples["non_finite_logits"].tolist() == expected_counts.tolist()
    assert samples["degenerate"].tolist() == [r in bad for r in range(count)]
    assert samples.loc[bad, "uncertainty"].isna().all() and np.isfinite(samples.loc[good, "uncertainty"]).all()
    assert samples.loc[bad, "label_issue_score"].isna().all() and samples.loc[bad, "label_issue_rank"].isna().all()
    assert sorted(samples.loc[good, "label_issue_rank"].astype(int)) == list(range(1, len(good) + 1))
    assert samples.loc[bad, ["map_x", "map_y"]].isna().all().all()
    assert np.isfinite(samples.loc[good, ["map_x", "map_y"]].to_numpy()).all()
    assert samples.loc[bad, "cluster"].isna().all() and samples.loc[good, "cluster"].notna().all()
    assert (samples.loc[bad, "neighbors"] == "").all() and not samples.loc[bad, "prune"].any()
    bad_ids = set(samples.loc[bad, "key"]) | {table.loc[table["split"] == "unlabeled", "key"].iloc[0]}
    assert not bad_ids & set(" ".join(table.loc[~table["degenerate"], "neighbors"]).split())
    for column in ("loss", "mean_iou", "uncertainty"):  # the other samples' figures are those of a clean run
        np.testing.assert_allclose(samples.loc[good, column], reference.loc[good, column], rtol=1e-5)

    summary = strict_json(out / "summary.json")
    assert summary["non_finite_samples"] == 4 and summary["samples"] == {"validation": count, "unlabeled": unlabeled}
    assert summary["mean_loss"] == pytest.approx(reference.loc[good, "loss"].mean(), rel=1e-5)
    suggestions = strict_json(out / "labelling_suggestions.json")
    assert len(suggestions) == unlabeled - 1 and [s["rank"] for s in suggestions] == list(range(1, unlabeled))
    for name in ("dashboards.json", "class_swaps.json", "pruning.json"):
        strict_json(out / name)
    assert not set(strict_json(out / "pruning.json")["drop_ids"]) & bad_ids
    rendered = render_report(out / "report.html")
    assert rendered["errors"] == [] and rendered["points"] == len(good) + unlabeled - 1
    assert not {f["kind"] for f in strict_json(out / "insights.json")["findings"]} - set(KINDS)
    assert not bad_ids & {key for f in strict_json(out / "insights.json")["findings"] for key in f["sample_ids"]}


def test_analyze_of_a_model_whose_output_is_all_nan_exits_2_and_writes_no_report(small, small_export, tmp_path):
    home, config = small
    script = tmp_path / "broken_cli.py"
    script.write_text(BROKEN_MODEL_CLI)
    result = broken_analyze(script, "--model", str(small_export), "--out", str(tmp_path / "analysis"), "--split",
                            "validation", config=config, home=home, all_nan="all")
    last = assert_one_line(result, "analyze", "the model's output is NaN or Inf in every one of the ")
    assert last.endswith("samples of split validation: nothing to analyse (a diverged or broken model); "
                         "no report written")
    written = {p.name for p in (tmp_path / "analysis").iterdir()}
    assert written == {"work"}, written


KILLED_TRAIN_CLI = """
import os, signal, sys
from coco_seg import cli, training

# SIGKILL this process at one point of the checkpoint journal of epoch KILL_EPOCH (coco_seg.training's comment).
point, epoch = os.environ["KILL_AT"], int(os.environ["KILL_EPOCH"])
real_write, real_take = training._write_json_atomically, training._take_name
current, taken = [0], [0]


def write(path, payload, **kwargs):
    if path.name == training.STATE_NAME:
        current[0] = payload["epochs_done"]
        if point == "before-commit" and current[0] == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, payload, **kwargs)


def take(pending, final):
    if current[0] == epoch:
        taken[0] += 1
        if (point, taken[0]) in (("after-commit", 1), ("between-renames", 2)):
            os.kill(os.getpid(), signal.SIGKILL)
    real_take(pending, final)


training._write_json_atomically, training._take_name = write, take
sys.exit(cli.main(sys.argv[1:]))
"""
TRAIN_ARGS = ["train", "--epochs", "2", "--encoder-weights", "none", "--alpha", "0.35", "--batch-size", "8"]


def train_cli(*args, config, home, script=None, **env) -> subprocess.CompletedProcess:
    entry = [str(script)] if script else ["-m", "coco_seg.cli"]
    return subprocess.run([sys.executable, *entry, "--config", str(config), *args], cwd=REPO_ROOT,
                          env=subprocess_env(home=home, **env), capture_output=True, text=True, timeout=600)


def run_files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def uninterrupted(small):
    home, config = small
    run = home / "uninterrupted"
    result = train_cli(*TRAIN_ARGS, "--out", str(run), config=config, home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.mark.parametrize("point, epoch, expected", [
    ("before-commit", 2, {"epochs_done": 1, "pending": ["checkpoints/last.pending.keras"]}),
    ("after-commit", 2, {"epochs_done": 2, "pending": ["checkpoints/last.pending.keras"]}),
    ("between-renames", 1, {"epochs_done": 1, "pending": ["checkpoints/best.pending.keras"]}),
])
def test_a_training_run_killed_at_any_point_of_its_checkpoint_journal_resumes_exactly(
        small, uninterrupted, tmp_path, point, epoch, expected):
    """SIGKILL before the state names an epoch's checkpoints, after it, and between two renames: the resume drops
    the uncommitted epoch or rolls the committed one forward, and ends with the uninterrupted run's history."""
    from coco_seg.index_cache import content_digest

    home, config = small
    script = tmp_path / "killed_train.py"
    script.write_text(KILLED_TRAIN_CLI)
    run = tmp_path / "run"
    killed = train_cli(*TRAIN_ARGS, "--out", str(run), config=config, home=home, script=script, KILL_AT=point,
                       KILL_EPOCH=str(epoch))
    assert killed.returncode == -9, killed.stderr[-3000:]
    state = json.loads((run / "train_state.json").read_text())
    assert state["epochs_done"] == expected["epochs_done"]
    assert [f for f in run_files(run) if ".pending." in f] == expected["pending"]

    resumed = train_cli(*TRAIN_ARGS, "--out", str(run), "--resume", config=config, home=home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming after epoch {expected['epochs_done']} of 2" in resumed.stdout
    state = json.loads((run / "train_state.json").read_text())
    reference = json.loads((uninterrupted / "train_state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert [r["train_loss"] for r in state["history"]] == pytest.approx(
        [r["train_loss"] for r in reference["history"]], rel=1e-4)
    assert run_files(run) == ["checkpoints/best.keras", "checkpoints/last.keras", "train_state.json"]
    for name, entry in state["checkpoints"].items():
        assert content_digest(run / "checkpoints" / name) == entry["sha256"]
    assert state["checkpoints"]["last.keras"]["epoch"] == 2


def test_a_checkpoint_changed_after_training_is_refused_by_resume_and_export(small, uninterrupted, tmp_path):
    import shutil

    home, config = small
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    other = tmp_path / "other"
    result = train_cli(*TRAIN_ARGS[:2], "1", *TRAIN_ARGS[3:], "--seed", "7", "--out", str(other), config=config,
                       home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copy(other / "checkpoints" / "last.keras", run / "checkpoints" / "last.keras")
    before = {f: (run / f).read_bytes() for f in run_files(run)}
    resumed = train_cli(*TRAIN_ARGS[:2], "3", *TRAIN_ARGS[3:], "--out", str(run), "--resume", config=config,
                        home=home)
    last = assert_one_line(resumed, "train", str(run / "checkpoints" / "last.keras"))
    assert "describes epoch 2" in last and "replaced or changed after training" in last
    exported = train_cli("export", "--checkpoint", str(run / "checkpoints" / "last.keras"), "--out",
                         str(tmp_path / "model"), config=config, home=home)
    assert_one_line(exported, "export", str(run / "checkpoints" / "last.keras"))
    assert not (tmp_path / "model").exists()
    assert {f: (run / f).read_bytes() for f in run_files(run)} == before  # nothing touched


def test_train_refuses_a_folder_of_other_files_and_removes_a_killed_saves_temporaries(small, tmp_path):
    home, config = small
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    result = train_cli(*TRAIN_ARGS, "--out", str(run), config=config, home=home)
    assert_one_line(result, "train", f"refusing to train into {run}: it holds files that train does not write "
                                     f"(notes.txt)")
    assert run_files(run) == ["notes.txt"]
    (run / "notes.txt").unlink()
    (run / "checkpoints" / ".last.k3j4.tmp.keras").write_bytes(b"half a model")
    result = train_cli(*TRAIN_ARGS[:2], "1", *TRAIN_ARGS[3:], "--out", str(run), config=config, home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_files(run) == ["checkpoints/best.keras", "checkpoints/last.keras", "train_state.json"]


KILLED_ANALYZE_CLI = """
import os, signal, sys
from coco_seg import atomic, cli
from coco_seg.analysis import report

# SIGKILL this process while it builds the new analysis folder (KILL_AT=report: half its files written), or once
# it has moved work/ into it, just before the swap (KILL_AT=swap).
point = os.environ["KILL_AT"]
real_report, real_json = report.write_report, atomic.write_json_atomically


def write_report(*args, **kwargs):
    if point == "report":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_report(*args, **kwargs)


def write_json_atomically(path, payload, **kwargs):
    if point == "swap" and path.name == atomic.MANIFEST_NAME:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_json(path, payload, **kwargs)


report.write_report, atomic.write_json_atomically = write_report, write_json_atomically
sys.exit(cli.main(sys.argv[1:]))
"""


def folder_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "work" not in p.relative_to(folder).parts}


@pytest.mark.parametrize("point", ["report", "swap"])
def test_a_killed_analysis_leaves_the_previous_folder_whole_and_loses_no_finished_batch(small, small_export,
                                                                                        tmp_path, point):
    home, config = small
    out = tmp_path / "analysis"
    first = analyze_cli("--model", str(small_export), "--out", str(out), "--batch-size", "2", config=config,
                        home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    before = folder_bytes(out)
    assert {"samples.parquet", "report.html", "summary.json", ".coco-seg-files.json"} <= set(before)

    script = tmp_path / "killed_analyze.py"
    script.write_text(KILLED_ANALYZE_CLI)
    killed = subprocess.run([sys.executable, str(script), "--config", str(config), "analyze", "--model",
                             str(small_export), "--out", str(out), "--batch-size", "3"], cwd=REPO_ROOT,
                            env=subprocess_env(home=home, KILL_AT=point), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert folder_bytes(out) == before  # the previous analysis, whole: not a mix of two runs
    orphans = [p.name for p in tmp_path.iterdir() if p.name.startswith(".analysis.building-")]
    assert len(orphans) == 1
    parts_at = (out if point == "report" else tmp_path / orphans[0]) / "work" / "validation"
    parts = {p.name: p.stat().st_mtime_ns for p in parts_at.glob("part-*")}
    # 8 samples in batches of 3: every batch (a table part and its arrays) finished before the kill
    assert len(parts) == (1 + len(PART_ARRAYS)) * 3

    again = analyze_cli("--model", str(small_export), "--out", str(out), "--batch-size", "3", config=config,
                        home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "work" / "validation").glob("part-*")} == parts
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["analysis", "killed_analyze.py"])
    after = folder_bytes(out)
    assert set(after) == set(before)
    assert json.loads(after["summary.json"])["samples"] == json.loads(before["summary.json"])["samples"]


def test_analyze_refuses_a_folder_of_other_files_before_it_starts(small, small_export, tmp_path):
    home, config = small
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = analyze_cli("--model", str(small_export), "--out", str(out), config=config, home=home)
    assert_one_line(result, "analyze", f"refusing to write into {out}: it holds files coco-seg did not write "
                                       f"(notes.txt)")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
