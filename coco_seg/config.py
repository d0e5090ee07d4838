"""One typed configuration object, loaded once.

Defaults ship in ``default_config.yaml``; a user YAML named by ``COCO_SEG_CONFIG`` (or ``coco-seg --config``)
overrides any subset of keys. The file must be UTF-8 YAML whose top level is a mapping, with no key given twice; it
is read safely (plain data, no Python objects). The merged tree is validated against the defaults' shape: unknown
keys, wrong types, non-finite or out-of-range numbers and class names that are not COCO categories are rejected with
a ``ConfigError`` naming the file, the line and the dotted key.
"""

import copy
import functools
import logging
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from coco_seg.categories import CATEGORY_BY_NAME, SUPERCATEGORIES, category_names_of_supercategory

CONFIG_ENV_VAR = "COCO_SEG_CONFIG"
REPORTS_DIR_ENV_VAR = "COCO_SEG_REPORTS_DIR"  # where reports go when the config's reports_dir is null


def user_cache_dir() -> Path:
    """coco-seg's cache folder: ``~/.cache/coco-seg``; where no home folder can be determined (``HOME`` unset and
    no passwd entry, as in some containers) ``<temp dir>/coco-seg-<uid>-cache`` instead, with a warning."""
    try:
        return Path.home() / ".cache" / "coco-seg"
    except RuntimeError:  # pathlib: "Could not determine home directory"
        fallback = Path(tempfile.gettempdir()) / f"coco-seg-{os.getuid() if hasattr(os, 'getuid') else 0}-cache"
        _warn_no_home(str(fallback))
        return fallback


def _expand_user(path: Path) -> Path:
    """``path`` with a leading ``~`` expanded; a clear error where there is no home folder to expand it to."""
    try:
        return path.expanduser()
    except RuntimeError:
        raise ConfigError(f"{path} starts with ~, but there is no home folder (HOME unset, no passwd entry); give "
                          f"an absolute path") from None


@functools.lru_cache(maxsize=None)
def _warn_no_home(fallback: str) -> None:
    logging.getLogger(__name__).warning("no home folder (HOME unset, no passwd entry): coco-seg caches and reports "
                                        "go to %s", fallback)
DEFAULTS_PATH = Path(__file__).with_name("default_config.yaml")
SPLIT_NAMES = ("training", "validation", "unlabeled")
LABEL_MODES = ("category", "supercategory")
BAD_SAMPLE_POLICIES = ("error", "skip")
BACKGROUND = "background"
ONNX_SUFFIX = ".onnx"
KERAS_SUFFIXES = (".h5", ".keras")
MODEL_SUFFIXES = (ONNX_SUFFIX,) + KERAS_SUFFIXES  # what config key model.path may name
IMAGE_SIZE_MULTIPLE = 32  # the U-Net downsamples five times; any other size breaks the skip connections
# The config's ceiling on image_size (the model builder itself takes any multiple). Per-sample memory grows with the
# square of the size (image S*S*3, one-hot mask S*S*(K+1) float32, and every activation of the U-Net): 2048 is
# already ~1.3 GB of mask alone for the 80 COCO classes, and a typo such as 12800 would exhaust memory before
# producing any message.
MAX_IMAGE_SIZE = 2048
MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; anything this large is not one
# The ceiling on data.background_share. The preprocess keeps round(share * images with a class) background-only
# images, at most all of them, so every share >= (background-only images / images with a class) means "keep them
# all"; no COCO split has a million images, so 1e6 restricts nothing real, and it keeps share * count far from float
# overflow (1e300 or .inf would otherwise reach the preprocess as an OverflowError).
MAX_BACKGROUND_SHARE = 1_000_000


def is_valid_image_size(value: object) -> bool:
    """The one image-size rule (config, model builder): an int, a positive multiple of IMAGE_SIZE_MULTIPLE."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= IMAGE_SIZE_MULTIPLE
            and value % IMAGE_SIZE_MULTIPLE == 0)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the dotted key."""


@dataclass(frozen=True)
class SplitPaths:
    images: str
    annotations: Optional[str]  # None for the unlabeled split


