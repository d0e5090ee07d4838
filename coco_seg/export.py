"""Export the model (ONNX + Keras ``.h5``) with a model card, load it back and check it against the config.

The model card (``model_card.json`` beside the model files) records what the model was exported for: the label
mode, the class names in output-channel order (background first), the image size and the input normalisation.
A model used with a config that disagrees with its card, or whose input/output shapes disagree with the config,
is rejected with :class:`ModelMismatchError` before Tensorleap runs it.

TensorFlow, Keras and tf2onnx are imported only where needed: an ONNX model is loaded, checked and run with
onnxruntime alone.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from coco_seg.atomic import write_atomically as _write_atomically
from coco_seg.config import Config

if TYPE_CHECKING:
    import keras
    import onnxruntime

MODEL_CARD_NAME = "model_card.json"
MODEL_CARD_FORMAT_VERSION = 1
ONNX_NAME = "model.onnx"
H5_NAME = "model.h5"
ONNX_OPSET = 17
INPUT_NAME = "image"
KERAS_SUFFIXES = (".h5", ".keras")
MODEL_SUFFIXES = (".onnx",) + KERAS_SUFFIXES


class ModelLoadError(RuntimeError):
    """The model file named by ``model.path`` is missing, of an unsupported kind or unreadable."""


class ModelMismatchError(ValueError):
    """The model (or its model card) disagrees with the config: classes, label mode, image size or shapes."""


def model_card_for(config: Config, **extra: Any) -> dict[str, Any]:
    """The model card of a model made for ``config``; ``extra`` keys (e.g. ``trained``) are added as given."""
    return {
        "format_version": MODEL_CARD_FORMAT_VERSION,
        "label_mode": config.label_mode,
        "classes": list(config.class_names),
        "image_size": config.image_size,
        "normalisation": {"input": "rgb", "range": [-1, 1], "formula": "pixel / 127.5 - 1"},
        **extra,
    }


def keras_to_onnx(model: "keras.Model") -> bytes:
    """The serialized ONNX graph (tf2onnx, opset 17) of a Keras model with one image input named ``image``."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec((None, *tuple(model.input_shape)[1:]), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    return proto.SerializeToString()


def export_model(model: "keras.Model", out_dir: Path, *, card: dict[str, Any]) -> dict[str, Path]:
    """Write ``model.onnx`` (opset 17, input ``image`` of shape (None, S, S, 3)), ``model.h5`` and the card.

    Returns ``{"onnx": ..., "h5": ..., "card": ...}``. Each file is written to a temporary name in ``out_dir``
    and renamed into place, so a failed export never leaves a half-written model behind.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"export_model expects one image input of shape (None, S, S, 3), got {shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Convert first: the conversion is the step most likely to fail, and nothing is written until it succeeded.
    onnx_bytes = keras_to_onnx(model)
    paths = {"onnx": out_dir / ONNX_NAME, "h5": out_dir / H5_NAME, "card": out_dir / MODEL_CARD_NAME}
    _write_atomically(paths["onnx"], lambda temp: temp.write_bytes(onnx_bytes))
    _write_atomically(paths["h5"], lambda temp: model.save(temp))
    _write_atomically(paths["card"], lambda temp: temp.write_text(json.dumps(card, indent=2) + "\n"))
    return paths


def load_model(path: Path) -> "onnxruntime.InferenceSession | keras.Model":
    """``.onnx`` → onnxruntime session (CPU); ``.h5`` / ``.keras`` → Keras model (not compiled)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelLoadError(f"model file {path} is not a .onnx, .h5 or .keras file; "
                             f"set config key 'model.path' to one")
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; set config key 'model.path' to an existing "
                             f".onnx, .h5 or .keras file (`coco-seg export` writes one)")
    try:
        if suffix == ".onnx":
            import onnxruntime

            return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        import keras

        return keras.models.load_model(path, compile=False)
    except Exception as error:
        raise ModelLoadError(f"cannot load model file {path} (config key 'model.path'): "
                             f"{type(error).__name__}: {error}") from error


def read_model_card(model_path: Path) -> Optional[dict[str, Any]]:
    """The model card beside ``model_path``, or None when there is none."""
    card_path = Path(model_path).parent / MODEL_CARD_NAME
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model card {card_path} of model {model_path} is unreadable: {error}") from error
    if not isinstance(card, dict):
        raise ModelLoadError(f"model card {card_path} of model {model_path} must hold a JSON object")
    return card


def _is_onnx(model: Any) -> bool:
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return False
    return isinstance(model, onnxruntime.InferenceSession)


