"""Pixel label issues by confident learning, streamed: cleanlab.segmentation's method in memory of one chunk.

What ``cleanlab.segmentation.filter.find_label_issues`` computes with its defaults (filter by low self-confidence,
rank by self-confidence), over every pixel of every image, in three passes over chunks of images. Pixels labelled
IGNORED_LABEL (no class applies) take no part anywhere: they count in no threshold, no number of issues, no
ranking, and are never flagged.

1. Confident thresholds (``update_thresholds``): per class k, t_k = the mean of p_k over the pixels labelled k,
   at least 2e-6 (cleanlab's lower bound; a class no pixel carries gets that bound, as in cleanlab).
2. Counts (``update_counts``): the number of issues n = the pixels whose predicted class j = argmax p differs
   from their label while p_j ≥ t_j − 1e-6 (cleanlab's prune count), and the histogram of every pixel's
   self-confidence p_label. The probabilities are float16, so a self-confidence takes one of 2^16 bit patterns
   and the histogram over them is exact: the n-th lowest value, the cut-off c, is known without sorting
   (or holding) the N × S × S scores.
3. Flags (``flag``): the n pixels of lowest self-confidence — every pixel below c, and of the pixels equal to c
   the first ones in row-major order, image by image, until n (what a stable sort takes; cleanlab's unstable
   argsort takes others among these ties) — less those whose predicted class equals their label (as cleanlab).

cleanlab itself keeps every pixel's score in a Python list (about 0.9 MB per 128-px image, 100 GB at full COCO)
and counts class swaps pixel by pixel in Python. Here the memory is one chunk's, each pass reads the chunks the
same way, and the flags equal cleanlab's on every pixel except the ones tied at c (tests/test_label_issues.py
compares both, and an exact reference that sorts stably).

Shapes: labels (B, S, S) uint8 class indices or IGNORED_LABEL; probabilities (B, K, S, S) float16, each pixel's
vector summing to one (a softmax).
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from coco_seg.samples import IGNORED_LABEL

FLOATING_POINT_COMPARISON = 1e-6  # cleanlab.internal.constants
CONFIDENT_THRESHOLDS_LOWER_BOUND = 2 * FLOATING_POINT_COMPARISON
_PATTERNS = 1 << 16  # float16 bit patterns; non-negative ones sort as their values


def _checked(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    if probabilities.dtype != np.float16:
        raise TypeError(f"probabilities must be float16 (the analysis stores them so), got {probabilities.dtype}")
    if labels.dtype != np.uint8:
        raise TypeError(f"labels must be uint8 class indices (IGNORED_LABEL where no class applies), got "
                        f"{labels.dtype}")
    if probabilities.ndim != 4 or probabilities.shape[1] != num_classes or labels.shape != (
            probabilities.shape[0],) + probabilities.shape[2:]:
        raise ValueError(f"expected labels (B, S, S) and probabilities (B, {num_classes}, S, S), got "
                         f"{labels.shape} and {probabilities.shape}")
    bad = (labels >= num_classes) & (labels != IGNORED_LABEL)
    if bad.any():
        raise ValueError(f"labels hold {int(labels[bad][0])}, not a class index below {num_classes} nor "
                         f"IGNORED_LABEL ({IGNORED_LABEL})")
    return labels, probabilities


@dataclass
class _Pixels:
    """One chunk, flattened to its labelled pixels in row-major order."""
    labelled: np.ndarray  # (B, S, S) bool
    labels: np.ndarray  # (P,) int64
    self_confidence: np.ndarray  # (P,) float16, p of the given label
    predicted: np.ndarray | None  # (P,) int64, argmax p (first on ties, as np.argmax); None when not asked for
    predicted_confidence: np.ndarray | None  # (P,) float16, p of the predicted class

    @classmethod
    def of(cls, labels: np.ndarray, probabilities: np.ndarray, *, predicted: bool = True) -> "_Pixels":
        labelled = labels != IGNORED_LABEL
        pixel_first = np.moveaxis(probabilities, 1, -1)[labelled]  # (P, K)
        given = labels[labelled].astype(np.int64)
        rows = np.arange(len(given))
        if not predicted:  # the thresholds need the self-confidence only
            return cls(labelled, given, pixel_first[rows, given], None, None)
        classes = pixel_first.argmax(axis=1)
        return cls(labelled, given, pixel_first[rows, given], classes, pixel_first[rows, classes])


@dataclass
class ConfidentLearning:
    """The three-pass accumulator (module comment): ``update_thresholds`` over every chunk, then ``update_counts``
    over every chunk, then ``flag`` over every chunk, each pass reading the same chunks in the same order."""
    num_classes: int
    _sums: np.ndarray = field(init=False, repr=False)
    _pixels_per_class: np.ndarray = field(init=False, repr=False)
    _histogram: np.ndarray = field(init=False, repr=False)
    issue_count: int = field(init=False, default=0)  # n, after pass 2
    _cutoff: int = field(init=False, default=-1)  # the bit pattern of c, or -1 while unknown
    _ties_left: int = field(init=False, default=0)  # pixels equal to c still to flag in pass 3
    swaps: np.ndarray = field(init=False, repr=False)  # (K, K) flagged pixels by (given, predicted), pass 3

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {self.num_classes!r}")
        self._sums = np.zeros(self.num_classes)
        self._pixels_per_class = np.zeros(self.num_classes, np.int64)
        self._histogram = np.zeros(_PATTERNS, np.int64)
        self.swaps = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update_thresholds(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        pixels = _Pixels.of(*_checked(labels, probabilities, self.num_classes), predicted=False)
        self._sums += np.bincount(pixels.labels, weights=pixels.self_confidence.astype(np.float64),
                                  minlength=self.num_classes)
        self._pixels_per_class += np.bincount(pixels.labels, minlength=self.num_classes)

    @property
    def thresholds(self) -> np.ndarray:
        """(K,) float64 confident thresholds t_k."""
        means = self._sums / np.maximum(self._pixels_per_class, 1)
        return np.maximum(means, CONFIDENT_THRESHOLDS_LOWER_BOUND)

    def update_counts(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        pixels = _Pixels.of(*_checked(labels, probabilities, self.num_classes))
        adjusted = self.thresholds - FLOATING_POINT_COMPARISON
        confident_elsewhere = (pixels.predicted != pixels.labels) & (
            pixels.predicted_confidence.astype(np.float64) >= adjusted[pixels.predicted])
        self.issue_count += int(confident_elsewhere.sum())
        self._histogram += np.bincount(pixels.self_confidence.view(np.uint16), minlength=_PATTERNS)
        self._cutoff = -1

    @property
    def cutoff(self) -> float | None:
        """c, the n-th lowest self-confidence (None when n is 0)."""
        self._settle()
        return None if self._cutoff < 0 else float(np.uint16(self._cutoff).view(np.float16))

    def _settle(self) -> None:
        if self._cutoff >= 0 or self.issue_count == 0:
            return
        cumulative = np.cumsum(self._histogram)
        self._cutoff = int(np.searchsorted(cumulative, self.issue_count))  # first pattern reaching n pixels
        below = int(cumulative[self._cutoff - 1]) if self._cutoff else 0
        self._ties_left = self.issue_count - below

    def flag(self, labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """(B, S, S) bool: the chunk's pixel label issues (the chunks in pass-2 order); their (given, predicted)
        classes are added to ``swaps``."""
        labels, probabilities = _checked(labels, probabilities, self.num_classes)
        flagged = np.zeros(labels.shape, bool)
        self._settle()
        if self._cutoff < 0:
            return flagged
        pixels = _Pixels.of(labels, probabilities)
        patterns = pixels.self_confidence.view(np.uint16).astype(np.int64)
        candidate = patterns < self._cutoff
        tied = np.flatnonzero(patterns == self._cutoff)[:self._ties_left]
        candidate[tied] = True
        self._ties_left -= len(tied)
        issues = candidate & (pixels.predicted != pixels.labels)
        flagged[pixels.labelled] = issues
        self.swaps += swap_counts(issues, pixels.labels, pixels.predicted, self.num_classes)
        return flagged


def stream_label_issues(read_chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                        learning: ConfidentLearning) -> Iterator[np.ndarray]:
    """Confident learning by ``learning`` (a new accumulator) over the chunks ``read_chunks()`` yields — (labels
    (B, S, S) uint8, probabilities (B, K, S, S) float16), the same chunks in the same order on each of its three
    calls — yielding the flags (B, S, S) bool of each chunk of the last pass; ``learning.swaps`` holds the class
    swaps once the last chunk is out."""
    for labels, probabilities in read_chunks():
        learning.update_thresholds(labels, probabilities)
    for labels, probabilities in read_chunks():
        learning.update_counts(labels, probabilities)
    for labels, probabilities in read_chunks():
        yield learning.flag(labels, probabilities)


def swap_counts(flags: np.ndarray, labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64: flagged pixels by (given label, predicted class), cleanlab's ``common_label_issues`` counts;
    the three arrays of one shape."""
    flags = np.asarray(flags, bool)
    given, seen = np.asarray(labels)[flags].astype(np.int64), np.asarray(predicted)[flags].astype(np.int64)
    return np.bincount(given * num_classes + seen, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                                num_classes)
