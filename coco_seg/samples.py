"""One decode per sample: image, mask and metadata derived together and kept in a small bounded cache.

The engine calls the input encoder, the GT encoder and every metadata function separately for each sample. The
first call decodes the image once (resized to the model size before the colour conversion), builds one RLE union
per class from the annotations, paints the model-size mask from those and derives all metadata (class shares from
the unions' RLE areas at full resolution); the other calls for the same sample hit the cache. The
cache is a per-process LRU of ``CACHE_SIZE`` samples, so memory stays bounded over 100k+ samples and any call
order is correct (a miss just decodes again).

Decode failures never raise into the engine. Preprocess has checked every sample it accepted (file present, not
truncated, header size equal to the annotation's, annotations usable), but a file can still fail to decode — a
corrupt middle, a format whose header preprocess does not read, a file changed since. Such a sample is served as
a **placeholder**, so that the run goes on and the sample shows up as missing rather than with a made-up score:

* input: a black image (uint8 0 everywhere, so the model input is -1.0 everywhere after normalisation);
* ground truth: all-zero one-hot (label mask ``IGNORED_LABEL``), i.e. every pixel *ignored* under the metrics
  policy (coco_seg.metrics): loss 0, IoU / dice / accuracy undefined (NaN), never a perfect or a zero score;
  training's one-hot of ``IGNORED_LABEL`` is all-zero too, so it adds no cross-entropy;
* metadata: None for every value (the engine marks it missing), except ``image_width`` / ``image_height``, which
  come from the annotation (None for unlabeled samples, which have none).

Unlabeled samples get the same, without ground truth. The failure is logged once per sample (split, sample id,
file, reason) and added to ``failed_at_decode`` in the split's bad-sample report (coco_seg.coco_data); later calls
for that sample serve the placeholder without reading the file again.
"""

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

from coco_seg.ledger import record_decode_failure
from coco_seg.split_data import BadSample, SampleRecord, SplitData
from coco_seg.images import ImageDecodeError, decode_rgb
from coco_seg.masks import AnnotationError, class_pixel_counts, class_unions, paint
from coco_seg.metadata import annotation_metadata, image_metadata, mask_metadata, missing_metadata

logger = logging.getLogger(__name__)

CACHE_SIZE = 32
IGNORED_LABEL = 255  # label-mask value of a placeholder's pixels: no class, one-hot all zeros (ignored)


class SampleError(ValueError):
    """A sample cannot be decoded; the message names the sample id and the file."""


@dataclass(frozen=True)
class DecodedSample:
    sample_id: str
    image: np.ndarray  # (S, S, 3) uint8 RGB, model size
    mask: np.ndarray | None  # (S, S) uint8 class values 0..K, model size; None for unlabeled samples
    metadata: dict[str, Any]
    failure: Optional[str] = None  # why this is a placeholder (see the module comment); None for a real decode


def _where(record: SampleRecord, split: SplitData) -> str:
    return f"sample {record.sample_id} of split {split.name} ({record.file})"


def _decode(record: SampleRecord, split: SplitData) -> DecodedSample:
    config = split.config
    where = _where(record, split)
    size = config.image_size
    try:
        image, (width, height) = decode_rgb(record.file, size=size)
    except ImageDecodeError as error:
        raise SampleError(f"{where}: {error}") from None
    metadata = image_metadata(image, width=width, height=height)
    mask = None
    if split.labeled:
        if (width, height) != (record.width, record.height):
            raise SampleError(f"{where}: the file is {width}x{height} but the annotation file says "
                              f"{record.width}x{record.height} (width x height); masks would not line up")
        annotations = record.annotations  # read once: with the index cache this is a read from disk
        try:
            unions = class_unions(annotations, height=height, width=width,
                                  class_of_category=split.class_of_category)
        except AnnotationError as error:
            raise SampleError(f"{where}: {error}") from None
        # The mask is painted at the model size only; class shares come from RLE areas at full resolution.
        targets = len(config.target_classes)
        mask = paint(unions, height=height, width=width, num_target_classes=targets, out_size=size)
        counts = class_pixel_counts(unions, height=height, width=width, num_target_classes=targets)
        metadata |= mask_metadata(counts, class_names=config.class_names)
        metadata |= annotation_metadata(annotations, category_names=split.category_names,
                                        target_classes=config.target_classes, image_area=width * height)
    else:
        metadata |= mask_metadata(None, class_names=config.class_names)
        metadata |= annotation_metadata(None, category_names={}, target_classes=config.target_classes,
                                        image_area=width * height)
    return DecodedSample(sample_id=record.sample_id, image=image, mask=mask, metadata=metadata)


def _placeholder(record: SampleRecord, split: SplitData, *, reason: str) -> DecodedSample:
    """What an undecodable sample is served as (policy in the module comment)."""
    size = split.config.image_size
    metadata = missing_metadata(split.config, image_width=record.width, image_height=record.height)
    mask = np.full((size, size), IGNORED_LABEL, np.uint8) if split.labeled else None
    return DecodedSample(sample_id=record.sample_id, image=np.zeros((size, size, 3), np.uint8), mask=mask,
                         metadata=metadata, failure=reason)


def decode_sample(record: SampleRecord, split: SplitData) -> DecodedSample:
    """``_decode``, or — when it fails — the placeholder, after logging and reporting the failure once."""
    known = split.failed_at_decode.get(record.sample_id)
    if known is not None:  # failed before in this process: neither read the file nor warn again
        return _placeholder(record, split, reason=known.reason)
    try:
        return _decode(record, split)
    except (SampleError, ImageDecodeError, AnnotationError, cv2.error) as error:
        reason = str(error).removeprefix(f"{_where(record, split)}: ")  # the report names sample and file apart
    except Exception as error:  # noqa: BLE001 — whatever goes wrong, the engine's per-sample loop must go on
        # Not an expected decode failure: keep the traceback in the log, it may be a bug rather than bad data.
        logger.exception("unexpected error decoding %s", _where(record, split))
        reason = f"unexpected {type(error).__name__} while decoding: {error}"
    record_decode_failure(split, BadSample(record.sample_id, record.file, reason))
    return _placeholder(record, split, reason=reason)


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
        decoded = decode_sample(record, split)
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
