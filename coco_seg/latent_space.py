"""The custom latent space: the decoder's feature map pooled per class (Tensorleap's recipe for segmentation).

Algorithm. The exported model has a second output, the decoder feature map just before the per-pixel
classifier: (N, h, w, C) at half the input resolution (h = S/2), non-negative (it concatenates ReLU outputs).
A sample's vector is, for each class k = background, c1, ..., the mean feature over the pixels of class k,
concatenated in class order: (N, K * C). The pixels of class k come from a per-pixel class weight map at the
model's input resolution S, averaged over each (S/h × S/w) block to the feature map's grid, so a feature cell
half covered by a person counts half:

    weights[n, i, j, k] = mean of the (S/h × S/w) block of class-k indicators at cell (i, j)
    vector[n, k, :]     = Σ_ij weights · features / Σ_ij weights     when Σ_ij weights ≥ MIN_CLASS_CELLS
                        = 0                                            otherwise (class absent: a defined vector)

Two sources of class maps: the ground truth (one-hot; ignored all-zero pixels weigh nothing) — the space
Tensorleap's analysis uses — and the model's own prediction (argmax, NaN/Inf pixels weigh nothing), which also
covers unlabeled samples. Stateless and per sample, so the engine may batch samples as it likes. Since the
features are non-negative, an absent class (zeros) sits at the corner of the space, away from every present one
whose features are not all zero: images with and without a car separate in the map. Feature cells that hold NaN
or Inf (a degenerate model) weigh nothing, so every vector is finite.
"""

import numpy as np

from coco_seg import metrics

# A class covering less than a quarter of one feature cell in total is treated as absent: its mean would be the
# feature of a single boundary cell, noise rather than a description of the class.
MIN_CLASS_CELLS = 0.25
MAX_WIDTH = 1024  # Tensorleap warns above this many dimensions per sample


def _check_features(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 4 or 0 in features.shape:
        raise ValueError(f"features must be a non-empty (N, h, w, C) array, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    return features.astype(np.float32, copy=False)


def _block_weights(class_maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, S, S, K) 0/1 class indicators → (N, h, w, K) float32 block means on the features' grid."""
    n, height, width, k = class_maps.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"the class maps ({height}×{width}) are not a whole multiple of the feature grid ({h}×{w})")
    blocks = class_maps.reshape(n, h, height // h, w, width // w, k).astype(np.float32)
    return blocks.mean(axis=(2, 4))


def class_pooled(features: np.ndarray, class_maps: np.ndarray) -> np.ndarray:
    """Per-class masked means of ``features`` (see the module docstring).

    Args:
        features: (N, h, w, C) float decoder features.
        class_maps: (N, S, S, K) class indicators (one-hot, or all zero at pixels that belong to no class), with
            S a whole multiple of h and w.

    Returns:
        (N, K * C) float32, finite: class k's mean feature at ``[:, k*C:(k+1)*C]``, zeros for an absent class.

    Raises:
        ValueError: wrong ranks, batch sizes that differ, grids that do not divide. Feature cells holding NaN/Inf
        (a degenerate model) weigh nothing, so the result stays finite.
    """
    features = _check_features(features)
    class_maps = np.asarray(class_maps)
    if class_maps.ndim != 4 or class_maps.shape[0] != features.shape[0]:
        raise ValueError(f"class maps must be (N, S, S, K) with N = {features.shape[0]} like the features, got "
                         f"shape {class_maps.shape}")
    weights = _block_weights(class_maps, features.shape[1:3])
    finite = np.isfinite(features).all(axis=-1)  # (N, h, w): a degenerate model's NaN/Inf cells weigh nothing
    if not finite.all():
        features = np.where(finite[..., None], features, 0.0).astype(np.float32)
        weights = weights * finite[..., None]
    sums = np.einsum("nijk,nijc->nkc", weights, features, optimize=True)
    mass = weights.sum(axis=(1, 2))  # (N, K): feature cells' worth of each class
    present = mass >= MIN_CLASS_CELLS
    means = np.where(present[..., None], sums / np.maximum(mass, MIN_CLASS_CELLS)[..., None], 0.0)
    return means.reshape(features.shape[0], -1).astype(np.float32)


def pool_by_ground_truth(features: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """The ground-truth-bound space: ``class_pooled(features, ground_truth)``.

    Args:
        features: (N, h, w, C) float decoder features.
        ground_truth: (N, S, S, K) one-hot (float16 as the engine casts it is fine); all-zero pixels are ignored.

    Returns:
        (N, K * C) float32.
    """
    ground_truth = np.asarray(ground_truth)
    if ground_truth.ndim != 4:
        raise ValueError(f"ground_truth must be (N, S, S, K), got shape {ground_truth.shape}")
    return class_pooled(features, ground_truth > 0.5)


def pool_by_prediction(features: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The prediction-bound space (defined for unlabeled samples too): pooled over the predicted classes.

    Args:
        features: (N, h, w, C) float decoder features.
        prediction: (N, S, S, K) logits or probabilities; pixels whose scores hold NaN/Inf weigh nothing.

    Returns:
        (N, K * C) float32.
    """
    prediction = np.asarray(prediction)
    if prediction.ndim != 4:
        raise ValueError(f"prediction must be (N, S, S, K), got shape {prediction.shape}")
    k = prediction.shape[-1]
    labels = metrics.predicted_labels(prediction)
    class_maps = labels[..., None] == np.arange(k, dtype=labels.dtype)
    class_maps &= np.isfinite(prediction).all(axis=-1, keepdims=True)
    return class_pooled(features, class_maps)


def width(*, num_classes: int, channels: int) -> int:
    """Dimensions per sample of a space over ``num_classes`` classes (background included) and ``channels``."""
    return num_classes * channels