@dataclass(frozen=True)
class TargetClass:
    """One class of the semantic mask: its name and the COCO categories painted with it."""

    name: str
    coco_names: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    data_root: Optional[Path]  # None = the generated sample dataset
    splits: dict[str, SplitPaths]  # "training", "validation" and, when configured, "unlabeled"
    background_share: float
    label_mode: str
    classes: tuple[str, ...]  # as configured (labels.classes)
    image_size: int
    sample_limit_per_split: Optional[int]
    on_bad_sample: str
    reports_dir_setting: Optional[Path]  # reports_dir as configured (resolved); None = environment or default
    model_path: Optional[Path]
    source: str  # where the overrides came from, for messages

    @functools.cached_property
    def target_classes(self) -> tuple[TargetClass, ...]:
        """Mask classes 1..K in config order (background, 0, is implicit)."""
        if self.label_mode == "category":
            return tuple(TargetClass(name, (name,)) for name in self.classes)
        supercategories = dict.fromkeys(
            name if name in SUPERCATEGORIES else CATEGORY_BY_NAME[name].supercategory for name in self.classes)
        return tuple(TargetClass(s, category_names_of_supercategory(s)) for s in supercategories)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the mask values / model output channels, background first."""
        return (BACKGROUND,) + tuple(t.name for t in self.target_classes)

    @property
    def num_classes(self) -> int:
        """K + 1: the number of model output channels."""
        return len(self.class_names)

    @property
    def reports_dir(self) -> Path:
        """Where the bad-sample reports go: ``reports_dir``, else ``$COCO_SEG_REPORTS_DIR``, else
        ~/.cache/coco-seg/reports. The environment is read on each use so that tests can point it elsewhere."""
        if self.reports_dir_setting is not None:
            return self.reports_dir_setting
        configured = os.environ.get(REPORTS_DIR_ENV_VAR)
        return _expand_user(Path(configured)) if configured else user_cache_dir() / "reports"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only, no Python objects) that refuses a key given twice in one mapping.

    PyYAML keeps the last of two equal keys, so a second ``data:`` section silently drops the first. Explicit keys
    are checked; keys brought in by a YAML merge key (``<<: *anchor``) keep PyYAML's meaning: an explicit key
    overrides a merged one. ``_paths`` maps each mapping node to its dotted key, for the message.
    """

    def __init__(self, stream: str, name: str) -> None:
        super().__init__(stream)
        self.name = name  # marks (syntax errors, duplicates) name the file, not "<unicode string>"
        self._paths: dict[int, str] = {}
        self.key_lines: dict[str, int] = {}

    def construct_document(self, node: yaml.Node) -> Any:
        self._note_paths(node, "")
        return super().construct_document(node)

    def _note_paths(self, node: yaml.Node, path: str) -> None:
        if id(node) in self._paths:  # an alias: the node was seen under its anchor (also stops recursive anchors)
            return
        self._paths[id(node)] = path
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._note_paths(value_node, path)
                    continue
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                dotted = f"{path}.{name}" if path else str(name)
                self.key_lines.setdefault(dotted, key_node.start_mark.line + 1)
                self._note_paths(value_node, dotted)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._note_paths(item, f"{path}[{index}]")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeConstructor refuses an unhashable key with its own message
                line = key_node.start_mark.line + 1
                if key in first_line:
                    parent = self._paths.get(id(node), "")
                    dotted = f"{parent}.{key}" if parent else str(key)
                    raise _DuplicateKey(f"duplicate key {dotted!r} at line {line} (first at line {first_line[key]}): "
                                        f"YAML would keep only the last one; remove or merge one of them")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-32 LE starts like UTF-16 LE


def _decode(data: bytes, path: Path, what: str) -> str:
    """The file's text: UTF-8, with or without a UTF-8 byte-order mark; anything else is refused."""
    must = f"{what} {path} must be UTF-8 text (a UTF-8 byte-order mark is allowed)"
    if data.startswith(_UTF16_32_BOMS):
        raise ConfigError(f"{must}; it starts with a UTF-16/UTF-32 byte-order mark: save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{must}; byte 0x{data[error.start]:02x} at line {line} is not UTF-8 (Latin-1 or another "
                          f"legacy encoding?): save it as UTF-8") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError(f"{must}; it holds NUL bytes (from line {line}), as UTF-16 or UTF-32 text without a "
                          f"byte-order mark does: save it as UTF-8")
    return text


def _read_yaml(path: Path, *, what: str) -> dict[str, Any]:
    return _load_yaml(path, what=what)[0]


