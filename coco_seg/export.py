"""Export the model (ONNX + Keras ``.h5``) with a model card, load it back and check it against the config.

The exported model has two outputs, in this order: the segmentation logits (N, S, S, K+1), and the decoder feature
map just before the per-pixel classifier (N, S/2, S/2, C), from which the Tensorleap integration pools its custom
latent space (coco_seg.latent_space). A model with only the logits output (a user's own) is accepted too; it just
has no custom latent space.

The model card (``model_card.json`` beside the model files) records what the model was exported for: the label
mode, the class names in output-channel order (background first), the image size, the input normalisation and
the outputs.
A model used with a config that disagrees with its card, or whose input/output shapes disagree with the config,
is rejected with :class:`ModelMismatchError` before Tensorleap runs it.

TensorFlow, Keras and tf2onnx are imported only where needed: an ONNX model is loaded, checked and run with
onnxruntime alone.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

import numpy as np

from coco_seg.atomic import replace_folder, write_json_atomically
from coco_seg.config import MODEL_SUFFIXES, ONNX_SUFFIX, Config

if TYPE_CHECKING:
    import keras
    import onnxruntime

MODEL_CARD_NAME = "model_card.json"
MODEL_CARD_FORMAT_VERSION = 1
ONNX_NAME = "model.onnx"
H5_NAME = "model.h5"
ONNX_OPSET = 17
INPUT_NAME = "image"  # the model's one input, in Keras and in ONNX
CLASSIFIER_LAYER = "logits"  # build_unet's per-pixel classifier; its input is the decoder feature map
SEGMENTATION_OUTPUT = "segmentation"  # output 0: (N, S, S, K+1) logits
FEATURES_OUTPUT = "decoder_features"  # output 1 (optional): (N, S/2, S/2, C) decoder features before the classifier


class ModelLoadError(RuntimeError):
    """The model file named by ``model.path`` is missing, of an unsupported kind or unreadable."""


class ModelMismatchError(ValueError):
    """The model (or its model card) disagrees with the config: classes, label mode, image size or shapes."""


# The decoder features' channel count of build_unet's default model (alpha 1.0): 64 from the last up-block plus
# 96 from the block_1_expand_relu skip. Used only when neither a model card nor a model file says otherwise.
DEFAULT_FEATURES_CHANNELS = 160


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


def with_features_output(model: "keras.Model") -> "keras.Model":
    """The same model with the decoder features appended as a second output: ``[logits, features]``.

    The features are the input of the final classifier layer (``CLASSIFIER_LAYER``). A model that already has
    two outputs is returned as it is.
    """
    import keras

    if len(model.outputs) == 2:
        return model
    if len(model.outputs) != 1:
        raise ValueError(f"expected a model with one logits output, got {len(model.outputs)} outputs")
    try:
        classifier = model.get_layer(CLASSIFIER_LAYER)
    except ValueError as error:
        raise ValueError(f"the model has no layer {CLASSIFIER_LAYER!r} (the per-pixel classifier of "
                         f"coco_seg.model.build_unet); cannot expose its decoder features") from error
    return keras.Model(inputs=model.input, outputs=[model.outputs[0], classifier.input], name=model.name)


def export_model(model: "keras.Model", out_dir: Path, *, card: dict[str, Any]) -> dict[str, Path]:
    """Write ``model.onnx`` (opset 17, input ``image`` of shape (None, S, S, 3)), ``model.h5`` and the card.

    Both model files have the outputs ``[logits, decoder features]`` (:func:`with_features_output`).

    Returns ``{"onnx": ..., "h5": ..., "card": ...}``. The folder is built beside ``out_dir`` and swapped in whole
    (coco_seg.atomic.replace_folder): a failed or killed export leaves the previous export as it was, never a mix
    of two; a folder holding files that coco-seg did not write is refused (OutputFolderError) untouched.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"export_model expects one image input of shape (None, S, S, 3), got {shape}")
    model = with_features_output(model)
    card = {**card, "outputs": [SEGMENTATION_OUTPUT, FEATURES_OUTPUT],
            "features_channels": int(model.output_shape[1][-1])}
    out_dir = Path(out_dir)
    names = {"onnx": ONNX_NAME, "h5": H5_NAME, "card": MODEL_CARD_NAME}

    def build(folder: Path) -> None:
        (folder / ONNX_NAME).write_bytes(keras_to_onnx(model))
        model.save(folder / H5_NAME)
        write_json_atomically(folder / MODEL_CARD_NAME, card)

    # the three files describe one model: they are built together in a temporary folder and swapped in at once
    replace_folder(out_dir, build, known=names.values())
    return {key: out_dir / name for key, name in names.items()}


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
        if suffix == ONNX_SUFFIX:
            import onnxruntime

            return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        try:
            import keras
        except ImportError as error:  # the platform's requirements.txt has no TensorFlow: its path is ONNX
            raise ModelLoadError(f"model file {path} is a Keras model, which needs TensorFlow (not installed here); "
                                 f"point config key 'model.path' at the {ONNX_SUFFIX} that `coco-seg export` wrote "
                                 f"beside it, or install tensorflow") from error

        return float32_inference_model(keras.models.load_model(path, compile=False))
    except ModelLoadError:
        raise
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


