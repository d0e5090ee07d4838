"""Model input, ground truth and metadata of one sample, all served from its single cached decode."""

from typing import Any

import numpy as np

from coco_seg.coco_data import SplitData
from coco_seg.masks import one_hot
from coco_seg.samples import CACHE, SampleError


NORMALIZE_SCALE = np.float32(1 / 127.5)  # training's input pipeline does the same float32 arithmetic in TensorFlow


def normalize_image(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 RGB → float32 in [-1, 1], as MobileNetV2 expects (``pixel / 127.5 - 1``)."""
    normalized = image.astype(np.float32)  # one array, scaled and shifted in place (same float32 arithmetic)
    normalized *= NORMALIZE_SCALE
    normalized -= np.float32(1.0)
    return normalized


def encode_image(split: SplitData, sample_id: str) -> np.ndarray:
    """The model input: (S, S, 3) float32, channels last, in [-1, 1]."""
    return normalize_image(CACHE.get(split, sample_id).image)


def encode_label_mask(split: SplitData, sample_id: str) -> np.ndarray:
    """The ground truth as class values: (S, S) uint8, 0 background, 1..K the configured classes; all
    ``IGNORED_LABEL`` for a sample that failed to decode (coco_seg.samples)."""
    mask = CACHE.get(split, sample_id).mask
    if mask is None:
        raise SampleError(f"sample {sample_id} of split {split.name} is unlabeled: it has no ground truth")
    return mask


def encode_mask(split: SplitData, sample_id: str) -> np.ndarray:
    """The ground truth: (S, S, K+1) float32 one-hot, background first; all zeros (every pixel ignored by the
    metrics and the loss) for a sample that failed to decode."""
    # a placeholder's IGNORED_LABEL (255) is none of the classes 0..K, so its one-hot is all zeros
    return one_hot(encode_label_mask(split, sample_id), num_classes=split.config.num_classes)


def sample_metadata(split: SplitData, sample_id: str) -> dict[str, Any]:
    """Every metadata value of a sample, by engine name (see coco_seg.metadata)."""
    return CACHE.get(split, sample_id).metadata
