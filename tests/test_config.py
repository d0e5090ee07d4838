import dataclasses
import os
import re

import pytest

from coco_seg.config import CONFIG_ENV_VAR, MAX_BACKGROUND_SHARE, MAX_IMAGE_SIZE, ConfigError, load_config
from _support import write_config


def test_defaults_describe_the_generated_sample_in_category_mode():
    config = load_config()
    assert config.data_root is None
    assert config.label_mode == "category"
    assert config.class_names == ("background", "person", "car")
    assert config.image_size == 128 and config.sample_limit_per_split is None
    assert set(config.splits) == {"training", "validation"}
    assert config.splits["training"].annotations == "annotations/instances_train2017.json"


def test_a_user_yaml_overrides_a_subset_and_paths_resolve_against_it(tmp_path):
    path = write_config(tmp_path, {"data": {"root": "coco", "splits": {"unlabeled": {"images": "test2017"}}},
                                   "image_size": 224, "model": {"path": "models/m.onnx"}})
    config = load_config(path)
    assert config.data_root == tmp_path / "coco"
    assert config.model_path == tmp_path / "models" / "m.onnx"
    assert config.image_size == 224
    assert config.splits["unlabeled"].images == "test2017"
    assert config.splits["validation"].images == "val2017"  # untouched default
    assert config.classes == ("person", "car")


def test_config_from_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV_VAR, str(write_config(tmp_path, {"labels": {"mode": "supercategory"}})))
    assert load_config().label_mode == "supercategory"


def test_supercategory_mode_maps_classes_to_their_supercategory(tmp_path):
    config = load_config(write_config(tmp_path, {"labels": {"mode": "supercategory"}}))
    assert config.class_names == ("background", "person", "vehicle")
    vehicle = config.target_classes[1]
    assert vehicle.coco_names == ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")


