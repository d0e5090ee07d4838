"""coco_seg.analysis.label_issues: cleanlab.segmentation's confident learning, streamed in chunks.

Checked against cleanlab itself (on every pixel but those tied at the cut-off, where cleanlab's unstable argsort
picks its own), against a plain reference that sorts stably (every pixel), for chunking invariance, ignored
pixels, bad input and bounded memory."""

import tracemalloc

import numpy as np
import pytest

from coco_seg.analysis.label_issues import ConfidentLearning, stream_label_issues, swap_counts
from coco_seg.samples import IGNORED_LABEL


def _data(rng: np.random.Generator, images: int, size: int, classes: int = 3, *, noisy: float = 0.08,
          ignored: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and float16 softmax probabilities of a model that mostly agrees with them; a share ``noisy`` of the
    labels is swapped for another class (the third array marks them), a share ``ignored`` is IGNORED_LABEL."""
    truth = rng.integers(0, classes, (images, size, size))
    logits = rng.normal(0, 1.0, (images, classes, size, size))
    np.put_along_axis(logits, truth[:, None], np.take_along_axis(logits, truth[:, None], 1) + 3.0, axis=1)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = (probabilities / probabilities.sum(1, keepdims=True)).astype(np.float16)
    labels = truth.copy()
    swapped = rng.random(truth.shape) < noisy
    labels[swapped] = (truth[swapped] + rng.integers(1, classes, swapped.sum())) % classes
    labels = labels.astype(np.uint8)
    labels[rng.random(truth.shape) < ignored] = IGNORED_LABEL
    return labels, probabilities, swapped & (labels != IGNORED_LABEL)


def _stream(labels: np.ndarray, probabilities: np.ndarray, chunk: int, classes: int = 3) -> np.ndarray:
    def read():
        for start in range(0, len(labels), chunk):
            yield labels[start:start + chunk], probabilities[start:start + chunk]

    return np.concatenate(list(stream_label_issues(read, ConfidentLearning(classes))))


def _reference(labels: np.ndarray, probabilities: np.ndarray, classes: int = 3) -> np.ndarray:
    """The method written out over all pixels at once, with a stable sort."""
    labelled = labels != IGNORED_LABEL
    pixels = np.moveaxis(probabilities, 1, -1)[labelled].astype(np.float64)
    given = labels[labelled].astype(np.int64)
    self_confidence = pixels[np.arange(len(given)), given]
    thresholds = np.array([self_confidence[given == k].mean() if (given == k).any() else 0.0
                           for k in range(classes)]).clip(2e-6)
    predicted = pixels.argmax(1)
    count = int(((predicted != given) & (pixels[np.arange(len(given)), predicted] >= thresholds[predicted] - 1e-6)).sum())
    candidate = np.zeros(len(given), bool)
    candidate[np.argsort(self_confidence, kind="stable")[:count]] = True
    flags = np.zeros(labels.shape, bool)
    flags[labelled] = candidate & (predicted != given)
    return flags


def test_flags_equal_cleanlab_except_at_the_tied_cutoff():
    from cleanlab.segmentation.filter import find_label_issues

    rng = np.random.default_rng(0)
    labels, probabilities, planted = _data(rng, 40, 24)
    # cleanlab given float32 copies (exact) so that its thresholds are exact means, not float16-rounded ones
    theirs = find_label_issues(labels, probabilities.astype(np.float32), batch_size=100_000, n_jobs=1, verbose=False)
    ours = _stream(labels, probabilities, chunk=7)
    learning = ConfidentLearning(3)
    learning.update_thresholds(labels, probabilities)
    learning.update_counts(labels, probabilities)
    self_confidence = np.take_along_axis(probabilities, labels[:, None].astype(np.int64), 1)[:, 0]
    tied = self_confidence == np.float16(learning.cutoff)
    assert ours.sum() > 1000 and theirs.sum() > 1000  # a real workload: thousands of flagged pixels
    np.testing.assert_array_equal(ours[~tied], theirs[~tied])
    # at the tie both take the same number of candidates and drop those the model agrees with: neither keeps one
    agrees = probabilities.argmax(1) == labels
    assert not (ours & tied & agrees).any() and not (theirs & tied & agrees).any()
    # what is found is the planted label errors, and most of them
    precision, recall = (ours & planted).sum() / ours.sum(), (ours & planted).sum() / planted.sum()
    assert precision > 0.95 and recall > 0.6, (precision, recall)


def test_flags_equal_a_stable_sort_reference_for_any_chunking_and_with_ignored_pixels():
    rng = np.random.default_rng(1)
    labels, probabilities, _ = _data(rng, 30, 16, ignored=0.1)
    expected = _reference(labels, probabilities)
    assert expected.sum() > 300
    for chunk in (1, 4, 30):
        np.testing.assert_array_equal(_stream(labels, probabilities, chunk), expected)
    assert not expected[labels == IGNORED_LABEL].any()


def test_ties_at_the_cutoff_are_taken_in_row_major_order():
    """Seven pixels tied at the cut-off (self-confidence 0.2), three issues: the first three tied pixels in
    row-major order are flagged, image 0's, even though image 1's are the ones the model is confident about."""
    probabilities = np.zeros((2, 3, 2, 2), np.float16)
    probabilities[0] = np.array([0.2, 0.4, 0.4], np.float16)[:, None, None]  # predicted 1, but below t_1
    probabilities[1] = np.array([0.2, 0.8, 0.0], np.float16)[:, None, None]  # predicted 1, above t_1
    probabilities[1, :, 1, 1] = [0.2, 0.6, 0.2]
    labels = np.zeros((2, 2, 2), np.uint8)
    labels[1, 1, 1] = 1  # the only pixel labelled 1: t_1 = 0.6
    learning = ConfidentLearning(3)
    for images in (slice(0, 1), slice(1, 2)):
        learning.update_thresholds(labels[images], probabilities[images])
    for images in (slice(0, 1), slice(1, 2)):
        learning.update_counts(labels[images], probabilities[images])
    assert learning.issue_count == 3 and learning.cutoff == np.float16(0.2)
    flags = np.concatenate([learning.flag(labels[images], probabilities[images])
                            for images in (slice(0, 1), slice(1, 2))])
    expected = np.zeros((2, 2, 2), bool)
    expected[0].flat[:3] = True
    np.testing.assert_array_equal(flags, expected)
    np.testing.assert_array_equal(learning.swaps, [[0, 3, 0], [0, 0, 0], [0, 0, 0]])


def test_nothing_is_flagged_when_the_model_agrees_everywhere():
    rng = np.random.default_rng(2)
    labels, probabilities, _ = _data(rng, 5, 8, noisy=0.0)
    learning = ConfidentLearning(3)
    learning.update_thresholds(labels, probabilities)
    learning.update_counts(labels, probabilities)
    assert learning.issue_count == 0 and learning.cutoff is None
    assert not learning.flag(labels, probabilities).any()


def test_a_class_no_pixel_carries_gets_the_lower_bound_threshold():
    labels = np.zeros((1, 2, 2), np.uint8)
    probabilities = np.zeros((1, 3, 2, 2), np.float16)
    probabilities[:, 0], probabilities[:, 2] = 0.6, 0.4
    learning = ConfidentLearning(3)
    learning.update_thresholds(labels, probabilities)
    np.testing.assert_allclose(learning.thresholds, [0.6, 2e-6, 2e-6], rtol=1e-3)


def test_bad_input_is_refused_with_what_is_wrong():
    learning = ConfidentLearning(3)
    labels = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(TypeError, match="probabilities must be float16.*float32"):
        learning.update_thresholds(labels, np.full((2, 3, 4, 4), 1 / 3, np.float32))
    with pytest.raises(TypeError, match="labels must be uint8.*int64"):
        learning.update_thresholds(labels.astype(np.int64), np.full((2, 3, 4, 4), 1 / 3, np.float16))
    with pytest.raises(ValueError, match=r"expected labels \(B, S, S\) and probabilities \(B, 3, S, S\), got "
                                         r"\(2, 4, 4\) and \(2, 2, 4, 4\)"):
        learning.update_thresholds(labels, np.full((2, 2, 4, 4), 0.5, np.float16))
    labels[1, 2, 3] = 7
    with pytest.raises(ValueError, match="labels hold 7, not a class index below 3 nor IGNORED_LABEL"):
        learning.update_thresholds(labels, np.full((2, 3, 4, 4), 1 / 3, np.float16))
    for bad in (1, 2.0, "3"):
        with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
            ConfidentLearning(bad)


def test_swap_counts_count_flagged_pixels_by_given_and_predicted_class():
    flags = np.array([[[True, True], [False, True]]])
    labels = np.array([[[0, 0], [1, 2]]], np.uint8)
    predicted = np.array([[[1, 2], [0, 1]]])
    expected = np.zeros((3, 3), np.int64)
    expected[0, 1] = expected[0, 2] = expected[2, 1] = 1
    np.testing.assert_array_equal(swap_counts(flags, labels, predicted, 3), expected)


def test_memory_is_one_chunk_whatever_the_number_of_images():
    """The passes hold one chunk's arrays, never anything per image seen: the traced peak is the same for 80 and
    640 images (cleanlab's own kept a Python float per pixel: 8× the images, 8× the memory)."""
    rng = np.random.default_rng(3)
    labels, probabilities, _ = _data(rng, 16, 32)

    def peak(images: int) -> int:
        def read():
            for start in range(0, images, 16):
                yield labels, probabilities  # the same chunk again: no per-image input held by the test either

        tracemalloc.start()
        flagged = sum(int(flags.sum()) for flags in stream_label_issues(read, ConfidentLearning(3)))
        measured = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert flagged > 0
        return measured

    small, large = peak(80), peak(640)
    assert large < 1.2 * small, (small, large)
