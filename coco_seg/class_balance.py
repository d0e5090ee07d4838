"""Class weights against class imbalance, from the training split's pixel frequencies (median-frequency balancing).

Algorithm (Eigen & Fergus 2015, as used by SegNet): for each class c, its frequency is the number of its pixels
divided by the number of pixels of the images that contain it, ``freq_c = pixels_c / image_pixels_c``; its weight is
``median(freq) / freq_c``, the median over the classes that occur. A rare class (cars: a few percent of the pixels
of the few images that hold one) gets a weight above 1, the dominant background one below 1. A class that never
occurs gets weight 1 (it contributes no pixel to the loss either way).

Pixel counts are read from the annotations' RLE areas at the original resolution (coco_seg.masks, no image decode):
one pass over the split's annotations, a fraction of a millisecond per sample.
"""

from dataclasses import dataclass

import numpy as np

from coco_seg.masks import class_pixel_counts, class_unions
from coco_seg.split_data import SplitData

METHOD = "median-frequency"


@dataclass(frozen=True)
class ClassPixelStatistics:
    """Per class, background first: its pixels, and the pixels of the images that contain it (both at the original
    resolution, over a whole split)."""

    pixels: np.ndarray  # (K,) int64
    image_pixels: np.ndarray  # (K,) int64

    def as_json(self) -> dict[str, list[int]]:
        return {"pixels": self.pixels.tolist(), "image_pixels": self.image_pixels.tolist()}


def _counts_per_record(split: SplitData):
    """(record, its mask-value pixel counts (K+1,)) for every sample, from RLE areas (no image is read)."""
    num_targets = len(split.config.target_classes)
    for record in split.records.values():
        unions = class_unions(record.annotations, height=record.height, width=record.width,
                              class_of_category=split.class_of_category)
        yield record, class_pixel_counts(unions, height=record.height, width=record.width,
                                         num_target_classes=num_targets)


def class_pixel_statistics(split: SplitData) -> ClassPixelStatistics:
    """The pixel statistics of every sample of a labeled split (its annotations only; no image is read)."""
    num_classes = len(split.config.target_classes) + 1
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for record, counts in _counts_per_record(split):
        pixels += counts
        image_pixels += np.where(counts > 0, record.height * record.width, 0)
    return ClassPixelStatistics(pixels, image_pixels)


def median_frequency_weights(statistics: ClassPixelStatistics) -> tuple[float, ...]:
    """``median(freq) / freq_c`` per class (see the module docstring); 1.0 for a class that never occurs.

    Raises:
        ValueError: no class occurs at all (an empty split).
    """
    present = statistics.pixels > 0
    if not present.any():
        raise ValueError("median-frequency class weights need at least one labelled pixel; the split has none")
    frequency = np.divide(statistics.pixels, statistics.image_pixels, out=np.zeros(len(present)), where=present)
    median = float(np.median(frequency[present]))
    return tuple(float(median / f) if p else 1.0 for f, p in zip(frequency, present))


def class_presence(split: SplitData) -> np.ndarray:
    """(N, K+1) bool, row i for ``split.sample_ids[i]``: which mask values its label mask holds (annotations only)."""
    rows = [counts > 0 for _, counts in _counts_per_record(split)]
    return np.array(rows, bool).reshape(len(rows), len(split.config.target_classes) + 1)


def repeat_factors(presence: np.ndarray, *, threshold: float) -> np.ndarray:
    """Repeat-factor sampling (Gupta et al., LVIS 2019): how many times each image appears in an epoch.

    A target class c held by a fraction ``f_c`` of the images gets ``r_c = max(1, sqrt(threshold / f_c))``; an image
    repeats ``round(max r_c over the target classes it holds)`` times (1 when it holds none). Background (column 0)
    is not a target: it is in nearly every image. Rounded, not drawn, so that every epoch has the same length.

    Args:
        presence: (N, K+1) bool, from :func:`class_presence`.
        threshold: in (0, 1]; the image fraction below which a class is oversampled.

    Returns:
        (N,) int64, each >= 1.
    """
    if not (0 < threshold <= 1):
        raise ValueError(f"the repeat-factor threshold must be in (0, 1], got {threshold!r}")
    presence = np.asarray(presence, bool)
    targets = presence[:, 1:]
    fraction = targets.mean(axis=0) if len(targets) else np.zeros(targets.shape[1])
    class_factor = np.where(fraction > 0, np.sqrt(threshold / np.maximum(fraction, 1e-12)), 1.0)
    class_factor = np.maximum(class_factor, 1.0)
    image_factor = np.max(np.where(targets, class_factor, 1.0), axis=1, initial=1.0)
    return np.floor(image_factor + 0.5).astype(np.int64)
