"""The segmentation model: a MobileNetV2 encoder with a pix2pix U-Net decoder (as in the TensorFlow tutorial).

Architecture (image size S, K+1 classes)::

    image (S, S, 3) in [-1, 1]
      └─ encoder: MobileNetV2 (include_top=False), one sub-model returning five feature maps
           block_1_expand_relu  S/2   ─────────────────────────────────────┐
           block_3_expand_relu  S/4   ───────────────────────────────┐     │
           block_6_expand_relu  S/8   ─────────────────────────┐     │     │
           block_13_expand_relu S/16  ───────────────────┐     │     │     │
           block_16_project     S/32 ─ up 512 → concat ──┘     │     │     │
                                        up 256 → concat ───────┘     │     │
                                        up 128 → concat ─────────────┘     │
                                        up  64 → concat ───────────────────┘
      └─ logits: Conv2DTranspose(K+1, 3, stride 2) → (S, S, K+1), no softmax

Each "up" block is Conv2DTranspose(filters, 3, stride 2, no bias, N(0, 0.02) init) → BatchNorm → ReLU, written
inline (the tensorflow_examples package is not installable). The encoder is frozen unless ``trainable_encoder``;
only built-in Keras layers are used, so the legacy ``.h5`` file loads back without custom objects.
"""

import os
import warnings
from pathlib import Path

import keras

from coco_seg.config import IMAGE_SIZE_MULTIPLE, KERAS_SUFFIXES, is_valid_image_size
from coco_seg.export import CLASSIFIER_LAYER, INPUT_NAME, float32_inference_model

SKIP_LAYER_NAMES = (
    "block_1_expand_relu",   # S/2
    "block_3_expand_relu",   # S/4
    "block_6_expand_relu",   # S/8
    "block_13_expand_relu",  # S/16
    "block_16_project",      # S/32, the bottleneck
)
UP_FILTERS = (512, 256, 128, 64)
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
ENCODER_NAME = "encoder"
MODEL_NAME = "coco_seg_unet"
OUTPUT_NAME = CLASSIFIER_LAYER  # the per-pixel classifier; its input is the decoder feature map


class EncoderWeightsError(RuntimeError):
    """The encoder weights (ImageNet download or a local file) could not be obtained or loaded."""


def _check_options(image_size: int, num_classes: int, alpha: float) -> None:
    if not is_valid_image_size(image_size):
        raise ValueError(f"image_size must be a multiple of {IMAGE_SIZE_MULTIPLE} and >= {IMAGE_SIZE_MULTIPLE}, "
                         f"got {image_size!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (background + at least one class), got {num_classes!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"alpha must be a positive width multiplier, got {alpha!r}")


def _mobilenet(image_size: int, alpha: float, weights) -> keras.Model:
    with warnings.catch_warnings():
        # Sizes outside 96..224 get the 224 ImageNet weights; convolution weights do not depend on the size.
        warnings.filterwarnings("ignore", message=r".*`input_shape` is undefined or non-square.*")
        return keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), include_top=False,
                                              weights=weights, alpha=alpha)


def _encoder_base(image_size: int, alpha: float, encoder_weights: "str | os.PathLike[str]") -> keras.Model:
    """MobileNetV2 without its top, with the weights ``encoder_weights`` asks for."""
    choice = os.fspath(encoder_weights)
    if choice.lower() == "none":
        return _mobilenet(image_size, alpha, None)
    if choice.lower() == "imagenet":
        if alpha not in IMAGENET_ALPHAS:
            raise ValueError(f"alpha must be one of {', '.join(map(str, IMAGENET_ALPHAS))} with ImageNet encoder "
                             f"weights, got {alpha!r} (or use encoder_weights=\"none\")")
        try:
            return _mobilenet(image_size, alpha, "imagenet")
        except Exception as error:  # URL fetch failure, no network, a truncated cached download...
            raise EncoderWeightsError(
                f"the ImageNet weights of the MobileNetV2 encoder (alpha={alpha}) could not be downloaded "
                f"({type(error).__name__}: {error}). Without network access, build the model with a random "
                f"encoder (--encoder-weights none / encoder_weights=\"none\") or from a local weights file "
                f"(--encoder-weights PATH / encoder_weights=\"PATH\", a MobileNetV2 include_top=False .h5 file)"
            ) from error
    path = Path(choice).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights file {path} does not exist (encoder_weights / --encoder-weights "
                                  f"takes imagenet, none or the path of a MobileNetV2 include_top=False .h5 file)")
    try:
        return _mobilenet(image_size, alpha, str(path))
    except Exception as error:
        raise EncoderWeightsError(
            f"cannot load encoder weights file {path} into MobileNetV2 (alpha={alpha}, include_top=False): "
            f"{type(error).__name__}: {error}. The file must hold weights of a MobileNetV2 with the same alpha "
            f"and no top") from error


def _up_block(x, filters: int, index: int):
    """pix2pix upsample: transposed convolution (stride 2) → batch norm → ReLU."""
    x = keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False,
                                     kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
                                     name=f"up{index}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"up{index}_bn")(x)
    return keras.layers.ReLU(name=f"up{index}_relu")(x)


def build_unet(*, image_size: int, num_classes: int, encoder_weights: "str | os.PathLike[str]" = "imagenet",
               alpha: float = 1.0, trainable_encoder: bool = False) -> keras.Model:
    """The MobileNetV2 + pix2pix U-Net: (N, S, S, 3) float32 in [-1, 1] → (N, S, S, num_classes) logits.

    ``encoder_weights``: ``"imagenet"`` (downloaded by Keras; :class:`EncoderWeightsError` when that fails),
    ``"none"`` (random initialisation) or the path of a local MobileNetV2 ``include_top=False`` weights file.
    """
    _check_options(image_size, num_classes, alpha)
    base = _encoder_base(image_size, alpha, encoder_weights)
    down_stack = keras.Model(inputs=base.input, outputs=[base.get_layer(name).output for name in SKIP_LAYER_NAMES],
                             name=ENCODER_NAME)
    down_stack.trainable = trainable_encoder

    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=INPUT_NAME)
    *skips, x = down_stack(inputs)
    for index, (filters, skip) in enumerate(zip(UP_FILTERS, reversed(skips)), start=1):
        x = _up_block(x, filters, index)
        x = keras.layers.Concatenate(name=f"up{index}_concat")([x, skip])
    # float32 whatever the global policy: under mixed_float16 the logits (and so the loss) keep float32's range
    logits = keras.layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same", name=OUTPUT_NAME,
                                          dtype="float32")(x)
    return keras.Model(inputs=inputs, outputs=logits, name=MODEL_NAME)


def load_keras_checkpoint(path: Path) -> keras.Model:
    """A trained Keras model (``.keras`` or ``.h5``), loaded without its training configuration."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ValueError(f"checkpoint {path} must be a .keras or .h5 Keras model file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return float32_inference_model(keras.models.load_model(path, compile=False))

