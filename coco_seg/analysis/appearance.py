"""Appearance descriptors for near-duplicate and out-of-distribution search, independent of the labels.

Algorithm: an image (the encoder's input, denormalised to uint8 RGB) is shrunk to 32×32 (INTER_AREA), converted to
CIE Lab, and each channel's 2-D DCT is taken; the 6×6 lowest frequencies of each channel without the DC term
(3 × 35 = 105 numbers) are L2-normalised. Low frequencies survive a JPEG re-encode and a small crop or shift; the
DC terms (overall brightness and colour) are left out so that exposure alone does not separate copies.

A near-duplicate is judged on two views at once, :func:`duplicate_space`: this colour layout and the model
encoder's mid-level features (global-average-pooled ``block_13_expand_relu``, centred on the reference rows),
each L2-normalised and concatenated with weight 1/√2, so that the dot product of two rows is the mean of the two
cosines. Measured on the 397 real photos of ../shared/coco_sample with the ImageNet encoder at 128 px, a copy
re-encoded at JPEG quality 60 and cropped by up to 6 % scored ≥ 0.89 against its original, while the most similar
pair of distinct photos scored 0.74 (each view alone overlaps: 0.87 vs 0.87 for the colour layout, 0.85 vs 0.82
for the encoder features); hence the default threshold 0.82 (``InsightsConfig.duplicate_similarity``).

Image statistics (:func:`image_statistics`, a view for out-of-distribution search): ten low-level numbers per image,
the CIE Lab mean and standard deviation of each channel, the mean Sobel gradient magnitude and the log variance of
the Laplacian of L (edge density and sharpness), the share of the DCT energy of L (32×32, DC left out) outside
its 8×8 lowest frequencies (noise, fine patterns) and the mean HSV saturation. :func:`standardized_rows` puts them
on a common scale (each minus the training median, over max(1.4826·MAD, sd) of the training rows), so that no
single statistic dominates the distance and one that never varies in training does not read as infinitely far.
Measured on a generated sample (40 training images): uniform noise and checkerboards lie 5–10 robust z above the
training rows' own neighbour distances, against at most 2–3 for the colour layout alone.
"""

import cv2
import numpy as np

DESCRIPTOR_SIZE = 32  # pixels per side before the DCT
FREQUENCIES = 6  # lowest DCT frequencies kept per axis and channel
APPEARANCE_DIMENSIONS = 3 * (FREQUENCIES * FREQUENCIES - 1)
STATISTICS = ("L_mean", "a_mean", "b_mean", "L_sd", "a_sd", "b_sd", "gradient", "log_laplacian_variance",
              "high_frequency_share", "saturation")
LOW_FREQUENCIES = 8  # per axis: the DCT block whose energy counts as low-frequency


def appearance_descriptors(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB images → (N, 105) float32 unit rows (an all-flat image gives a zero row)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    rows = np.zeros((len(images), APPEARANCE_DIMENSIONS), np.float32)
    for index, image in enumerate(images):
        small = cv2.resize(np.ascontiguousarray(image, np.uint8), (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE),
                           interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)
        parts = [cv2.dct(np.ascontiguousarray(lab[..., channel]))[:FREQUENCIES, :FREQUENCIES].reshape(-1)[1:]
                 for channel in range(3)]
        row = np.concatenate(parts)
        norm = float(np.linalg.norm(row))
        rows[index] = row / norm if norm > 1e-9 else 0.0
    return rows


def unit_rows(matrix: np.ndarray, *, reference: np.ndarray | None = None) -> np.ndarray:
    """(N, D) → (N, D) float64 rows, each scaled to unit length (zero rows stay); with ``reference`` ((N,) bool),
    first minus the mean of the reference rows (when there are any): centring removes the component all pooled
    CNN features share, which would push every cosine towards 1."""
    from coco_seg.analysis.latent import centre_and_normalise  # the latent map's working space, the same rule

    matrix = np.asarray(matrix, np.float64)
    centre = (matrix[np.asarray(reference, bool)].mean(axis=0) if reference is not None and np.any(reference)
              else np.zeros(matrix.shape[1]))
    return centre_and_normalise(matrix, centre=centre, normalize=True)


def duplicate_space(appearance: np.ndarray, encoder_features: np.ndarray | None, *,
                    reference: np.ndarray) -> np.ndarray:
    """(N, 105) appearance rows and (N, C) encoder features → (N, 105 + C) rows whose dot product is the mean of
    the two views' cosines (the appearance view alone when ``encoder_features`` is None). ``reference``: (N,) bool,
    the rows whose mean centres the encoder features (the training split)."""
    views = [unit_rows(appearance)]
    if encoder_features is not None and encoder_features.shape[1]:
        views.append(unit_rows(encoder_features, reference=reference))
    return np.hstack(views) / np.sqrt(len(views))


def image_statistics(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB images → (N, 10) float32 low-level statistics, in the order of ``STATISTICS``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got shape {images.shape}")
    rows = np.zeros((len(images), len(STATISTICS)), np.float32)
    for index, image in enumerate(images):
        pixels = np.ascontiguousarray(image, np.uint8).astype(np.float32) / 255.0
        lab = cv2.cvtColor(pixels, cv2.COLOR_RGB2Lab) / np.float32([100.0, 128.0, 128.0])
        lightness = np.ascontiguousarray(lab[..., 0])
        lab = lab.reshape(-1, 3)
        gradient = np.hypot(cv2.Sobel(lightness, cv2.CV_32F, 1, 0), cv2.Sobel(lightness, cv2.CV_32F, 0, 1))
        laplacian = cv2.Laplacian(lightness, cv2.CV_32F)
        small = cv2.resize(lightness, (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA)
        energy = cv2.dct(np.ascontiguousarray(small)) ** 2
        energy[0, 0] = 0.0
        total = float(energy.sum())
        high = (total - float(energy[:LOW_FREQUENCIES, :LOW_FREQUENCIES].sum())) / total if total > 1e-12 else 0.0
        saturation = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)[..., 1].mean()
        rows[index] = [*lab.mean(axis=0), *lab.std(axis=0), gradient.mean(), np.log(laplacian.var() + 1e-6), high,
                       saturation]
    return rows


def standardized_rows(matrix: np.ndarray, *, reference: np.ndarray) -> np.ndarray:
    """(N, F) → (N, F) float64: each column minus the reference rows' median, over max(1.4826·MAD, sd, 1e-3) of
    the reference rows (``reference``: (N,) bool). A column constant in the reference keeps the floor, so a value
    off it is far but finite."""
    matrix = np.asarray(matrix, np.float64)
    base = matrix[np.asarray(reference, bool)]
    if not len(base):
        return matrix.copy()
    median = np.median(base, axis=0)
    scale = np.maximum(np.maximum(1.4826 * np.median(np.abs(base - median), axis=0), base.std(axis=0)), 1e-3)
    return (matrix - median) / scale