def _model_shapes(model: Any) -> tuple[Sequence[Any], list[Sequence[Any]], int]:
    """(first input's shape, every output's shape, number of inputs); unknown dims are None."""
    if _is_onnx(model):
        known = lambda shape: [d if isinstance(d, int) else None for d in (shape or [])]  # noqa: E731
        return (known(model.get_inputs()[0].shape), [known(o.shape) for o in model.get_outputs()],
                len(model.get_inputs()))
    inputs = model.input_shape
    outputs = model.output_shape
    inputs = inputs if isinstance(inputs, list) else [inputs]
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return tuple(inputs[0]), [tuple(o) for o in outputs], len(inputs)


def output_count(model: Any) -> int:
    """How many outputs a loaded model (onnxruntime session or Keras model) has."""
    return len(_model_shapes(model)[1])


def check_model_matches_config(model: Any, config: Config, *, model_path: Path) -> None:
    """Raise :class:`ModelMismatchError`, listing every disagreement, unless ``model`` fits ``config``.

    Checked: the model card beside ``model_path`` (when there is one) against the config's class names (in
    order), label mode and image size; and, card or not, the model's input shape (S, S, 3), its first output
    (S, S, K+1), S = ``image_size``, K+1 = ``config.num_classes``, and its optional second output, the decoder
    features (h, w, C) on a grid that divides S.
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
        if "outputs" in card and len(card["outputs"]) != output_count(model):
            problems.append(f"{where} lists the outputs {card['outputs']} but the model file has "
                            f"{output_count(model)} (the card belongs to another model file: re-export)")

    in_shape, out_shapes, n_in = _model_shapes(model)
    n_out = len(out_shapes)
    out_shape = out_shapes[0] if out_shapes else []
    if n_in != 1 or n_out not in (1, 2):
        problems.append(f"the model has {n_in} inputs and {n_out} outputs; coco-seg expects one image input "
                        f"and the logits output, optionally followed by the decoder features "
                        f"(change config key 'model.path')")
    elif n_out == 2:
        features = out_shapes[1]
        if len(features) != 4 or any(d is not None and size % d for d in features[1:3]):
            problems.append(f"the model's second output (the decoder features) has shape {_show(features)}, "
                            f"expected (batch, h, w, C) with h and w dividing {size} (change config key "
                            f"'model.path')")
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


class ModelOutputs(NamedTuple):
    """What the configured model outputs: the names in order and the decoder features' channel count."""
    names: tuple[str, ...]
    features_channels: Optional[int]  # None when the model has no features output

    @property
    def has_features(self) -> bool:
        return FEATURES_OUTPUT in self.names


def configured_model_outputs(config: Config) -> ModelOutputs:
    """The outputs of the model named by ``model.path``, read from its model card, else from the file.

    With no model configured (on the Tensorleap platform the model is pushed separately) or a file that cannot be
    read here (its loader reports that later), the outputs of ``coco-seg export`` are assumed: segmentation, then
    decoder features with ``DEFAULT_FEATURES_CHANNELS`` channels.
    """
    exported = ModelOutputs((SEGMENTATION_OUTPUT, FEATURES_OUTPUT), DEFAULT_FEATURES_CHANNELS)
    path = config.model_path
    if path is None or not path.is_file():
        return exported
    try:
        card = read_model_card(path) or {}
    except ModelLoadError:
        card = {}
    if "outputs" in card and isinstance(card.get("features_channels"), int):
        names = tuple(card["outputs"])
        return ModelOutputs(names, card["features_channels"] if FEATURES_OUTPUT in names else None)
    try:
        model = load_model(path)
    except ModelLoadError:
        return exported
    _, shapes, _ = _model_shapes(model)
    if len(shapes) == 2 and len(shapes[1]) == 4 and isinstance(shapes[1][3], int):
        return ModelOutputs((SEGMENTATION_OUTPUT, FEATURES_OUTPUT), shapes[1][3])
    return ModelOutputs((SEGMENTATION_OUTPUT,), None)


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


def predict_outputs(model: Any, images: np.ndarray) -> list[np.ndarray]:
    """Run an onnxruntime session or a Keras model on (N, S, S, 3) float32 images → every output, float32, in
    output order: ``[logits (N, S, S, K)]`` or ``[logits, decoder features (N, h, w, C)]``."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a (N, S, S, 3) batch of images, got shape {images.shape}")
    if _is_onnx(model):
        outputs = model.run(None, {model.get_inputs()[0].name: images})
    else:
        import keras

        outputs = model(images, training=False)
        outputs = [keras.ops.convert_to_numpy(o) for o in (outputs if isinstance(outputs, (list, tuple))
                                                           else [outputs])]
    return [np.asarray(o, dtype=np.float32) for o in outputs]


def predict_logits(model: Any, images: np.ndarray) -> np.ndarray:
    """Run an onnxruntime session or a Keras model on (N, S, S, 3) float32 images → (N, S, S, K) float32 logits
    (the first output)."""
    return predict_outputs(model, images)[0]


def float32_inference_model(model: "keras.Model") -> "keras.Model":
    """``model`` itself when every layer computes in float32; else (a ``--mixed-precision`` checkpoint) the same
    architecture rebuilt with float32 layers and given its weights, which are float32 under mixed precision too.
    Inference, evaluation and the ONNX export then run in float32: onnxruntime's CPU kernels and the Tensorleap
    platform expect float32, and float16 activations would only add rounding."""
    text = model.to_json()
    if '"mixed_float16"' not in text and '"mixed_bfloat16"' not in text:
        return model
    text = text.replace('"mixed_float16"', '"float32"').replace('"mixed_bfloat16"', '"float32"')
    import keras

    rebuilt = keras.models.model_from_json(text)
    rebuilt.set_weights(model.get_weights())
    return rebuilt
