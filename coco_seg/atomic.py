"""Atomic file writes: a temporary file beside the target, renamed over it, so a reader (or a crash) never sees
half a file. Every output of coco-seg — models, cards, reports, caches, analysis tables — goes through here."""

import json
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


def write_json_atomically(path: Path, payload: Any, *, indent: int | None = 2) -> None:
    text = json.dumps(payload, indent=indent, separators=None if indent else (",", ":"))
    write_atomically(path, lambda temp: temp.write_text(text + "\n"))
