"""Shared fixtures: the generated sample dataset (always) and the real COCO sample (when ../shared has it)."""

from pathlib import Path
from typing import Any

import pytest

from _support import REAL_SAMPLE, REAL_SPLITS, data_tree, requires_real_sample


@pytest.fixture(scope="session")
def generated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coco_seg.sample_data import make_sample

    return make_sample(tmp_path_factory.mktemp("generated") / "coco", images=32, seed=0).out_dir


@pytest.fixture(scope="session", params=["generated", pytest.param("real", marks=requires_real_sample)])
def dataset(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Both datasets as config trees: the generated sample and the real COCO 2017 sample."""
    if request.param == "generated":
        return data_tree(request.getfixturevalue("generated_root"))
    return data_tree(REAL_SAMPLE, splits=REAL_SPLITS)
