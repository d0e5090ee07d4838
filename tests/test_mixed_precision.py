"""`train --mixed-precision`: the mixed_float16 policy applies, the loss stays finite, the weights are float32,
and a checkpoint loads and exports in float32 with the ONNX matching Keras."""

import numpy as np
import pytest

from _support import data_tree, write_config
from coco_seg.coco_data import load_labeled_split
from coco_seg.config import load_config
from coco_seg.encoders import encode_image

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, generated_root):
    import keras

    from coco_seg.training import TrainOptions, train

    folder = tmp_path_factory.mktemp("mixed")
    config = load_config(write_config(folder, data_tree(generated_root) | {"image_size": IMAGE_SIZE}))
    messages: list[str] = []
    state = train(config, folder / "run", TrainOptions(epochs=2, batch_size=8, encoder_weights="none", alpha=0.35,
                                                       fine_tune=True, seed=1, mixed_precision=True),
                  log=messages.append)
    return {"folder": folder, "config": config, "state": state, "messages": messages,
            "policy_after": keras.mixed_precision.global_policy().name}


def test_the_policy_applies_to_the_layers_and_the_loss_stays_finite(mixed_run):
    import keras

    raw = keras.models.load_model(mixed_run["folder"] / "run" / "checkpoints" / "last.keras", compile=False)
    policies = {layer.dtype_policy.name for layer in raw.layers if layer.name != "logits"}
    assert "mixed_float16" in policies, policies
    assert raw.get_layer("logits").dtype_policy.name == "float32" and raw.outputs[0].dtype == "float32"
    assert {str(w.dtype) for w in raw.weights} == {"float32"}  # what is saved is float32
    losses = [h["train_loss"] for h in mixed_run["state"].history]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0], losses
    assert mixed_run["state"].options["mixed_precision"] is True
    assert any("mixed_float16" in m for m in mixed_run["messages"])
    assert mixed_run["policy_after"] == "float32", "train left the global policy mixed"


def test_a_mixed_checkpoint_loads_and_exports_in_float32_and_onnx_matches(mixed_run, tmp_path):
    import keras

    from coco_seg.export import export_model, load_model, predict_logits
    from coco_seg.model import load_keras_checkpoint

    checkpoint = mixed_run["folder"] / "run" / "checkpoints" / "last.keras"
    model = load_keras_checkpoint(checkpoint)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    raw = keras.models.load_model(checkpoint, compile=False)
    for mine, theirs in zip(model.get_weights(), raw.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    export_model(model, tmp_path / "model", card={"trained": True})
    split = load_labeled_split(mixed_run["config"], "validation", data_root=mixed_run["config"].data_root)
    images = np.stack([encode_image(split, i) for i in split.sample_ids[:4]])
    onnx_logits = predict_logits(load_model(tmp_path / "model" / "model.onnx"), images)
    float32_logits = predict_logits(load_model(checkpoint), images)
    assert np.abs(onnx_logits - float32_logits).max() <= 1e-4
    # and the float16 computation it was trained with agrees up to float16 rounding
    mixed_logits = np.asarray(raw(images, training=False), dtype=np.float32)
    scale = np.abs(float32_logits).max()
    assert np.abs(mixed_logits - float32_logits).max() <= 0.02 * scale, (np.abs(mixed_logits - float32_logits).max(),
                                                                          scale)
