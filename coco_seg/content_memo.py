"""A small, bounded, thread-safe memo of values derived from numpy arrays, keyed by the arrays' content.

The Tensorleap engine calls every metric, the loss and every visualizer of a sample separately, each with its own
copy of the same arrays. Keyed by content rather than by object, those calls share one computation of what they
have in common (the validated class planes, the confusion counts, the per-pixel loss, the displayed image).
"""

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["ContentMemo", "MemoEntry", "read_only"]

Key = tuple  # ((dtype string, shape, bytes), ...) of the input arrays


def read_only(array: np.ndarray) -> np.ndarray:
    """``array`` marked read-only (in place), so a memoised value cannot be changed by mistake; returns it."""
    array.flags.writeable = False
    return array


class MemoEntry:
    """The values derived from one input, by name (any hashable). Found once per call with
    :meth:`ContentMemo.entry`, then read without comparing the input again."""

    __slots__ = ("key", "_memo", "_values")

    def __init__(self, key: Key | None, memo: "ContentMemo"):
        self.key = key
        self._memo = memo
        self._values: dict[Hashable, Any] = {}

    def get(self, name: Hashable, compute: Callable[[], Any]) -> Any:
        """The value ``name``: the stored one, else ``compute()``'s, stored. An exception from ``compute``
        propagates and stores nothing. Of two threads computing the same name, the first stored value wins and
        both return it."""
        with self._memo._lock:
            if name in self._values:
                return self._values[name]
        value = compute()
        with self._memo._lock:
            if name not in self._values and len(self._values) >= self._memo._values_per_entry:
                del self._values[next(iter(self._values))]  # the oldest value
            return self._values.setdefault(name, value)

    def stored(self, name: Hashable) -> Any:
        """The value ``name`` if it is stored, else None (nothing is computed)."""
        with self._memo._lock:
            return self._values.get(name)

    def __len__(self) -> int:
        with self._memo._lock:
            return len(self._values)


class ContentMemo:
    """Values derived from the last ``entries`` distinct inputs, each input a tuple of numpy arrays.

    An input's key holds each array's dtype, shape and a copy of its bytes, so equal content in another object
    finds the same entry, any changed byte does not, and mutating the caller's arrays later cannot make a stale entry
    match. Bytes, not values, are compared: NaN payloads and -0 are told apart, which can only cause a miss, never a
    wrong hit. Memory stays bounded: ``entries`` inputs (least recently used dropped first), ``values_per_entry``
    values each (oldest dropped first); an input larger than ``max_bytes`` in all gets an entry of its own that is
    not stored (its values are shared only by whoever holds that entry).

    Stored values are shared between callers, so they must never be mutated: store read-only arrays
    (:func:`read_only`) and hand callers copies or new arrays derived from them.

    Thread-safe: one lock guards the entries and their values; computations run outside it. After a fork the
    child starts empty.
    """

    def __init__(self, *, entries: int = 2, values_per_entry: int = 8, max_bytes: int = 1 << 22):
        if entries < 1 or values_per_entry < 1:
            raise ValueError(f"entries and values_per_entry must be >= 1; got {entries} and {values_per_entry}")
        self._max_entries = entries
        self._values_per_entry = values_per_entry
        self._max_bytes = max_bytes
        self._entries: list[MemoEntry] = []  # most recently used first
        self._lock = threading.Lock()
        reference = weakref.ref(self)
        # a lock held by another thread at fork time would stay held forever in the child
        os.register_at_fork(after_in_child=lambda: (memo := reference()) is not None and memo._reset())

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._entries = []

    def __len__(self) -> int:
        """Number of inputs currently stored."""
        with self._lock:
            return len(self._entries)

    def key(self, *arrays: np.ndarray) -> Key | None:
        """The content key of ``arrays`` (numpy arrays, any layout); None when they are not to be stored (larger
        than ``max_bytes`` in all, or holding Python objects, whose bytes are pointers)."""
        size = 0
        for array in arrays:
            size += array.nbytes
            if array.dtype.hasobject:
                return None
        if size > self._max_bytes:
            return None
        return tuple([(array.dtype.str, array.shape, array.tobytes()) for array in arrays])

    def entry(self, key: Key | None) -> MemoEntry:
        """The entry of the input with ``key`` (from :meth:`key`, or a slice of a longer key): the stored one, made
        the most recently used, else a new one, stored (key None: a new entry, never stored)."""
        if key is None:
            return MemoEntry(None, self)
        with self._lock:
            for index, entry in enumerate(self._entries):
                if entry.key == key:  # dtype, shape, then the bytes (memcmp, which stops at the first difference)
                    if index:
                        self._entries.insert(0, self._entries.pop(index))
                    return entry
            entry = MemoEntry(key, self)
            self._entries.insert(0, entry)
            del self._entries[self._max_entries:]
            return entry

    def find(self, part: tuple, *, position: int) -> MemoEntry | None:
        """The most recently used stored entry whose input has the array ``part`` (one item of a :meth:`key`) at
        ``position``, or None; stores and reorders nothing. For one array of an input of several (the ground truth
        of a (ground truth, prediction) pair, say)."""
        with self._lock:
            for entry in self._entries:
                if len(entry.key) > position and entry.key[position] == part:
                    return entry
        return None

    def get(self, key: Key | None, name: Hashable, compute: Callable[[], Any]) -> Any:
        """``self.entry(key).get(name, compute)``: one value of one input."""
        return self.entry(key).get(name, compute)

    def clear(self) -> None:
        """Forget every stored input."""
        with self._lock:
            self._entries = []