def _model_shapes(model: Any) -> tuple[Sequence[Any], Sequence[Any], int, int]:
    """(input shape, output shape, number of inputs, number of outputs); unknown dims are None."""
    if _is_onnx(model):
        inputs, outputs = model.get_inputs(), model.get_outputs()
        known = lambda shape: [d if isinstance(d, int) else None for d in (shape or [])]  # noqa: E731
        return known(inputs[0].shape), known(outputs[0].shape), len(inputs), len(outputs)
    inputs = model.input_shape
    outputs = model.output_shape
    n_in = len(inputs) if isinstance(inputs, list) else 1
    n_out = len(outputs) if isinstance(outputs, list) else 1
    first = lambda shape: tuple(shape[0] if isinstance(shape, list) else shape)  # noqa: E731
    return first(inputs), first(outputs), n_in, n_out


def check_model_matches_config(model: Any, config: Config, *, model_path: Path) -> None:
    """Raise :class:`ModelMismatchError`, listing every disagreement, unless ``model`` fits ``config``.

    Checked: the model card beside ``model_path`` (when there is one) against the config's class names (in
    order), label mode and image size; and, card or not, the model's input shape (S, S, 3) and its output
    (S, S, K+1), S = ``image_size``, K+1 = ``config.num_classes``.
    """
    problems: list[str] = []
    size, classes = config.image_size, list(config.class_names)
    card = read_model_card(model_path)
    if card is not None:
        where = f"its model card {Path(model_path).parent / MODEL_CARD_NAME}"
        if card.get("format_version") != MODEL_CARD_FORMAT_VERSION:
            problems.append(f"{where} has format_version {card.get('format_version')!r}; this version of coco-seg "
                            f"reads format_version {MODEL_CARD_FORMAT_VERSION} (re-export the model)")
        if card.get("classes") != classes:
            problems.append(f"{where} lists classes {card.get('classes')} but the config gives {classes} "
                            f"(order matters; change config keys 'labels.classes' / 'labels.mode')")
        if card.get("label_mode") != config.label_mode:
            problems.append(f"{where} has label mode {card.get('label_mode')!r} but the config has "
                            f"{config.label_mode!r} (change config key 'labels.mode')")
        if card.get("image_size") != size:
            problems.append(f"{where} has image size {card.get('image_size')!r} but the config has {size} "
                            f"(change config key 'image_size')")

    in_shape, out_shape, n_in, n_out = _model_shapes(model)
    if n_in != 1 or n_out != 1:
        problems.append(f"the model has {n_in} inputs and {n_out} outputs; coco-seg expects one image input "
                        f"and one logits output (change config key 'model.path')")
    if len(in_shape) != 4 or any(d is not None and d != want for d, want in zip(in_shape[1:], (size, size, 3))):
        problems.append(f"the model input has shape {_show(in_shape)}, expected (batch, {size}, {size}, 3) "
                        f"(change config key 'image_size' or 'model.path')")
    if len(out_shape) != 4:
        problems.append(f"the model output has shape {_show(out_shape)}, expected (batch, {size}, {size}, "
                        f"{config.num_classes}) (change config key 'model.path')")
    else:
        channels = out_shape[3]
        if channels is not None and channels != config.num_classes:
            problems.append(f"the model outputs {channels} channels but the config has {config.num_classes} "
                            f"classes {classes} (change config keys 'labels.classes' / 'labels.mode', "
                            f"or 'model.path')")
        if any(d is not None and d != size for d in out_shape[1:3]):
            problems.append(f"the model output has spatial size {_show(out_shape[1:3])}, expected ({size}, {size}) "
                            f"(change config key 'image_size' or 'model.path')")
    if problems:
        raise ModelMismatchError(f"model file {model_path} does not match config {config.source}:\n  - "
                                 + "\n  - ".join(problems))


def _show(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def load_checked_model(config: Config) -> "onnxruntime.InferenceSession | keras.Model":
    """The model named by config key ``model.path``, loaded and checked against the config."""
    if config.model_path is None:
        raise ModelLoadError(f"config key 'model.path' is not set in config {config.source}; set it to a .onnx, "
                             f".h5 or .keras model (`coco-seg export` writes one)")
    model = load_model(config.model_path)
    check_model_matches_config(model, config, model_path=config.model_path)
    return model


def predict_logits(model: Any, images: np.ndarray) -> np.ndarray:
    """Run an onnxruntime session or a Keras model on (N, S, S, 3) float32 images → (N, S, S, K) float32 logits."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"predict_logits expects a (N, S, S, 3) batch, got shape {images.shape}")
    if _is_onnx(model):
        logits = model.run(None, {model.get_inputs()[0].name: images})[0]
    else:
        import keras

        logits = keras.ops.convert_to_numpy(model(images, training=False))
    return np.asarray(logits, dtype=np.float32)