@pytest.mark.parametrize("tree, key", [
    ({"labels": {"colour": 1}}, "labels.colour"),
    ({"data": {"splits": {"training": {"annotation": "x.json"}}}}, "data.splits.training.annotation"),
    ({"imgsize": 3}, "imgsize"),
])
def test_unknown_keys_are_rejected_by_dotted_name(tmp_path, tree, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(write_config(tmp_path, tree))


@pytest.mark.parametrize("tree, key", [
    ({"image_size": "128"}, "image_size"),
    ({"image_size": True}, "image_size"),
    ({"image_size": 100}, "image_size"),
    ({"sample_limit_per_split": 0}, "sample_limit_per_split"),
    ({"sample_limit_per_split": -3}, "sample_limit_per_split"),
    ({"labels": {"mode": "instance"}}, "labels.mode"),
    ({"labels": {"classes": "person"}}, "labels.classes"),
    ({"data": {"root": 5}}, "data.root"),
    ({"data": {"splits": {"training": {"images": 7}}}}, "data.splits.training.images"),
    ({"model": {"path": "model.pt"}}, "model.path"),
    ({"on_bad_sample": "ignore"}, "on_bad_sample"),
    ({"data": {"splits": "train"}}, "data.splits"),
])
def test_wrong_types_and_values_name_the_key(tmp_path, tree, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(write_config(tmp_path, tree))


def test_a_misspelt_class_lists_the_valid_names(tmp_path):
    with pytest.raises(ConfigError, match="labels.classes") as error:
        load_config(write_config(tmp_path, {"labels": {"classes": ["persn", "car"]}}))
    assert "'persn'" in str(error.value) and "person" in str(error.value) and "toothbrush" in str(error.value)


def test_supercategory_names_are_accepted_only_in_supercategory_mode(tmp_path):
    with pytest.raises(ConfigError, match="vehicle"):
        load_config(write_config(tmp_path, {"labels": {"classes": ["vehicle"]}}))
    config = load_config(write_config(tmp_path, {"labels": {"mode": "supercategory", "classes": ["animal"]}}))
    assert config.class_names == ("background", "animal")


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("image_size: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")


# --- Red-team findings: what a malformed file gets. Each message names the file, the dotted key and the line. ---

def _raw(tmp_path, data: bytes, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refusal(path) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message, message  # every refusal names the file
    return message


def _same(a, b):
    """Configs equal but for where they were read from."""
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


@pytest.mark.parametrize("text, key, second, first", [
    ("data:\n  root: a\nimage_size: 64\ndata:\n  background_share: 0.1\n", "data", 4, 1),
    ("image_size: 64\nimage_size: 96\n", "image_size", 2, 1),
    ("data:\n  root: a\n  # a comment\n  root: b\n", "data.root", 4, 2),
    ("data:\n  splits:\n    training:\n      images: a\n      images: b\n", "data.splits.training.images", 5, 4),
    ("labels: {mode: category, mode: supercategory}\n", "labels.mode", 1, 1),
    ("data:\n  root: a\n  'root': b\n", "data.root", 3, 2),  # quoting does not make another key
])
def test_a_duplicate_key_is_refused_with_both_lines(tmp_path, text, key, second, first):
    message = _refusal(_raw(tmp_path, text.encode()))
    assert f"duplicate key '{key}' at line {second} (first at line {first})" in message


def test_a_duplicate_next_to_a_merge_key_is_refused(tmp_path):
    text = ("data:\n  splits:\n    training: &t {annotations: a.json, images: imgs}\n"
            "    validation:\n      <<: *t\n      images: v1\n      images: v2\n")
    message = _refusal(_raw(tmp_path, text.encode()))
    assert "duplicate key 'data.splits.validation.images' at line 7 (first at line 6)" in message


def test_a_merge_key_keeps_its_meaning_an_explicit_key_overrides_a_merged_one(tmp_path):
    text = ("data:\n  splits:\n    training: &t {annotations: a.json, images: imgs}\n"
            "    validation:\n      <<: *t\n      images: val\n")
    config = load_config(_raw(tmp_path, text.encode()))
    assert config.splits["validation"].annotations == "a.json" and config.splits["validation"].images == "val"
    assert config.splits["training"].images == "imgs"


@pytest.mark.parametrize("data, says", [
    ("image_size: 64\n".encode("utf-16"), "UTF-16/UTF-32 byte-order mark"),  # with BOM (LE)
    ("image_size: 64\n".encode("utf-16-be"), "NUL bytes (from line 1)"),  # without BOM
    ("image_size: 64\n".encode("utf-16-le"), "NUL bytes (from line 1)"),
    ("image_size: 64\n".encode("utf-32"), "UTF-16/UTF-32 byte-order mark"),
    ("image_size: 64\ndata:\n  root: caf\u00e9\n".encode("latin-1"), "byte 0xe9 at line 3 is not UTF-8"),
])
def test_a_file_that_is_not_utf8_is_refused(tmp_path, data, says):
    message = _refusal(_raw(tmp_path, data))
    assert "must be UTF-8 text" in message and says in message


def test_a_utf8_bom_comments_and_key_order_do_not_change_the_config(tmp_path):
    plain = load_config(_raw(tmp_path, b"image_size: 64\ndata:\n  root: coco\n  background_share: 0.5\n", "a.yaml"))
    with_bom = load_config(_raw(tmp_path, b"\xef\xbb\xbfimage_size: 64\ndata:\n  root: coco\n"
                                          b"  background_share: 0.5\n", "b.yaml"))
    reordered = load_config(_raw(tmp_path, "# caf\u00e9 \u2014 UTF-8 text in a comment\ndata:  # COCO\n"
                                           "  background_share: 0.5\n  root: coco   # relative\n"
                                           "image_size: 64\n".encode(), "c.yaml"))
    assert plain.image_size == 64 and plain.background_share == 0.5 and plain.data_root == tmp_path / "coco"
    assert _same(plain, with_bom) and _same(plain, reordered)


def test_a_non_ascii_utf8_path_is_kept(tmp_path):
    config = load_config(_raw(tmp_path, "data:\n  root: caf\u00e9\n".encode()))
    assert config.data_root == tmp_path / "caf\u00e9"


@pytest.mark.parametrize("text, line, column", [
    ("data:\n  root: [a\nimage_size: 64\n", 3, 11),
    ("data:\n root: a\n  x: b\n", 3, 4),
    ("data:\n\troot: a\n", 2, 1),
])
def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, text, line, column):
    path = _raw(tmp_path, text.encode())
    message = _refusal(path)
    assert f"is not valid YAML at line {line}, column {column}" in message
    assert f'in "{path}"' in message  # PyYAML's own marks name the file too, not "<unicode string>"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n", "null\n"])
def test_a_file_without_keys_is_refused(tmp_path, text):
    assert "holds no keys" in _refusal(_raw(tmp_path, text.encode()))


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("hello\n", "str"), ("42\n", "int")])
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path, text, kind):
    assert f"must hold a mapping of keys at its top level (key: value lines), got a {kind}" in _refusal(
        _raw(tmp_path, text.encode()))


