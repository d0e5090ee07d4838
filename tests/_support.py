"""Helpers shared by the tests (a plain module: a top-level `tests` package from site-packages may shadow ours)."""

import os
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")  # code-loader telemetry stalls imports without network
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO_ROOT.parent / "shared" / "coco_sample"
# The real sample has one split (train2017); it serves as both training and validation in tests.
REAL_SPLITS = {
    "training": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
    "validation": {"annotations": "annotations/instances_train2017.json", "images": "train2017"},
}

requires_real_sample = pytest.mark.skipif(not REAL_SAMPLE.is_dir(),
                                          reason=f"real COCO sample not present at {REAL_SAMPLE} (CI has it)")


def write_config(folder: Path, tree: dict[str, Any], name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def data_tree(root: Path, *, splits: Optional[dict] = None, **extra: Any) -> dict[str, Any]:
    """A config tree for the dataset at ``root`` (2017 layout unless ``splits`` given)."""
    data: dict[str, Any] = {"root": str(root)}
    if splits is not None:
        data["splits"] = splits
    return {"data": data, **extra}
