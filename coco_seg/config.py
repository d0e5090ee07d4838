"""One typed configuration object, loaded once.

Defaults ship in ``default_config.yaml``; a user YAML named by ``COCO_SEG_CONFIG`` (or ``coco-seg --config``)
overrides any subset of keys. The merged tree is validated against the defaults' shape: unknown keys, wrong types
and class names that are not COCO categories are rejected with an error naming the dotted key.
"""

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from coco_seg.categories import CATEGORY_BY_NAME, SUPERCATEGORIES, category_names_of_supercategory

CONFIG_ENV_VAR = "COCO_SEG_CONFIG"
REPORTS_DIR_ENV_VAR = "COCO_SEG_REPORTS_DIR"  # where reports go when the config's reports_dir is null
DEFAULT_REPORTS_DIR = Path("~/.cache/coco-seg/reports")
DEFAULTS_PATH = Path(__file__).with_name("default_config.yaml")
SPLIT_NAMES = ("training", "validation", "unlabeled")
LABEL_MODES = ("category", "supercategory")
BAD_SAMPLE_POLICIES = ("error", "skip")
BACKGROUND = "background"
ONNX_SUFFIX = ".onnx"
KERAS_SUFFIXES = (".h5", ".keras")
MODEL_SUFFIXES = (ONNX_SUFFIX,) + KERAS_SUFFIXES  # what config key model.path may name
IMAGE_SIZE_MULTIPLE = 32  # the U-Net downsamples five times; any other size breaks the skip connections


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
        return Path(os.environ.get(REPORTS_DIR_ENV_VAR) or DEFAULT_REPORTS_DIR).expanduser()


def _read_yaml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, got {type(tree).__name__}")
    return tree


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
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: Optional[os.PathLike] = None) -> Config:
    """Load defaults, overlay the YAML at ``path`` (or ``$COCO_SEG_CONFIG``), validate and return the config.

    Relative ``data.root``, ``reports_dir`` and ``model.path`` are resolved against the directory of the YAML that
    set them.
    """
    defaults = _read_yaml(DEFAULTS_PATH, what="default config")
    if path is None and os.environ.get(CONFIG_ENV_VAR):
        path = os.environ[CONFIG_ENV_VAR]
    if path is not None:
        user_path = Path(path).expanduser().resolve()
        tree = _merge(defaults, _read_yaml(user_path, what="config file"))
        base, source = user_path.parent, str(user_path)
    else:
        tree, base, source = defaults, Path.cwd(), "defaults"

    data = tree["data"]
    labels = tree["labels"]
    mode = _expect(labels["mode"], "labels.mode", (str,))
    if mode not in LABEL_MODES:
        raise ConfigError(f"config key 'labels.mode' must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    image_size = _expect(tree["image_size"], "image_size", (int,))
    if not is_valid_image_size(image_size):
        raise ConfigError(f"config key 'image_size' must be a positive multiple of {IMAGE_SIZE_MULTIPLE}, "
                          f"got {image_size}")
    limit = _expect(tree["sample_limit_per_split"], "sample_limit_per_split", (int,), nullable=True)
    if limit is not None and limit < 1:
        raise ConfigError(f"config key 'sample_limit_per_split' must be null (all samples) or >= 1, got {limit}")
    share = _expect(data["background_share"], "data.background_share", (int, float))
    if not 0 <= share:
        raise ConfigError(f"config key 'data.background_share' must be >= 0, got {share}")
    policy = _expect(tree["on_bad_sample"], "on_bad_sample", (str,))
    if policy not in BAD_SAMPLE_POLICIES:
        raise ConfigError(f"config key 'on_bad_sample' must be one of {', '.join(BAD_SAMPLE_POLICIES)}, got {policy!r}")

    reports_dir = _expect(tree["reports_dir"], "reports_dir", (str,), nullable=True)
    if reports_dir is not None and not reports_dir.strip():
        raise ConfigError("config key 'reports_dir' must be a folder path or null (the default folder), got ''")

    splits_tree = _expect(data["splits"], "data.splits", (dict,))
    splits = {}
    for name in SPLIT_NAMES:
        if splits_tree.get(name) is None:
            if name == "unlabeled":
                continue
            raise ConfigError(f"config key 'data.splits.{name}' is required")
        splits[name] = _split_paths(_expect(splits_tree[name], f"data.splits.{name}", (dict,)), name)

    root = _expect(data["root"], "data.root", (str,), nullable=True)
    model_tree = _expect(tree["model"], "model", (dict,))
    model_path = _expect(model_tree["path"], "model.path", (str,), nullable=True)
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
