"""The registry of coco-seg's data-side functions with the Tensorleap engine (code-loader decorator API).

Preprocess, input and ground-truth encoders, metadata, metrics, the loss and the visualizers. The model loader,
the custom latent spaces and the integration test live in ``leap_integration.py`` (today's entry file, named by
``leap.yaml``), which imports this module; the older ``tensorleap datasets save`` reads this file alone
(``.tensorleap.yaml``).

A thin registry: every decorated function delegates to a plain, typed function in ``coco_seg`` that is tested
without code-loader. The configuration is loaded once, from ``$COCO_SEG_CONFIG`` or the shipped defaults.
"""

from typing import Dict, List

import numpy as np
from code_loader.contract.datasetclasses import PreprocessResponse
from code_loader.contract.enums import DatasetMetadataType, DataStateType, LeapDataType, MetricDirection
from code_loader.contract.visualizer_classes import LeapImage, LeapImageMask, LeapImageWithHeatmap
from code_loader.inner_leap_binder.leapbinder_decorators import (
    tensorleap_custom_loss,
    tensorleap_custom_metric,
    tensorleap_custom_visualizer,
    tensorleap_gt_encoder,
    tensorleap_input_encoder,
    tensorleap_metadata,
    tensorleap_preprocess,
    tensorleap_unlabeled_preprocess,
)

from coco_seg import metrics, visualizers
from coco_seg.coco_data import load_labeled_split, load_unlabeled_split, resolve_data_root
from coco_seg.config import get_config
from coco_seg.encoders import encode_image, encode_mask, sample_metadata
from coco_seg.metadata import metadata_names
from coco_seg.registry import GROUND_TRUTH_NAME, INPUT_NAME, LOSS_NAME

CONFIG = get_config()
CLASS_NAMES = list(CONFIG.class_names)
METADATA_TYPES = {int: DatasetMetadataType.int, float: DatasetMetadataType.float, bool: DatasetMetadataType.boolean}


@tensorleap_preprocess()
def preprocess() -> List[PreprocessResponse]:
    data_root = resolve_data_root(CONFIG)
    return [PreprocessResponse(sample_ids=split.sample_ids, data=split, state=DataStateType[name])
            for name in ("training", "validation")
            for split in [load_labeled_split(CONFIG, name, data_root=data_root)]]


if "unlabeled" in CONFIG.splits:
    @tensorleap_unlabeled_preprocess()
    def unlabeled_preprocess() -> PreprocessResponse:
        split = load_unlabeled_split(CONFIG, data_root=resolve_data_root(CONFIG))
        return PreprocessResponse(sample_ids=split.sample_ids, data=split, state=DataStateType.unlabeled)


@tensorleap_input_encoder(INPUT_NAME, channel_dim=-1)
def image_encoder(sample_id: str, preprocess_response: PreprocessResponse) -> np.ndarray:
    return encode_image(preprocess_response.data, sample_id)


@tensorleap_gt_encoder(GROUND_TRUTH_NAME)
def mask_encoder(sample_id: str, preprocess_response: PreprocessResponse) -> np.ndarray:
    return encode_mask(preprocess_response.data, sample_id)


def _register_metadata(name: str, value_type: type):
    def metadata(sample_id: str, preprocess_response: PreprocessResponse):
        return sample_metadata(preprocess_response.data, sample_id)[name]  # None = missing (declared type kept)

    metadata.__name__ = f"metadata_{name}"
    return tensorleap_metadata(name, metadata_type=METADATA_TYPES[value_type])(metadata)


# One engine metadata per name (background_percent, person_count, ...); all read the sample's single decode.
METADATA = {name: _register_metadata(name, value_type) for name, value_type in metadata_names(CONFIG).items()}


@tensorleap_custom_metric("iou", direction={name: MetricDirection.Upward for name in CLASS_NAMES})
def iou(ground_truth: np.ndarray, prediction: np.ndarray) -> Dict[str, np.ndarray]:
    return metrics.by_class_name(metrics.iou_per_class(ground_truth, prediction), CLASS_NAMES)


@tensorleap_custom_metric("boundary_iou", direction={name: MetricDirection.Upward for name in CLASS_NAMES})
def boundary_iou(ground_truth: np.ndarray, prediction: np.ndarray) -> Dict[str, np.ndarray]:
    return metrics.by_class_name(metrics.boundary_iou_per_class(ground_truth, prediction), CLASS_NAMES)


@tensorleap_custom_metric("mean_iou", direction=MetricDirection.Upward)
def mean_iou(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return metrics.mean_iou(ground_truth, prediction)


@tensorleap_custom_metric("dice", direction=MetricDirection.Upward)
def dice(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return metrics.mean_dice(ground_truth, prediction)


@tensorleap_custom_metric("pixel_accuracy", direction=MetricDirection.Upward)
def pixel_accuracy(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return metrics.pixel_accuracy(ground_truth, prediction)


@tensorleap_custom_loss(LOSS_NAME)
def pixel_cross_entropy(ground_truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return metrics.cross_entropy_loss(ground_truth, prediction)


@tensorleap_custom_visualizer("input_image", LeapDataType.Image)
def input_image_visualizer(image: np.ndarray) -> LeapImage:
    return LeapImage(visualizers.denormalize_image(image), compress=False)


@tensorleap_custom_visualizer("gt_mask", LeapDataType.ImageMask)
def gt_mask_visualizer(image: np.ndarray, mask: np.ndarray) -> LeapImageMask:
    return LeapImageMask(visualizers.label_map(mask), visualizers.denormalize_image(image), CLASS_NAMES)


@tensorleap_custom_visualizer("prediction_mask", LeapDataType.ImageMask)
def prediction_mask_visualizer(image: np.ndarray, prediction: np.ndarray) -> LeapImageMask:
    return LeapImageMask(visualizers.label_map(prediction), visualizers.denormalize_image(image), CLASS_NAMES)


@tensorleap_custom_visualizer("error_map", LeapDataType.ImageMask)
def error_map_visualizer(image: np.ndarray, mask: np.ndarray, prediction: np.ndarray) -> LeapImageMask:
    codes, labels = visualizers.error_map(mask, prediction, class_names=CLASS_NAMES)
    return LeapImageMask(codes, visualizers.denormalize_image(image), labels)


@tensorleap_custom_visualizer("loss_heatmap", LeapDataType.ImageWithHeatmap)
def loss_heatmap_visualizer(image: np.ndarray, mask: np.ndarray, prediction: np.ndarray) -> LeapImageWithHeatmap:
    heatmap = visualizers.loss_heatmap(mask, prediction)
    return LeapImageWithHeatmap(visualizers.denormalize_image(image).astype(np.float32), heatmap, ["pixel loss"])


@tensorleap_custom_visualizer("confidence_heatmap", LeapDataType.ImageWithHeatmap)
def confidence_heatmap_visualizer(image: np.ndarray, prediction: np.ndarray) -> LeapImageWithHeatmap:
    heatmaps = visualizers.confidence_heatmaps(prediction)
    return LeapImageWithHeatmap(visualizers.denormalize_image(image).astype(np.float32), heatmaps, CLASS_NAMES)
