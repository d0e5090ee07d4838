"""Output folders are whole or nothing (coco_seg.atomic.replace_folder) and never take a user's own files."""

import json
import subprocess
import sys

import pytest

from coco_seg.atomic import MANIFEST_NAME, OutputFolderError, foreign_files, replace_folder


def writer(files: dict[str, str]):
    def build(folder):
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return build


def contents(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_folder_holds_what_was_built_and_its_manifest(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, writer({"a.txt": "1", "sub/b.txt": "2"}))
    assert json.loads((target / MANIFEST_NAME).read_text()) == {"files": ["a.txt", "sub/b.txt"]}
    assert {k: v for k, v in contents(target).items() if k != MANIFEST_NAME} == {"a.txt": "1", "sub/b.txt": "2"}
    assert (target.stat().st_mode & 0o777) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left beside it


def test_an_earlier_output_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, writer({"a.txt": "old", "only-old.txt": "x"}))
    replace_folder(target, writer({"a.txt": "new"}))
    assert {k: v for k, v in contents(target).items() if k != MANIFEST_NAME} == {"a.txt": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_build_leaves_the_previous_folder_exactly_as_it_was(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, writer({"a.txt": "old"}))
    before = contents(target)

    def half_then_fail(folder):
        (folder / "a.txt").write_text("new")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        replace_folder(target, half_then_fail)
    assert contents(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_with_files_coco_seg_did_not_write_is_refused_untouched(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, writer({"model.onnx": "m"}))
    (target / "my notes.txt").write_text("mine")
    before = contents(target)
    with pytest.raises(OutputFolderError) as refused:
        replace_folder(target, writer({"model.onnx": "new"}))
    assert str(refused.value) == (f"refusing to write into {target}: it holds files coco-seg did not write "
                                  f"(my notes.txt); choose a new or empty folder, or move them away")
    assert contents(target) == before


def test_known_names_of_an_output_without_manifest_count_as_ours(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.onnx").write_text("from an older version")
    assert foreign_files(target, known=["model.onnx"]) == []
    assert foreign_files(target) == ["model.onnx"]
    replace_folder(target, writer({"model.onnx": "new"}), known=["model.onnx"])
    assert (target / "model.onnx").read_text() == "new"


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with pytest.raises(OutputFolderError, match="is not a folder: refusing to replace it"):
        replace_folder(target, writer({"a": "1"}))
    assert target.read_text() == "a file"


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f".out.building-{dead_pid}-abc123-coco-seg"
    orphan.mkdir()
    (orphan / "model.onnx").write_text("half")
    unrelated = tmp_path / ".out.building-notapid-coco-seg"
    unrelated.mkdir()
    replace_folder(tmp_path / "out", writer({"a": "1"}))
    assert not orphan.exists() and unrelated.exists()


def test_export_into_a_users_folder_is_refused_and_an_earlier_export_replaced(tmp_path):
    from coco_seg.export import export_model
    from coco_seg.model import build_unet

    model = build_unet(image_size=32, num_classes=3, encoder_weights="none", alpha=0.35)
    first = export_model(model, tmp_path / "model", card={"run": 1})
    second = export_model(model, tmp_path / "model", card={"run": 2})
    assert first == second and json.loads(second["card"].read_text())["run"] == 2
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(
        [MANIFEST_NAME, "model.onnx", "model.h5", "model_card.json"])
    (tmp_path / "model" / "README.txt").write_text("my own")
    with pytest.raises(OutputFolderError, match=r"it holds files coco-seg did not write \(README.txt\)"):
        export_model(model, tmp_path / "model", card={"run": 3})
    assert json.loads(second["card"].read_text())["run"] == 2


def test_make_sample_never_deletes_a_users_file_and_replaces_an_earlier_sample_whole(tmp_path):
    from coco_seg.sample_data import make_sample

    target = tmp_path / "coco"
    make_sample(target, images=8, seed=0)
    first = contents_bytes(target)
    make_sample(target, images=9, seed=1)  # an earlier sample (its manifest vouches for it) is replaced whole
    second = contents_bytes(target)
    stale = set(first) - set(second)  # other seed, other image ids: the first sample's images are gone
    assert any(name.endswith(".jpg") for name in stale)
    assert not any((target / name).exists() for name in stale)

    (target / "train2017" / "my_photo.jpg").write_bytes(b"mine")
    with pytest.raises(OutputFolderError, match=r"coco-seg did not write \(train2017/my_photo.jpg\)"):
        make_sample(target, images=8, seed=0)
    assert (target / "train2017" / "my_photo.jpg").read_bytes() == b"mine"
    assert contents_bytes(target) == {**second, "train2017/my_photo.jpg": b"mine"}


def test_make_sample_over_an_earlier_sample_without_manifest_knows_its_files(tmp_path):
    from coco_seg.sample_data import make_sample

    target = tmp_path / "coco"
    make_sample(target, images=8, seed=0)
    (target / MANIFEST_NAME).unlink()  # as written by a version before manifests
    make_sample(target, images=8, seed=2)
    (target / MANIFEST_NAME).unlink()
    (target / "val2017" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"\(val2017/notes.txt\)"):
        make_sample(target, images=8, seed=3)


def contents_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
