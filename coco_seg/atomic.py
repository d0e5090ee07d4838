"""Atomic file writes: a temporary file beside the target, renamed over it, so a reader (or a crash) never sees
half a file. Every output of coco-seg — models, cards, reports, caches, analysis tables — goes through here."""

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary path beside ``path`` (same suffix, so format-sniffing writers such as Keras
    behave), make it world-readable like any other output (mkstemp creates 0600), then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±Inf) replaced by None, through dicts, lists and tuples: what
    strict JSON parsers (jq, JavaScript's JSON.parse, Python's ``parse_constant`` checks) accept. An undefined figure
    (a class that never occurs, a run whose every sample failed) is ``null``, never the non-JSON token ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_json_atomically(path: Path, payload: Any, *, indent: int | None = 2) -> None:
    """``payload`` as strict JSON (see :func:`strict_json`), written atomically."""
    text = json.dumps(strict_json(payload), indent=indent, separators=None if indent else (",", ":"), allow_nan=False)
    write_atomically(path, lambda temp: temp.write_text(text + "\n"))
