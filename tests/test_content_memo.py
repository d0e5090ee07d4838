"""coco_seg.content_memo: content keys, bounds, isolation from the caller's arrays, thread safety."""

import threading

import numpy as np
import pytest

from coco_seg.content_memo import ContentMemo, read_only


class Counter:
    """A compute function that counts its calls and returns a value derived from ``array``."""

    def __init__(self):
        self.calls = 0

    def __call__(self, array):
        def compute():
            self.calls += 1
            return read_only(array.astype(np.float64) * 2)
        return compute


def test_equal_content_in_another_object_hits():
    memo, compute = ContentMemo(), Counter()
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    first = memo.get(memo.key(a), "double", compute(a))
    second = memo.get(memo.key(a.copy()), "double", compute(a.copy()))
    non_contiguous = np.asfortranarray(a)  # same values, other layout: same key
    third = memo.get(memo.key(non_contiguous), "double", compute(non_contiguous))
    assert compute.calls == 1 and second is first and third is first
    assert not first.flags.writeable


def test_changed_content_dtype_or_shape_misses():
    memo, compute = ContentMemo(entries=8), Counter()
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    memo.get(memo.key(a), "double", compute(a))
    changed = a.copy()
    changed[2, 3] = 100
    for other in (changed, a.reshape(4, 3), a.view(np.int16), a.astype(np.float32), a[:2]):
        memo.get(memo.key(other), "double", compute(other))
    assert compute.calls == 6


def test_negative_zero_and_nan_payloads_are_other_content():
    memo = ContentMemo()
    assert memo.key(np.array([0.0], np.float32)) != memo.key(np.array([-0.0], np.float32))
    nan = np.array([np.nan], np.float32)
    assert memo.key(nan) == memo.key(nan.copy())


def test_mutating_the_callers_array_after_storing_cannot_give_a_stale_hit():
    memo, compute = ContentMemo(), Counter()
    a = np.ones((4, 4), np.float32)
    memo.get(memo.key(a), "double", compute(a))
    a[0, 0] = 5  # the stored key is a copy of the old bytes
    value = memo.get(memo.key(a), "double", compute(a))
    assert compute.calls == 2 and value[0, 0] == 10


def test_values_of_one_input_are_kept_by_name():
    memo = ContentMemo()
    key = memo.key(np.zeros(3))
    assert memo.get(key, "a", lambda: 1) == 1
    assert memo.get(key, "b", lambda: 2) == 2
    assert memo.get(key, "a", lambda: pytest.fail("recomputed")) == 1
    assert memo.get(key, ("b", 1e-7), lambda: 3) == 3  # any hashable name
    assert len(memo) == 1


def test_entries_are_bounded_least_recently_used_first():
    memo = ContentMemo(entries=2)
    keys = [memo.key(np.full(3, i)) for i in range(3)]
    memo.get(keys[0], "v", lambda: 0)
    memo.get(keys[1], "v", lambda: 1)
    memo.get(keys[0], "v", lambda: pytest.fail("evicted too early"))  # 0 is now the most recently used
    memo.get(keys[2], "v", lambda: 2)  # drops 1
    assert len(memo) == 2
    assert memo.get(keys[0], "v", lambda: pytest.fail("evicted")) == 0
    assert memo.get(keys[1], "v", lambda: "again") == "again"
    for i in range(100):
        memo.get(memo.key(np.full(3, 10 + i)), "v", lambda: i)
    assert len(memo) == 2


def test_values_per_entry_are_bounded():
    memo = ContentMemo(values_per_entry=2)
    key = memo.key(np.zeros(3))
    for name in range(50):
        memo.get(key, name, lambda: name)
    assert memo.get(key, 48, lambda: "recomputed") == 48 and memo.get(key, 49, lambda: "recomputed") == 49
    assert memo.get(key, 0, lambda: "recomputed") == "recomputed"
    assert len(memo.entry(key)) == 2


def test_large_or_object_inputs_are_not_stored():
    memo = ContentMemo(max_bytes=100)
    big = np.zeros(26, np.float32)  # 104 bytes
    assert memo.key(big) is None and memo.key(np.zeros(25, np.float32)) is not None
    assert memo.key(np.array([object()])) is None
    calls = []
    for _ in range(3):
        memo.get(None, "v", lambda: calls.append(1))
    assert len(calls) == 3 and len(memo) == 0
    detached = memo.entry(None)  # shares values only with whoever holds it
    assert detached.get("v", lambda: 1) == 1 and detached.get("v", lambda: 2) == 1 and len(memo) == 0


def test_an_entry_found_once_serves_later_values_without_a_new_lookup():
    memo = ContentMemo(entries=1)
    first = memo.entry(memo.key(np.zeros(3)))
    assert memo.entry(memo.key(np.zeros(3))) is first
    first.get("v", lambda: 1)
    memo.entry(memo.key(np.ones(3)))  # evicts the first input
    assert first.get("v", lambda: 2) == 1 and first.get("w", lambda: 3) == 3  # still usable, bounded, not stored
    assert memo.get(memo.key(np.zeros(3)), "v", lambda: "recomputed") == "recomputed"


def test_a_failing_computation_stores_no_value():
    memo = ContentMemo()
    key = memo.key(np.zeros(3))

    def fail():
        raise ValueError("bad input")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad input"):
            memo.get(key, "v", fail)
    assert len(memo.entry(key)) == 0
    assert memo.get(key, "v", lambda: 1) == 1


def test_clear_and_argument_checks():
    memo = ContentMemo()
    memo.get(memo.key(np.zeros(3)), "v", lambda: 1)
    memo.clear()
    assert len(memo) == 0
    with pytest.raises(ValueError, match="entries"):
        ContentMemo(entries=0)
    with pytest.raises(ValueError, match="values_per_entry"):
        ContentMemo(values_per_entry=0)


def test_concurrent_use_gives_each_caller_its_inputs_value_and_stays_bounded():
    memo = ContentMemo(entries=2)
    inputs = [np.full((64, 64), i, np.float32) for i in range(6)]
    errors = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            i = int(rng.integers(len(inputs)))
            array = inputs[i].copy()
            value = memo.get(memo.key(array), "sum", lambda: float(array.sum()))
            if value != 64 * 64 * i:
                errors.append((i, value))
            if len(memo) > 2:
                errors.append(("size", len(memo)))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(memo) <= 2


def test_find_an_input_by_one_of_its_arrays_and_peek_at_stored_values():
    memo = ContentMemo(entries=2)
    gt, pred = np.zeros((2, 2), np.float16), np.ones((2, 2), np.float16)
    entry = memo.entry(memo.key(gt, pred))
    assert entry.stored("pair") is None  # nothing computed by peeking
    entry.get("pair", lambda: "validated")
    assert memo.find(memo.key(gt.copy())[0], position=0) is entry
    assert memo.find(memo.key(pred)[0], position=1) is entry
    assert memo.find(memo.key(pred)[0], position=0) is None and memo.find(memo.key(gt)[0], position=2) is None
    assert entry.stored("pair") == "validated" and entry.stored("other") is None
    assert len(memo) == 1  # finding stores nothing
