import pytest

from coco_seg.config import CONFIG_ENV_VAR, ConfigError, load_config
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
