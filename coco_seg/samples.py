"""One decode per sample: image, mask and metadata derived together and kept in a small bounded cache.

The engine calls the input encoder, the GT encoder and every metadata function separately for each sample. The
first call decodes the image once and paints the semantic mask once (original resolution), then derives the
model-size image and mask and all metadata from those; the other calls for the same sample hit the cache. The
cache is a per-process LRU of ``CACHE_SIZE`` samples, so memory stays bounded over 100k+ samples and any call
order is correct (a miss just decodes again).
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from coco_seg.coco_data import SampleRecord, SplitData
from coco_seg.images import ImageDecodeError, decode_rgb
from coco_seg.masks import AnnotationError, semantic_mask
from coco_seg.metadata import annotation_metadata, image_metadata, mask_metadata

CACHE_SIZE = 32


class SampleError(ValueError):
    """A sample cannot be decoded; the message names the sample id and the file."""


@dataclass(frozen=True)
class DecodedSample:
    sample_id: str
    image: np.ndarray  # (S, S, 3) uint8 RGB, model size
    mask: np.ndarray | None  # (S, S) uint8 class values 0..K, model size; None for unlabeled samples
    metadata: dict[str, Any]


def _decode(record: SampleRecord, split: SplitData) -> DecodedSample:
    config = split.config
    where = f"sample {record.sample_id} of split {split.name} ({record.path})"
    try:
        original = decode_rgb(record.path)
    except ImageDecodeError as error:
        raise SampleError(f"{where}: {error}") from None
    height, width = original.shape[:2]
    size = config.image_size
    # INTER_AREA averages source pixels: the right filter when shrinking a photo to the model size.
    image = cv2.resize(original, (size, size), interpolation=cv2.INTER_AREA)
    metadata = image_metadata(image, width=width, height=height)
    mask = None
    if split.labeled:
        if (width, height) != (record.width, record.height):
            raise SampleError(f"{where}: the file is {width}x{height} but the annotation file says "
                              f"{record.width}x{record.height} (width x height); masks would not line up")
        try:
            full_mask = semantic_mask(record.annotations, height=height, width=width,
                                      class_of_category=split.class_of_category,
                                      num_target_classes=len(config.target_classes))
        except AnnotationError as error:
            raise SampleError(f"{where}: {error}") from None
        mask = cv2.resize(full_mask, (size, size), interpolation=cv2.INTER_NEAREST)
        metadata |= mask_metadata(full_mask, class_names=config.class_names)
        metadata |= annotation_metadata(record.annotations, category_names=split.category_names,
                                        target_classes=config.target_classes, image_area=width * height)
    else:
        metadata |= mask_metadata(None, class_names=config.class_names)
        metadata |= annotation_metadata(None, category_names={}, target_classes=config.target_classes,
                                        image_area=width * height)
    return DecodedSample(sample_id=record.sample_id, image=image, mask=mask, metadata=metadata)


class SampleCache:
    """Bounded LRU of decoded samples, keyed by (split object, sample id); thread-safe."""

    def __init__(self, capacity: int = CACHE_SIZE) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], DecodedSample] = OrderedDict()
        self._lock = threading.Lock()
        self.decodes = 0  # for tests and benchmarks: how many times a sample was actually decoded

    def get(self, split: SplitData, sample_id: str) -> DecodedSample:
        key = (split.cache_token, sample_id)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        try:
            record = split.records[sample_id]
        except KeyError:
            raise SampleError(f"sample id {sample_id!r} is not in split {split.name}") from None
        decoded = _decode(record, split)
        with self._lock:
            self.decodes += 1
            self._entries[key] = decoded
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return decoded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = SampleCache()
