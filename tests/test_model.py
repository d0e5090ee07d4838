"""The MobileNetV2 + U-Net, its export (ONNX, .h5, model card), loading and the model/config consistency check.

Small models throughout (64 px, alpha 0.35, random encoder): built and exported once per module.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from coco_seg.atomic import MANIFEST_NAME, write_atomically as _write_atomically
from coco_seg.config import load_config
from coco_seg.export import (
    MODEL_CARD_NAME,
    ModelLoadError,
    ModelMismatchError,
    check_model_matches_config,
    export_model,
    load_checked_model,
    load_model,
    ModelOutputs,
    configured_model_outputs,
    model_card_for,
    predict_logits,
    predict_outputs,
    read_model_card,
    with_features_output,
)
from coco_seg.model import SKIP_LAYER_NAMES, EncoderWeightsError, build_unet, load_keras_checkpoint
from _support import write_config

SIZE = 64
ALPHA = 0.35
NUM_CLASSES = 3  # background, person, car


def small_unet(**options):
    options = {"image_size": SIZE, "num_classes": NUM_CLASSES, "encoder_weights": "none", "alpha": ALPHA, **options}
    return build_unet(**options)


@pytest.fixture(scope="module")
def unet():
    import keras

    keras.utils.set_random_seed(0)
    return small_unet()


@pytest.fixture(scope="module")
def exported(unet, tmp_path_factory):
    tree = {"labels": {"mode": "category", "classes": ["person", "car"]}, "image_size": SIZE}
    config = load_config(write_config(tmp_path_factory.mktemp("config"), tree))
    out_dir = tmp_path_factory.mktemp("export") / "model"  # does not exist yet: export_model creates it
    paths = export_model(unet, out_dir, card=model_card_for(config, trained=False, encoder_weights="none"))
    return paths


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def make_config(folder: Path, *, mode="category", classes=("person", "car"), image_size=SIZE, model_path=None):
    tree = {"labels": {"mode": mode, "classes": list(classes)}, "image_size": image_size}
    if model_path is not None:
        tree["model"] = {"path": str(model_path)}
    return load_config(write_config(folder, tree))


# --- build_unet ---------------------------------------------------------------------------------------------------

def test_unet_maps_images_to_per_pixel_logits(unet, batch):
    assert unet.name == "coco_seg_unet"
    assert unet.input_shape == (None, SIZE, SIZE, 3)
    assert unet.output_shape == (None, SIZE, SIZE, NUM_CLASSES)
    assert unet.output_names == ["logits"]
    logits = predict_logits(unet, batch[:1])
    assert logits.shape == (1, SIZE, SIZE, NUM_CLASSES) and logits.dtype == np.float32
    # Logits, not probabilities: no softmax at the end.
    assert not np.allclose(logits.sum(axis=-1), 1.0)
    assert unet.get_layer("logits").activation.__name__ == "linear"


def test_encoder_exposes_the_five_skip_layers_at_halving_resolutions(unet):
    encoder = unet.get_layer("encoder")
    assert [encoder.get_layer(name).name for name in SKIP_LAYER_NAMES] == list(SKIP_LAYER_NAMES)
    sizes = [tuple(output.shape[1:3]) for output in encoder.outputs]
    assert sizes == [(SIZE // 2, SIZE // 2), (SIZE // 4, SIZE // 4), (SIZE // 8, SIZE // 8),
                     (SIZE // 16, SIZE // 16), (SIZE // 32, SIZE // 32)]
    decoder_filters = [unet.get_layer(f"up{i}_conv").filters for i in range(1, 5)]
    assert decoder_filters == [512, 256, 128, 64]


def test_encoder_is_frozen_by_default_and_trainable_on_request(unet):
    encoder = unet.get_layer("encoder")
    assert not encoder.trainable
    assert all(not layer.trainable for layer in encoder.layers)
    encoder_weights = {id(w) for w in encoder.weights}
    assert not any(id(w) in encoder_weights for w in unet.trainable_weights)
    decoder_trainable = len(unet.trainable_weights)
    assert decoder_trainable > 0

    trainable = small_unet(trainable_encoder=True)
    assert trainable.get_layer("encoder").trainable
    assert any(layer.trainable and layer.weights for layer in trainable.get_layer("encoder").layers)
    assert len(trainable.trainable_weights) > decoder_trainable


@pytest.mark.parametrize("options, word", [
    ({"image_size": 48}, "image_size"),
    ({"image_size": 0}, "image_size"),
    ({"num_classes": 1}, "num_classes"),
    ({"alpha": 0}, "alpha"),
])
def test_invalid_options_are_rejected_naming_the_argument(options, word):
    with pytest.raises(ValueError, match=word):
        small_unet(**options)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        build_unet(SIZE, NUM_CLASSES)  # type: ignore[misc]


def test_imagenet_weights_without_network_raise_an_error_naming_the_offline_options():
    try:
        model = small_unet(encoder_weights="imagenet")
    except EncoderWeightsError as error:  # the download failed (always, offline)
        message = str(error)
        assert isinstance(error, RuntimeError)
        assert "could not be downloaded" in message
        assert "--encoder-weights none" in message and 'encoder_weights="none"' in message
        assert "local weights file" in message
    else:  # the network works: the model builds with ImageNet weights
        assert model.output_shape == (None, SIZE, SIZE, NUM_CLASSES)


def test_a_missing_local_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "mobilenet_v2_no_top.h5"
    with pytest.raises(EncoderWeightsError, match="does not exist") as caught:
        small_unet(encoder_weights=str(missing))
    assert str(missing) in str(caught.value)


def test_a_local_weights_file_initialises_the_encoder(tmp_path):
    import keras

    source = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None,
                                            alpha=ALPHA)
    kernel = source.get_layer("Conv1").get_weights()[0]
    path = tmp_path / "mobilenet_v2_no_top.h5"  # the legacy h5 layout of the Keras download
    source.save(path)
    model = small_unet(encoder_weights=str(path))
    np.testing.assert_array_equal(model.get_layer("encoder").get_layer("Conv1").get_weights()[0], kernel)

    wrong_alpha = tmp_path / "alpha_1.h5"
    keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None,
                                   alpha=1.0).save(wrong_alpha)
    with pytest.raises(EncoderWeightsError, match="same alpha") as caught:
        small_unet(encoder_weights=str(wrong_alpha))
    assert str(wrong_alpha) in str(caught.value)


# --- export and load ----------------------------------------------------------------------------------------------

def test_export_writes_onnx_h5_and_the_model_card(exported):
    assert set(exported) == {"onnx", "h5", "card"}
    folder = exported["onnx"].parent
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_NAME, "model.h5", "model.onnx", MODEL_CARD_NAME]
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporaries beside it
    assert all(path.stat().st_size > 0 for path in exported.values())
    card = json.loads(exported["card"].read_text())
    assert card == {
        "format_version": 1, "label_mode": "category", "classes": ["background", "person", "car"],
        "image_size": SIZE, "normalisation": {"input": "rgb", "range": [-1, 1], "formula": "pixel / 127.5 - 1"},
        "trained": False, "encoder_weights": "none",
        # alpha 0.35: 64 channels from the last up-block + 48 from the block_1_expand_relu skip
        "outputs": ["segmentation", "decoder_features"], "features_channels": 64 + 48,
    }
    assert read_model_card(exported["onnx"]) == card
    assert read_model_card(folder.parent / "elsewhere" / "model.onnx") is None


def test_onnx_model_takes_image_and_matches_keras(unet, exported, batch):
    import onnx

    proto = onnx.load(str(exported["onnx"]))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 17
    session = load_model(exported["onnx"])
    (image,), (logits, features) = session.get_inputs(), session.get_outputs()
    assert image.name == "image" and image.type == "tensor(float)"
    assert image.shape[1:] == [SIZE, SIZE, 3] and not isinstance(image.shape[0], int)  # dynamic batch
    assert logits.shape[1:] == [SIZE, SIZE, NUM_CLASSES]  # the segmentation output stays first
    assert features.shape[1:] == [SIZE // 2, SIZE // 2, 64 + 48]  # the decoder features, appended last
    onnx_logits, onnx_features = predict_outputs(session, batch)
    keras_logits = predict_logits(unet, batch)
    assert onnx_logits.shape == keras_logits.shape == (2, SIZE, SIZE, NUM_CLASSES)
    assert np.abs(onnx_logits - keras_logits).max() <= 1e-4
    # The features are exactly what the classifier layer consumes in the trained single-output model.
    import keras

    classifier_input = keras.Model(unet.input, unet.get_layer("logits").input)
    expected = keras.ops.convert_to_numpy(classifier_input(batch, training=False))
    assert np.abs(onnx_features - expected).max() <= 1e-4 and (onnx_features >= 0).all()


def test_the_features_output_is_added_once_and_the_logits_are_unchanged(unet, batch):
    two = with_features_output(unet)
    assert [o.shape[1:] for o in two.outputs] == [(SIZE, SIZE, NUM_CLASSES), (SIZE // 2, SIZE // 2, 64 + 48)]
    assert with_features_output(two) is two
    np.testing.assert_allclose(predict_outputs(two, batch)[0], predict_logits(unet, batch), atol=1e-6)


def test_configured_model_outputs_read_the_card_or_the_file(tmp_path, exported, unet):
    from coco_seg.export import keras_to_onnx

    assert configured_model_outputs(make_config(tmp_path / "a", model_path=exported["onnx"])) == \
        ModelOutputs(("segmentation", "decoder_features"), 112)
    # No card: read from the file itself — two outputs, or the logits alone (a user's own model).
    bare = tmp_path / "bare" / "model.onnx"
    bare.parent.mkdir()
    shutil.copy(exported["onnx"], bare)
    assert configured_model_outputs(make_config(tmp_path / "b", model_path=bare)).features_channels == 112
    own = tmp_path / "own" / "model.onnx"
    own.parent.mkdir()
    own.write_bytes(keras_to_onnx(unet))
    outputs = configured_model_outputs(make_config(tmp_path / "c", model_path=own))
    assert outputs == ModelOutputs(("segmentation",), None) and not outputs.has_features
    # No model configured (the platform: the model is pushed apart): coco-seg export's outputs are assumed.
    assert configured_model_outputs(make_config(tmp_path / "d")).has_features


def test_a_single_output_model_is_accepted_and_a_card_of_another_model_is_not(tmp_path, exported, unet):
    from coco_seg.export import keras_to_onnx

    own = tmp_path / "own" / "model.onnx"
    own.parent.mkdir()
    own.write_bytes(keras_to_onnx(unet))
    config = make_config(tmp_path, model_path=own)
    check_model_matches_config(load_model(own), config, model_path=own)  # a user's own model: no card, fine
    shutil.copy(exported["card"], own.parent / MODEL_CARD_NAME)  # the exported model's card beside it
    with pytest.raises(ModelMismatchError, match=r"lists the outputs \['segmentation', 'decoder_features'\] but the "
                                                  r"model file has 1"):
        check_model_matches_config(load_model(own), config, model_path=own)


def test_h5_reloads_with_the_same_logits(unet, exported, batch):
    import keras

    reloaded = load_model(exported["h5"])
    assert isinstance(reloaded, keras.Model)
    np.testing.assert_allclose(predict_logits(reloaded, batch), predict_logits(unet, batch), atol=1e-6)
    assert not reloaded.get_layer("encoder").trainable
    assert isinstance(load_keras_checkpoint(exported["h5"]), keras.Model)


def test_failed_writes_leave_no_file_behind(tmp_path):
    def half_write(temp: Path) -> None:
        temp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_atomically(tmp_path / "model.onnx", half_write)
    assert list(tmp_path.iterdir()) == []


def test_load_model_rejects_missing_and_unsupported_files(tmp_path):
    missing = tmp_path / "model.onnx"
    with pytest.raises(ModelLoadError, match="model.path") as caught:
        load_model(missing)
    assert str(missing) in str(caught.value) and isinstance(caught.value, RuntimeError)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="model.path"):
        load_model(tmp_path / "model.pt")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="broken.onnx"):
        load_model(tmp_path / "broken.onnx")


# --- model / config consistency -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["onnx", "h5"])
def test_the_exported_model_matches_its_config(exported, kind, tmp_path):
    config = make_config(tmp_path, model_path=exported[kind])
    model = load_checked_model(config)
    check_model_matches_config(model, config, model_path=exported[kind])


def _copy_with_card(exported, folder: Path, **changes) -> Path:
    folder.mkdir()
    model_path = folder / "model.onnx"
    shutil.copy(exported["onnx"], model_path)
    card = json.loads(exported["card"].read_text())
    card.update(changes)
    (folder / MODEL_CARD_NAME).write_text(json.dumps(card))
    return model_path


@pytest.mark.parametrize("changes, words", [
    ({"classes": ["background", "car", "person"]}, ["classes", "order matters", "labels.classes"]),
    ({"classes": ["background", "person"]}, ["classes", "labels.classes"]),
    ({"label_mode": "supercategory"}, ["label mode", "labels.mode"]),
    ({"image_size": 128}, ["image size 128", "'image_size'"]),
])
def test_a_card_that_disagrees_with_the_config_is_rejected(exported, tmp_path, changes, words):
    model_path = _copy_with_card(exported, tmp_path / "model", **changes)
    config = make_config(tmp_path / "config")
    with pytest.raises(ModelMismatchError) as caught:
        check_model_matches_config(load_model(model_path), config, model_path=model_path)
    message = str(caught.value)
    assert str(model_path) in message and isinstance(caught.value, ValueError)
    for word in words:
        assert word in message


def test_a_config_for_other_classes_is_rejected_even_without_a_card(unet, exported, tmp_path):
    model_path = tmp_path / "model.onnx"
    shutil.copy(exported["onnx"], model_path)  # no card beside it
    three_classes = make_config(tmp_path / "config", classes=("person", "car", "dog"))
    for model in (load_model(model_path), unet):
        with pytest.raises(ModelMismatchError, match="outputs 3 channels but the config has 4 classes") as caught:
            check_model_matches_config(model, three_classes, model_path=model_path)
        assert "labels.classes" in str(caught.value)
    wrong_size = make_config(tmp_path / "config96", image_size=96)
    with pytest.raises(ModelMismatchError, match=r"input has shape \(\?, 64, 64, 3\), expected \(batch, 96, 96, 3\)"):
        check_model_matches_config(load_model(model_path), wrong_size, model_path=model_path)


def test_a_model_with_the_wrong_output_channels_is_rejected(tmp_path):
    five_channels = small_unet(num_classes=5)
    config = make_config(tmp_path)
    with pytest.raises(ModelMismatchError, match="outputs 5 channels but the config has 3 classes"):
        check_model_matches_config(five_channels, config, model_path=tmp_path / "five.h5")


def test_load_checked_model_needs_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="model.path"):
        load_checked_model(make_config(tmp_path))