def _load_yaml(path: Path, *, what: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in the YAML file at ``path`` and the line of each dotted key.

    Refused, naming the file: unreadable, not UTF-8, not valid YAML (with its line), a key given twice (with both
    lines), a YAML tag for a Python object, no keys at all, or a top level that is not a mapping.
    """
    try:
        # opened without blocking and checked before reading: a FIFO would wait for a writer forever, a device such
        # as /dev/zero would be read until memory runs out
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise ConfigError(f"{what} {path} is not a regular file")
            with os.fdopen(os.dup(handle), "rb") as stream:
                data = stream.read(MAX_CONFIG_BYTES + 1)
        finally:
            os.close(handle)
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES // 2 ** 20} MiB: not a config file")
    loader = _UniqueKeyLoader(_decode(data, path, what), name=str(path))
    try:
        tree = loader.get_single_data()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if isinstance(error, _DuplicateKey):
            raise ConfigError(f"{what} {path}: {error}") from None
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {error}") from None
    finally:
        loader.dispose()
    if tree is None:
        raise ConfigError(f"{what} {path} holds no keys (it is empty, only comments, or null): set at least one "
                          f"key, or name no config file to use the defaults")
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys at its top level (key: value lines), got a "
                          f"{type(tree).__name__}: {str(tree)[:80]!r}")
    return tree, loader.key_lines


def _merge(defaults: dict[str, Any], overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Overlay ``overrides`` on ``defaults``; a key the defaults do not know is an error.

    ``data.splits.unlabeled`` is the one optional subtree the defaults leave out.
    """
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {dotted!r} must be a string")
        if key not in defaults:
            if dotted == "data.splits.unlabeled":
                merged[key] = value
                continue
            known = ", ".join(f"{prefix}{k}" for k in defaults)
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {known}")
        if isinstance(defaults[key], dict):
            if value is None and dotted == "data.splits.validation":
                raise ConfigError(f"config key {dotted!r} cannot be null: a validation split is required")
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be a mapping, got {type(value).__name__}")
            merged[key] = _merge(defaults[key], value, prefix=f"{dotted}.")
        else:
            merged[key] = value
    return merged


def _expect(value: Any, key: str, types: tuple[type, ...], *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    # bool is an int subclass; a YAML `true` must not pass as an image size.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
        raise ConfigError(f"config key {key!r} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def _text_hint(value: Any) -> str:
    """For a number YAML read as text: why, and how to write it."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (" — YAML read it as text: write a number unquoted, with a dot and a signed exponent if any "
                "(1.0e-3, not 1e-3)")
    return ""


def _number(value: Any, key: str, *, integer: bool, nullable: bool = False) -> Any:
    """A finite int (``integer``) or int/float; refuses booleans, text, ``.inf``/``.nan`` and, for an int key, a
    float such as 128.0, each with a message naming the key and the value."""
    if value is None and nullable:
        return None
    kind = "an integer" if integer else "a number"
    kind += " or null" if nullable else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} must be a finite {'integer' if integer else 'number'}, got "
                          f"{value!r} (YAML "
                          f"{'.nan' if math.isnan(value) else '-.inf' if value < 0 else '.inf'})")
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(f"config key {key!r} must be {kind}, got {value!r} ({type(value).__name__})"
                          f"{_text_hint(value)}")
    return value


def _path_setting(value: Any, key: str) -> Optional[str]:
    """A path key's text (or null): a non-blank string without NUL characters."""
    value = _expect(value, key, (str,), nullable=True)
    if value is not None and not value.strip():
        raise ConfigError(f"config key {key!r} must be a path or null, got {value!r} (write '.' for the "
                          f"config file's folder)")
    if value is not None and "\0" in value:
        raise ConfigError(f"config key {key!r} must not contain a NUL character, got {value!r}")
    return value


def _split_paths(tree: dict[str, Any], name: str) -> SplitPaths:
    key = f"data.splits.{name}"
    allowed = {"images"} if name == "unlabeled" else {"images", "annotations"}
    unknown = set(tree) - allowed
    if unknown:
        raise ConfigError(f"unknown config key {key}.{sorted(unknown)[0]!r}; {key} takes {', '.join(sorted(allowed))}")
    images = _expect(tree.get("images"), f"{key}.images", (str,))
    annotations = None if name == "unlabeled" else _expect(tree.get("annotations"), f"{key}.annotations", (str,))
    return SplitPaths(images=images, annotations=annotations)


def _validate_classes(classes: Any, mode: str) -> tuple[str, ...]:
    key = "labels.classes"
    if not isinstance(classes, list) or not classes:
        raise ConfigError(f"config key {key!r} must be a non-empty list of COCO category names, got {classes!r}")
    valid = set(CATEGORY_BY_NAME) | (set(SUPERCATEGORIES) if mode == "supercategory" else set())
    for name in classes:
        if not isinstance(name, str) or name not in valid:
            listed = ", ".join(sorted(valid))
            raise ConfigError(f"config key {key!r}: {name!r} is not a COCO "
                              f"{'category or supercategory' if mode == 'supercategory' else 'category'}; "
                              f"valid names: {listed}")
        if name == BACKGROUND:
            raise ConfigError(f"config key {key!r}: 'background' is implicit (mask value 0); do not list it")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"config key {key!r} lists a class twice: {classes!r}")
    return tuple(classes)


def _resolve_path(value: Optional[str], base: Path) -> Optional[Path]:
    if value is None:
        return None
    path = _expand_user(Path(value))
    return path if path.is_absolute() else (base / path).resolve()


_KEY_IN_MESSAGE = re.compile(r"config key '([^']+)'")  # every check's message names its key this way


def load_config(path: Optional[os.PathLike] = None) -> Config:
    """Load defaults, overlay the YAML at ``path`` (or ``$COCO_SEG_CONFIG``), validate and return the config.

    Relative ``data.root``, ``reports_dir`` and ``model.path`` are resolved against the directory of the YAML that
    set them. A refused value's message starts with the file and, when the file sets that key, its line.
    """
    defaults = _read_yaml(DEFAULTS_PATH, what="default config")
    if path is None and os.environ.get(CONFIG_ENV_VAR):
        path = os.environ[CONFIG_ENV_VAR]
    if path is None:
        return _build(defaults, Path.cwd(), "defaults")
    user_path = _expand_user(Path(path)).resolve()
    overrides, key_lines = _load_yaml(user_path, what="config file")
    try:
        return _build(_merge(defaults, overrides), user_path.parent, str(user_path))
    except ConfigError as error:
        found = _KEY_IN_MESSAGE.search(str(error))
        line = key_lines.get(found.group(1)) if found else None
        raise ConfigError(f"config file {user_path}{f', line {line}' if line else ''}: {error}") from None


def _build(tree: dict[str, Any], base: Path, source: str) -> Config:
    """Validate the merged tree; relative paths resolve against ``base``."""
    data = tree["data"]
    labels = tree["labels"]
    mode = _expect(labels["mode"], "labels.mode", (str,))
    if mode not in LABEL_MODES:
        raise ConfigError(f"config key 'labels.mode' must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    image_size = _number(tree["image_size"], "image_size", integer=True)
    if not is_valid_image_size(image_size) or image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"config key 'image_size' must be a positive multiple of {IMAGE_SIZE_MULTIPLE}, at most "
                          f"{MAX_IMAGE_SIZE}, got {image_size}")
    limit = _number(tree["sample_limit_per_split"], "sample_limit_per_split", integer=True, nullable=True)
    if limit is not None and limit < 1:
        raise ConfigError(f"config key 'sample_limit_per_split' must be null (all samples) or >= 1, got {limit}")
    share = _number(data["background_share"], "data.background_share", integer=False)
    if not 0 <= share <= MAX_BACKGROUND_SHARE:
        raise ConfigError(f"config key 'data.background_share' must be between 0 and {MAX_BACKGROUND_SHARE:,} "
                          f"(background-only images per image with a class; a share above their ratio already keeps "
                          f"them all), got {share!r}")
    policy = _expect(tree["on_bad_sample"], "on_bad_sample", (str,))
    if policy not in BAD_SAMPLE_POLICIES:
        raise ConfigError(f"config key 'on_bad_sample' must be one of {', '.join(BAD_SAMPLE_POLICIES)}, got {policy!r}")

    reports_dir = _path_setting(tree["reports_dir"], "reports_dir")

    splits_tree = _expect(data["splits"], "data.splits", (dict,))
    splits = {}
    for name in SPLIT_NAMES:
        if splits_tree.get(name) is None:
            if name == "unlabeled":
                continue
            raise ConfigError(f"config key 'data.splits.{name}' is required")
        splits[name] = _split_paths(_expect(splits_tree[name], f"data.splits.{name}", (dict,)), name)

    root = _path_setting(data["root"], "data.root")
    model_tree = _expect(tree["model"], "model", (dict,))
    model_path = _path_setting(model_tree["path"], "model.path")
    if model_path is not None and Path(model_path).suffix.lower() not in MODEL_SUFFIXES:
        raise ConfigError(f"config key 'model.path' must name a .onnx, .h5 or .keras file, got {model_path!r}")
    return Config(
        data_root=_resolve_path(root, base),
        splits=splits,
        background_share=float(share),
        label_mode=mode,
        classes=_validate_classes(labels["classes"], mode),
        image_size=image_size,
        sample_limit_per_split=limit,
        on_bad_sample=policy,
        reports_dir_setting=_resolve_path(reports_dir, base),
        model_path=_resolve_path(model_path, base),
        source=source,
    )


@functools.cache
def get_config() -> Config:
    """The process-wide config, loaded once from ``$COCO_SEG_CONFIG`` or the defaults."""
    return load_config()
