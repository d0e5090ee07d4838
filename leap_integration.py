"""Tensorleap entry file (``leap.yaml``'s ``entryFile``): the model loader, the custom latent spaces and the
integration test, on top of the data-side registry in ``leap_binder.py``.

``python leap_integration.py`` runs the integration test on the first samples of the training and validation
splits with the model named by config key ``model.path`` (config from ``$COCO_SEG_CONFIG``); code-loader then
prints its status table, which ends "All parts have been successfully set" when the integration is ready to push.

The model of ``coco-seg export`` has two outputs: the segmentation logits and the decoder feature map before the
classifier. From the latter two model-computed latent spaces are pooled (coco_seg.latent_space): over the ground
truth (the one the platform's analysis uses: out-of-distribution, domain gap, mislabeling) and over the model's
own prediction (defined for unlabeled samples too). A model with the logits output alone still loads; its custom
latent spaces are then off, and a warning says so.
"""

import logging
from typing import Union

import numpy as np
from code_loader.contract.datasetclasses import PredictionTypeHandler, PreprocessResponse
from code_loader.contract.enums import LatentSpaceReduction
from code_loader.inner_leap_binder.leapbinder_decorators import (
    tensorleap_custom_latent_space,
    tensorleap_integration_test,
    tensorleap_load_model,
)

import leap_binder as registry
from coco_seg import latent_space
from coco_seg.config import KERAS_SUFFIXES
from coco_seg.export import (FEATURES_OUTPUT, INPUT_NAME, SEGMENTATION_OUTPUT, configured_model_outputs,
                             load_checked_model)

CONFIG = registry.CONFIG
MODEL_OUTPUTS = configured_model_outputs(CONFIG)
# The platform path is ONNX (onnxruntime's run API); a configured Keras file is called instead.
MODEL_IS_KERAS = CONFIG.model_path is not None and CONFIG.model_path.suffix.lower() in KERAS_SUFFIXES
SAMPLES_PER_SPLIT = 3  # samples of each labeled split that `python leap_integration.py` tests

PREDICTIONS = [PredictionTypeHandler(SEGMENTATION_OUTPUT, registry.CLASS_NAMES, channel_dim=-1)]
if MODEL_OUTPUTS.has_features:
    PREDICTIONS.append(PredictionTypeHandler(
        FEATURES_OUTPUT, [f"feature_{i}" for i in range(MODEL_OUTPUTS.features_channels)], channel_dim=-1))
else:
    logging.getLogger("coco_seg").warning(
        "model %s has no %s output (coco-seg export writes one): the custom latent spaces are off and Tensorleap's "
        "analysis uses its own latent space", CONFIG.model_path, FEATURES_OUTPUT)


@tensorleap_load_model(PREDICTIONS)
def load_model():
    # The model runtime (onnxruntime, or Keras for a .h5/.keras file) is imported here, inside the loader.
    return load_checked_model(CONFIG)


if MODEL_OUTPUTS.has_features:
    _WIDTH = latent_space.width(num_classes=CONFIG.num_classes, channels=MODEL_OUTPUTS.features_channels)
    # Above Tensorleap's comfortable width (many classes or a wide model) the engine projects it down.
    _REDUCTION = {} if _WIDTH <= latent_space.MAX_WIDTH else {
        "reduce": LatentSpaceReduction.RANDOM_PROJECTION, "n_components": latent_space.MAX_WIDTH}

    @tensorleap_custom_latent_space("decoder_gt_pooled", use_ls_for_analysis=True, **_REDUCTION)
    def decoder_gt_pooled(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return latent_space.pool_by_ground_truth(features, mask)

    @tensorleap_custom_latent_space("decoder_prediction_pooled", **_REDUCTION)
    def decoder_prediction_pooled(features: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        return latent_space.pool_by_prediction(features, prediction)


@tensorleap_integration_test()
def integration_test(sample_id: Union[int, str], preprocess_response: PreprocessResponse) -> None:
    image = registry.image_encoder(sample_id, preprocess_response)
    mask = registry.mask_encoder(sample_id, preprocess_response)
    model = load_model()
    # onnxruntime sessions are driven through run(), Keras models are called (code-loader mirrors both APIs).
    outputs = model([image]) if MODEL_IS_KERAS else model.run(None, {INPUT_NAME: image})
    if MODEL_OUTPUTS.has_features:
        prediction, features = outputs[0], outputs[1]
        decoder_gt_pooled(features, mask)
        decoder_prediction_pooled(features, prediction)
    else:
        prediction = outputs if MODEL_IS_KERAS else outputs[0]
    for metadata in registry.METADATA.values():
        metadata(sample_id, preprocess_response)
    registry.iou(mask, prediction)
    registry.boundary_iou(mask, prediction)
    registry.mean_iou(mask, prediction)
    registry.dice(mask, prediction)
    registry.pixel_accuracy(mask, prediction)
    registry.pixel_cross_entropy(mask, prediction)
    registry.input_image_visualizer(image)
    registry.gt_mask_visualizer(image, mask)
    registry.prediction_mask_visualizer(image, prediction)
    registry.error_map_visualizer(image, mask, prediction)
    registry.loss_heatmap_visualizer(image, mask, prediction)
    registry.confidence_heatmap_visualizer(image, prediction)


def main(samples_per_split: int = SAMPLES_PER_SPLIT) -> list[str]:
    """Run the integration test on the first ``samples_per_split`` samples of each labeled split; returns
    ``["training:<id>", ...]``, the samples tested."""
    tested = []
    for response in registry.preprocess():
        for sample_id in response.sample_ids[:samples_per_split]:
            integration_test(sample_id, response)
            tested.append(f"{response.state.name}:{sample_id}")
    return tested


if __name__ == "__main__":
    print("integration test ran on " + ", ".join(main()))