@pytest.mark.parametrize("text, key, line, says", [
    # Non-finite numbers, for every numeric key.
    ("data:\n  background_share: .inf\n", "data.background_share", 2, "must be a finite number, got inf (YAML .inf)"),
    ("data:\n  background_share: -.inf\n", "data.background_share", 2,
     "must be a finite number, got -inf (YAML -.inf)"),
    ("data:\n  background_share: .nan\n", "data.background_share", 2, "must be a finite number, got nan (YAML .nan)"),
    ("image_size: .inf\n", "image_size", 1, "must be a finite integer, got inf (YAML .inf)"),
    ("image_size: .nan\n", "image_size", 1, "must be a finite integer, got nan (YAML .nan)"),
    ("sample_limit_per_split: .inf\n", "sample_limit_per_split", 1, "must be a finite integer, got inf (YAML .inf)"),
    ("sample_limit_per_split: -.inf\n", "sample_limit_per_split", 1,
     "must be a finite integer, got -inf (YAML -.inf)"),
    # Booleans where numbers are expected.
    ("image_size: true\n", "image_size", 1, "must be an integer, got True (bool)"),
    ("sample_limit_per_split: yes\n", "sample_limit_per_split", 1, "must be an integer or null, got True (bool)"),
    ("data:\n  background_share: false\n", "data.background_share", 2, "must be a number, got False (bool)"),
    # Out of range.
    ("data:\n  background_share: -0.1\n", "data.background_share", 2, "must be between 0 and 1,000,000"),
    ("data:\n  background_share: 1.0e+300\n", "data.background_share", 2, "got 1e+300"),
    ("data:\n  background_share: 1000001\n", "data.background_share", 2, "must be between 0 and 1,000,000"),
    ("image_size: 2080\n", "image_size", 1, "must be a positive multiple of 32, at most 2048, got 2080"),
    ("image_size: 1000000000000\n", "image_size", 1, "at most 2048, got 1000000000000"),
    ("image_size: 0\n", "image_size", 1, "must be a positive multiple of 32"),
    ("image_size: -64\n", "image_size", 1, "must be a positive multiple of 32"),
    ("image_size: 100\n", "image_size", 1, "must be a positive multiple of 32"),
    ("image_size: 128.0\n", "image_size", 1, "must be an integer, got 128.0 (float)"),
    ("sample_limit_per_split: 2.5\n", "sample_limit_per_split", 1, "must be an integer or null, got 2.5 (float)"),
    ("sample_limit_per_split: 0\n", "sample_limit_per_split", 1, "must be null (all samples) or >= 1, got 0"),
    # A number YAML 1.1 reads as text gets a hint.
    ("data:\n  background_share: 1e-3\n", "data.background_share", 2, "YAML read it as text"),
    # Non-strings and blanks where paths are expected.
    ("data:\n  root: [a, b]\n", "data.root", 2, "must be str or null, got ['a', 'b'] (list)"),
    ("data:\n  root: 5\n", "data.root", 2, "must be str or null, got 5 (int)"),
    ("data:\n  root: ''\n", "data.root", 2, "must be a path or null, got ''"),
    ("data:\n  root: \"a\\0b\"\n", "data.root", 2, "must not contain a NUL character"),
    ("model:\n  path: 3.5\n", "model.path", 2, "must be str or null, got 3.5 (float)"),
    ("model:\n  path: {file: m.onnx}\n", "model.path", 2, "must be str or null, got {'file': 'm.onnx'} (dict)"),
    ("reports_dir: [x]\n", "reports_dir", 1, "must be str or null, got ['x'] (list)"),
    ("reports_dir: '  '\n", "reports_dir", 1, "must be a path or null, got '  '"),
    ("data:\n  splits:\n    training:\n      images: [a]\n", "data.splits.training.images", 4, "must be str"),
])
def test_a_bad_value_names_the_file_line_key_and_value(tmp_path, text, key, line, says):
    path = _raw(tmp_path, text.encode())
    message = _refusal(path)
    assert message.startswith(f"config file {path}, line {line}: "), message
    assert f"config key '{key}'" in message and says in message


