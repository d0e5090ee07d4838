"""The integration's registered functions, read back by name from code-loader's registry.

Tensorleap's engine does not call ``leap_binder``'s module attributes: it calls what the decorators registered in
code-loader's one setup container (``code_loader.leap_binder.setup_container``: the preprocess functions, the
input and ground-truth encoders, the metadata, the metrics and the custom losses, each under its registered
name). :func:`load_registry` imports the integration once and returns exactly those callables, keyed by name, so
that offline work (``coco-seg analyze``) runs the engine's functions, pairs them by name (never by position) and
fails with the registered names listed when one it needs is missing.

The integration is the module ``leap_binder`` of the project folder (``integration_root``: by default the folder
holding ``coco_seg``, where ``leap.yaml`` names the entry file); it reads its config from ``$COCO_SEG_CONFIG``,
loaded once (:func:`coco_seg.config.get_config`).
"""

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from coco_seg.config import Config, get_config
from coco_seg.export import INPUT_NAME

__all__ = ["Registry", "load_registry", "DEFAULT_INTEGRATION_ROOT", "INTEGRATION_MODULE", "INPUT_NAME",
           "GROUND_TRUTH_NAME", "LOSS_NAME"]

DEFAULT_INTEGRATION_ROOT = Path(__file__).resolve().parent.parent
INTEGRATION_MODULE = "leap_binder"
GROUND_TRUTH_NAME = "mask"  # the names leap_binder registers its ground truth and its custom loss under
LOSS_NAME = "pixel_cross_entropy"


def _lookup(kind: str, functions: Mapping[str, Callable], name: str) -> Callable:
    try:
        return functions[name]
    except KeyError:
        raise KeyError(f"the integration registers no {kind} named {name!r}; registered {kind}s: "
                       f"{sorted(functions) or 'none'}") from None


@dataclass(frozen=True)
class Registry:
    """What the integration registered with code-loader, keyed by registered name."""

    config: Config
    preprocess: Callable[[], list]
    unlabeled_preprocess: Optional[Callable[[], Any]]
    inputs: Mapping[str, Callable]
    ground_truths: Mapping[str, Callable]
    metadata: Mapping[str, Callable]
    metrics: Mapping[str, Callable]
    losses: Mapping[str, Callable]

    def input(self, name: str) -> Callable:
        return _lookup("input", self.inputs, name)

    def ground_truth(self, name: str) -> Callable:
        return _lookup("ground truth", self.ground_truths, name)

    def metadata_function(self, name: str) -> Callable:
        return _lookup("metadata", self.metadata, name)

    def metric(self, name: str) -> Callable:
        return _lookup("metric", self.metrics, name)

    def loss(self, name: str) -> Callable:
        return _lookup("loss", self.losses, name)


def _by_name(handlers, name_of: Callable[[Any], str], *, kind: str) -> dict[str, Callable]:
    functions: dict[str, Callable] = {}
    for handler in handlers:
        name = name_of(handler)
        if name in functions:  # code-loader refuses most duplicates itself; a silent overwrite would pair wrongly
            raise ValueError(f"the integration registers two {kind}s named {name!r}")
        functions[name] = handler.function
    return functions


def load_registry(integration_root: Optional[Path] = None) -> Registry:
    """Import the integration (once per process: code-loader's registry is global) and read its registry."""
    root = str(Path(integration_root or DEFAULT_INTEGRATION_ROOT).resolve())
    module = sys.modules.get(INTEGRATION_MODULE)
    if module is None:
        if root not in sys.path:
            sys.path.insert(0, root)
        module = importlib.import_module(INTEGRATION_MODULE)
    elif Path(module.__file__).resolve().parent != Path(root):
        raise RuntimeError(f"{INTEGRATION_MODULE} is already imported from {module.__file__}, not from {root}: "
                           "code-loader's registry holds one integration per process")
    from code_loader import leap_binder as engine

    container = engine.setup_container
    if container.preprocess is None:
        raise RuntimeError(f"{module.__file__} registers no preprocess function")
    unlabeled = container.unlabeled_data_preprocess
    return Registry(
        config=get_config(),
        preprocess=container.preprocess.function,
        unlabeled_preprocess=None if unlabeled is None else unlabeled.function,
        inputs=_by_name(container.inputs, lambda h: h.name, kind="input"),
        ground_truths=_by_name(container.ground_truths, lambda h: h.name, kind="ground truth"),
        metadata=_by_name(container.metadata, lambda h: h.name, kind="metadata"),
        metrics=_by_name(container.metrics, lambda h: h.metric_handler_data.name, kind="metric"),
        losses=_by_name(container.custom_loss_handlers, lambda h: h.custom_loss_handler_data.name, kind="loss"),
    )
