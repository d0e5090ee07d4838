"""The preprocess index cache: same result as a fresh scan, invalidated by file and config changes, safe under
concurrent builders, never fatal."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _support import REPO_ROOT, data_tree, subprocess_env, write_config
from coco_seg import index_cache
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(index_cache.CACHE_DIR_ENV_VAR, str(folder))
    return folder / "index"


def load(tmp_path: Path, tree: dict, name: str = "c.yaml"):
    config = load_config(write_config(tmp_path, tree, name))
    return load_labeled_split(config, "training", data_root=config.data_root)


def snapshot(split) -> list[tuple]:
    return [(r.sample_id, str(r.path), r.width, r.height, json.dumps(r.annotations, sort_keys=True))
            for r in split.records.values()]


def test_a_cached_load_equals_a_fresh_scan(tmp_path, private_cache, dataset, monkeypatch):
    from coco_seg import coco_data

    fresh = load(tmp_path, dataset)
    assert len(list(private_cache.glob("*.json"))) == 1 and len(list(private_cache.glob("*.blob"))) == 1
    # the first run already reads its annotations back from the blob: check them against the parsed file itself
    config = load_config(write_config(tmp_path, dataset))
    parsed = coco_data.scan_annotations(config, "training", config.data_root / config.splits["training"].annotations)
    in_memory = {str(c.image_id): json.dumps(list(c.annotations), sort_keys=True) for c in parsed.candidates}
    assert {r.sample_id: json.dumps(list(r.annotations), sort_keys=True) for r in fresh.records.values()} == \
        {sample_id: in_memory[sample_id] for sample_id in fresh.records}

    def no_parsing(*args, **kwargs):
        raise AssertionError("the annotation file was parsed again although the cache holds it")

    monkeypatch.setattr(coco_data, "scan_annotations", no_parsing)
    cached = load(tmp_path, dataset)
    assert snapshot(cached) == snapshot(fresh)
    assert cached.class_of_category == fresh.class_of_category and cached.category_names == fresh.category_names
    assert (cached.found, cached.ignored_annotations) == (fresh.found, fresh.ignored_annotations)


def test_a_changed_annotation_file_or_config_is_not_served_from_the_cache(tmp_path, private_cache, generated_root):
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    before = load(tmp_path, data_tree(root))
    path = root / "annotations" / "instances_train2017.json"
    dataset = json.loads(path.read_text())
    dropped = before.sample_ids[0]
    dataset["annotations"] = [a for a in dataset["annotations"] if str(a["image_id"]) != dropped]
    path.write_text(json.dumps(dataset))
    after = load(tmp_path, data_tree(root))
    assert dropped not in after.records and len(after.records) == len(before.records) - 1
    supercategory = load(tmp_path, data_tree(root) | {"labels": {"mode": "supercategory"}}, "s.yaml")
    assert supercategory.class_of_category != after.class_of_category
    assert len(list(private_cache.glob("*.json"))) == 3


def test_a_cp_p_replacement_with_the_same_size_and_times_serves_the_new_content(tmp_path, private_cache,
                                                                                  generated_root):
    """The fault the identity key missed: new bytes, same size, same modification time (``cp -p``)."""
    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    path = root / "annotations" / "instances_train2017.json"
    dataset = json.loads(path.read_text())
    person = next(a for a in dataset["annotations"] if a["category_id"] == 1)
    # the same file with one person relabelled as car (category 1 -> 3): same length, other content
    edited = json.dumps(dict(dataset, annotations=[dict(a, category_id=3) if a["id"] == person["id"] else a
                                                   for a in dataset["annotations"]]))
    original = json.dumps(dataset)
    assert len(edited) == len(original)
    path.write_text(original)
    before = load(tmp_path, data_tree(root))
    staged = tmp_path / "staged.json"
    staged.write_text(edited)
    stat = path.stat()
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    subprocess.run(["cp", "-p", str(staged), str(path)], check=True)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = load(tmp_path, data_tree(root))
    sample = str(person["image_id"])
    old = {a["id"]: a["category_id"] for a in before.records[sample].annotations}
    new = {a["id"]: a["category_id"] for a in after.records[sample].annotations}
    assert old[person["id"]] == 1 and new[person["id"]] == 3  # the replaced file is what is served
    assert {k: v for k, v in old.items() if k != person["id"]} == {k: v for k, v in new.items() if k != person["id"]}
    # and back: the original bytes (again same size and times) are served from their first cache entry
    staged.write_text(original)
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    subprocess.run(["cp", "-p", str(staged), str(path)], check=True)
    assert snapshot(load(tmp_path, data_tree(root))) == snapshot(before)
    assert len(list(private_cache.glob("*.json"))) == 2


def test_the_key_is_the_content_not_the_path_or_times(tmp_path):
    config = load_config(write_config(tmp_path, {"data": {"root": str(tmp_path)}}))
    first, second, other = tmp_path / "a.json", tmp_path / "copy" / "b.json", tmp_path / "c.json"
    second.parent.mkdir()
    first.write_bytes(b'{"images": [], "annotations": [], "categories": []}')
    second.write_bytes(first.read_bytes())
    other.write_bytes(first.read_bytes().replace(b"[]}", b"[] }"))
    os.utime(second, ns=(1, 1))
    assert index_cache.cache_key(config, first) == index_cache.cache_key(config, second)
    assert index_cache.cache_key(config, first) != index_cache.cache_key(config, other)
    assert index_cache.content_digest(first) == hashlib.sha256(first.read_bytes()).hexdigest()
    supercategory = load_config(write_config(tmp_path, {"data": {"root": str(tmp_path)},
                                                        "labels": {"mode": "supercategory"}}, "s.yaml"))
    assert index_cache.cache_key(supercategory, first) != index_cache.cache_key(config, first)


def test_two_processes_building_the_cache_at_once_both_succeed(tmp_path, private_cache, generated_root):
    config = write_config(tmp_path, data_tree(generated_root))
    code = ("import sys; from coco_seg.config import load_config; from coco_seg.coco_data import load_labeled_split; "
            "c = load_config(sys.argv[1]); print(' '.join(load_labeled_split(c, 'training', "
            "data_root=c.data_root).sample_ids))")
    env = subprocess_env(COCO_SEG_CACHE_DIR=str(private_cache.parent))
    processes = [subprocess.Popen([sys.executable, "-c", code, str(config)], cwd=REPO_ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    (index,) = private_cache.glob("*.json")
    payload = json.loads(index.read_text())
    lines = index.with_suffix(".blob").read_bytes().splitlines()
    assert len(lines) == len(payload["candidates"]) and not list(private_cache.glob(".*"))  # no temp files left
    expected = load(tmp_path, data_tree(generated_root))
    assert outputs[0][0].split() == expected.sample_ids


def test_an_unwritable_cache_costs_only_the_speed_up(tmp_path, monkeypatch, generated_root, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(index_cache.CACHE_DIR_ENV_VAR, str(blocker))
    split = load(tmp_path, data_tree(generated_root))
    assert split.sample_ids and "cannot write the preprocess index cache" in caplog.text


def test_the_first_run_serves_annotations_from_the_blob_it_wrote(tmp_path, private_cache, generated_root):
    """The first run frees the parsed file: its records read their annotations from the new blob, as later runs."""
    from coco_seg.index_cache import LazyAnnotations

    first = load(tmp_path, data_tree(generated_root))
    sources = [record.annotation_source for record in first.records.values()]
    assert all(isinstance(source, LazyAnnotations) for source in sources)
    assert {source.blob.parent for source in sources} == {private_cache}
    second = load(tmp_path, data_tree(generated_root))
    assert snapshot(second) == snapshot(first)


def test_the_collector_pause_restores_its_state(monkeypatch):
    import gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with index_cache.collector_paused():
            assert not gc.isenabled()
            raise RuntimeError("the scan failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with index_cache.collector_paused():
            pass
        assert not gc.isenabled()  # a pause inside a pause leaves the outer one in charge
    finally:
        gc.enable()


def test_unchanged_files_are_not_read_again_and_changed_ones_are(tmp_path, private_cache, generated_root,
                                                                 monkeypatch):
    """The file-check memo: a later run stats every file but reads only those whose identity changed — including a
    file rewritten in place with its old size and modification time."""
    import os

    from coco_seg import coco_data

    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    tree = data_tree(root) | {"on_bad_sample": "skip"}
    first = load(tmp_path, tree)
    assert not first.skipped
    inspected: list[str] = []
    real_inspect = coco_data.inspect_image_file

    def counting_inspect(path, *, size):
        inspected.append(os.path.basename(path))
        return real_inspect(path, size=size)

    monkeypatch.setattr(coco_data, "inspect_image_file", counting_inspect)
    again = load(tmp_path, tree)
    assert inspected == [] and snapshot(again) == snapshot(first)

    truncated, rewritten = (first.records[i] for i in first.sample_ids[:2])
    Path(truncated.file).write_bytes(Path(truncated.file).read_bytes()[:-200])  # the end marker is gone
    stat = os.stat(rewritten.file)
    data = Path(rewritten.file).read_bytes()
    Path(rewritten.file).write_bytes(b"\0" * 16 + data[16:])  # same size, no JPEG signature any more
    os.utime(rewritten.file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old modification time
    after = load(tmp_path, tree)
    assert sorted(inspected) == sorted([Path(truncated.file).name, Path(rewritten.file).name])
    reasons = {bad.sample_id: bad.reason for bad in after.skipped}
    assert "truncated" in reasons[truncated.sample_id] and "not a JPEG or PNG" in reasons[rewritten.sample_id]
    assert len(after.records) == len(first.records) - 2


def test_the_first_scan_runs_in_a_child_process_and_its_data_errors_come_back(tmp_path, private_cache,
                                                                               generated_root, monkeypatch):
    """On Linux the parse runs in a forked child (the parsed file never inflates this process); the result, and a
    bad file's DataError, are the same as when parsing here."""
    import os

    from coco_seg import coco_data
    from coco_seg.coco_data import DataError

    scanned_in = tmp_path / "scanned-in"
    real_scan = coco_data.scan_annotations

    def recording_scan(*args, **kwargs):
        scanned_in.write_text(str(os.getpid()))
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(coco_data, "scan_annotations", recording_scan)
    forked = load(tmp_path, data_tree(generated_root))
    assert int(scanned_in.read_text()) != os.getpid()
    monkeypatch.setenv(index_cache.IN_PROCESS_ENV_VAR, "1")
    shutil.rmtree(private_cache)
    here = load(tmp_path, data_tree(generated_root))
    assert int(scanned_in.read_text()) == os.getpid() and snapshot(here) == snapshot(forked)

    root = tmp_path / "coco"
    shutil.copytree(generated_root, root)
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(path.read_text()[:700])
    messages = []
    for in_process in ("1", "0"):
        monkeypatch.setenv(index_cache.IN_PROCESS_ENV_VAR, in_process)
        with pytest.raises(DataError, match="is not valid JSON") as error:
            load(tmp_path, data_tree(root))
        messages.append(str(error.value))
    assert messages[0] == messages[1]


def test_a_child_that_dies_costs_only_the_parse_here(tmp_path, private_cache, generated_root, monkeypatch, caplog):
    import os

    from coco_seg import coco_data

    parent = os.getpid()
    real_scan = coco_data.scan_annotations

    def dying_in_the_child(*args, **kwargs):
        if os.getpid() != parent:
            os._exit(3)  # as if killed, e.g. out of memory
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(coco_data, "scan_annotations", dying_in_the_child)
    split = load(tmp_path, data_tree(generated_root))
    assert "stopped without a result" in caplog.text
    monkeypatch.setattr(coco_data, "scan_annotations", real_scan)
    assert snapshot(load(tmp_path, data_tree(generated_root))) == snapshot(split)


def test_a_fork_that_fails_costs_only_the_parse_here(tmp_path, private_cache, generated_root, monkeypatch, caplog):
    import os

    def refused_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refused_fork)
    split = load(tmp_path, data_tree(generated_root))
    assert split.sample_ids and "cannot start the preprocess child process" in caplog.text
    assert len(list(private_cache.glob("*.blob"))) == 1  # built and stored here instead