def test_the_limits_themselves_are_accepted(tmp_path):
    config = load_config(write_config(tmp_path, {"image_size": MAX_IMAGE_SIZE, "sample_limit_per_split": 10 ** 30,
                                                 "data": {"background_share": MAX_BACKGROUND_SHARE}}))
    assert config.image_size == 2048 and config.background_share == 1e6 and config.sample_limit_per_split == 10 ** 30
    assert load_config(write_config(tmp_path, {"image_size": 32, "data": {"background_share": 0}})).image_size == 32


def test_an_unknown_key_names_its_line(tmp_path):
    path = _raw(tmp_path, b"image_size: 64\nlabels:\n  mode: category\n  colour: red\n")
    assert re.search(rf"^config file {re.escape(str(path))}, line 4: unknown config key 'labels.colour'",
                     _refusal(path))


def test_python_objects_are_still_refused_with_the_line(tmp_path):
    path = _raw(tmp_path, b"data:\n  root: !!python/object/apply:os.system ['echo pwned']\n")
    message = _refusal(path)
    assert "not valid YAML at line 2" in message and "python/object/apply" in message


def test_a_config_that_is_a_fifo_or_a_device_is_refused_at_once(tmp_path):
    import os

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading would block forever
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(fifo))} is not a regular file$"):
        load_config(fifo)
    with pytest.raises(ConfigError, match=r"^config file /dev/zero is not a regular file$"):
        load_config("/dev/zero")  # would be read until memory runs out


def test_a_huge_config_file_is_refused_without_parsing_it(tmp_path):
    from coco_seg.config import MAX_CONFIG_BYTES

    huge = tmp_path / "config.yaml"
    huge.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"is larger than 1 MiB: not a config file"):
        load_config(huge)
    fits = tmp_path / "fits.yaml"
    fits.write_bytes(b"image_size: 64\n" + b"#" * (MAX_CONFIG_BYTES - 20) + b"\n")
    assert load_config(fits).image_size == 64


def test_without_a_home_folder_caches_and_reports_go_to_the_temp_dir(monkeypatch, tmp_path, caplog):
    import pathlib
    import tempfile

    from coco_seg import config as config_module
    from coco_seg.index_cache import cache_root

    def no_home(cls=None):
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(pathlib.Path, "home", classmethod(no_home))
    monkeypatch.delenv("COCO_SEG_CACHE_DIR", raising=False)
    monkeypatch.delenv("COCO_SEG_REPORTS_DIR", raising=False)
    expected = pathlib.Path(tempfile.gettempdir()) / f"coco-seg-{os.getuid()}-cache"
    config_module._warn_no_home.cache_clear()
    with caplog.at_level("WARNING"):
        assert config_module.user_cache_dir() == expected
    assert f"no home folder (HOME unset, no passwd entry): coco-seg caches and reports go to {expected}" in caplog.text
    assert cache_root() == expected
    loaded = load_config(write_config(tmp_path, {"image_size": 64}))
    assert loaded.reports_dir == expected / "reports"


def test_a_tilde_path_without_a_home_folder_is_a_clear_config_error(monkeypatch):
    import pathlib

    def no_home(self):
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(pathlib.Path, "expanduser", no_home)
    with pytest.raises(ConfigError, match=r"~/my.yaml starts with ~, but there is no home folder"):
        load_config("~/my.yaml")
