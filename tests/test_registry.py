"""coco_seg.registry: the integration's functions, read back by name from code-loader's registry.

code-loader's registry is global, so each check runs in its own subprocess (one integration per process).
"""

import json
import subprocess
import sys

from _support import REPO_ROOT, data_tree, subprocess_env, write_config

PROBE = r"""
import json, sys
import numpy as np
from coco_seg.registry import load_registry
from coco_seg.encoders import encode_image, encode_mask, sample_metadata
from coco_seg import metrics

registry = load_registry()
responses = {r.state.name: r for r in registry.preprocess()}
response = responses["training"]
sample_id = response.sample_ids[0]
image = registry.input("image")(sample_id, response)
mask = registry.ground_truth("mask")(sample_id, response)
rng = np.random.default_rng(0)
logits = rng.normal(size=(1, *mask.shape)).astype(np.float32)
expected_metadata = sample_metadata(response.data, sample_id)
out = {
    "metadata_names": list(registry.metadata),
    "metadata_equal": {name: registry.metadata_function(name)(sample_id, response) == value
                       for name, value in expected_metadata.items() if value is not None},
    "image_equal": bool(np.array_equal(image, encode_image(response.data, sample_id))),
    "mask_equal": bool(np.array_equal(mask, encode_mask(response.data, sample_id))),
    "mean_iou": float(registry.metric("mean_iou")(mask[None], logits)[0]),
    "mean_iou_direct": float(metrics.mean_iou(mask[None], logits)[0]),
    "loss": float(registry.loss("pixel_cross_entropy")(mask[None], logits)[0]),
    "loss_direct": float(metrics.cross_entropy_loss(mask[None], logits)[0]),
    "unlabeled": registry.unlabeled_preprocess is not None,
    "config_is_binders": registry.config is sys.modules["leap_binder"].CONFIG,
}
try:
    registry.metric("no_such_metric")
except KeyError as error:
    out["missing"] = str(error)
try:
    load_registry(integration_root="/tmp")
except RuntimeError as error:
    out["other_root"] = str(error)
print(json.dumps(out))
"""


def test_the_registry_returns_the_registered_functions_by_name(tmp_path, generated_root):
    from coco_seg.config import load_config
    from coco_seg.metadata import metadata_names

    config_path = write_config(tmp_path, data_tree(generated_root))
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, text=True, capture_output=True,
                            env=subprocess_env(COCO_SEG_CONFIG=str(config_path), PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    # Every configured metadata field, under its own name and in its declared order (pairing is by name).
    assert probe["metadata_names"] == list(metadata_names(load_config(config_path)))
    assert probe["metadata_equal"] and all(probe["metadata_equal"].values()), probe["metadata_equal"]
    assert probe["image_equal"] and probe["mask_equal"]
    assert probe["mean_iou"] == probe["mean_iou_direct"] and probe["loss"] == probe["loss_direct"]
    assert probe["loss"] > 0
    assert probe["unlabeled"] is False and probe["config_is_binders"] is True
    # A name that is not registered is refused with what is registered, not paired with something else.
    assert "no metric named 'no_such_metric'" in probe["missing"] and "'mean_iou'" in probe["missing"]
    assert "already imported from" in probe["other_root"]
