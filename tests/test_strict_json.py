"""Every JSON coco-seg writes through coco_seg.atomic is strict JSON: undefined figures are null, never NaN."""

import json
import math

import numpy as np
import pytest

from coco_seg.atomic import strict_json, write_json_atomically


def strict_load(text: str):
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_at_any_depth(tmp_path):
    payload = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": {"e": float("nan")}}, "f": "NaN",
               "g": np.float64("nan"), "h": 3, "i": None, "j": True}
    path = tmp_path / "out.json"
    write_json_atomically(path, payload)
    assert strict_load(path.read_text()) == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": {"e": None}},
                                             "f": "NaN", "g": None, "h": 3, "i": None, "j": True}


def test_strict_json_keeps_finite_values_exactly():
    values = {"tiny": 5e-324, "huge": 1.7976931348623157e308, "negative zero": -0.0, "int": 2 ** 70}
    assert strict_json(values) == values
    assert math.copysign(1, strict_json(values)["negative zero"]) == -1


def test_a_value_json_cannot_hold_is_refused_not_written(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(TypeError, match="a object cannot be written as JSON"):
        write_json_atomically(path, {"thing": object()})
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary left behind either


def test_numpy_pandas_sets_and_keys_become_plain_json(tmp_path):
    """The one sanitiser: what the analysis hands it (numpy scalars and arrays, pandas' missing values, sets,
    integer keys) comes out as the plain value, NaN inside arrays as null."""
    import pandas as pd

    payload = {1: np.float32(1.5), "int": np.int64(-3), "uint": np.uint8(200), "bool": np.bool_(False),
               "array": np.array([[1.0, np.nan], [np.inf, 2.0]]), "ints": np.arange(3), "zero_d": np.array(2.5),
               "set": {7}, "na": pd.NA, "nat": pd.NaT, "nan32": np.float32("nan"), "tuple": (np.int32(1), None)}
    path = tmp_path / "out.json"
    write_json_atomically(path, payload)
    assert strict_load(path.read_text()) == {
        "1": 1.5, "int": -3, "uint": 200, "bool": False, "array": [[1.0, None], [None, 2.0]], "ints": [0, 1, 2],
        "zero_d": 2.5, "set": [7], "na": None, "nat": None, "nan32": None, "tuple": [1, None]}
    assert type(strict_json(np.int64(2))) is int and type(strict_json(np.float16(0.5))) is float
    assert strict_json({"when": pd.Timestamp("2020-01-02")}, fallback=str) == {"when": "2020-01-02 00:00:00"}


@pytest.mark.parametrize(("mean_iou", "best", "expected"), [
    (0.5, None, True),
    (math.nan, None, True),  # the first epoch is the best so far, whatever it scored
    (0.5, {"mean_iou": 0.4}, True),
    (0.4, {"mean_iou": 0.4}, False),  # a tie keeps the earlier epoch
    (math.nan, {"mean_iou": 0.4}, False),
    (0.1, {"mean_iou": None}, True),  # NaN written as null, read back by --resume
    (0.1, {"mean_iou": math.nan}, True),
    (math.nan, {"mean_iou": None}, False),
])
def test_best_epoch_choice_with_undefined_validation_figures(mean_iou, best, expected):
    from coco_seg.training import _improves

    assert _improves(mean_iou, best) is expected
