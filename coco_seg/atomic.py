"""Atomic file writes: a temporary file beside the target, renamed over it, so a reader (or a crash) never sees
half a file. Every output of coco-seg — models, cards, reports, caches, analysis tables — goes through here."""

import glob
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
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
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        if error.filename is None:  # some writers (pyarrow, h5py) name no file: the error names the target
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def strict_json(value: Any, *, fallback: Callable[[Any], Any] | None = None) -> Any:
    """``value`` as plain JSON types, the one sanitiser every JSON artefact goes through: every non-finite float
    (NaN, ±Inf) and every missing value (None, ``pd.NA``, ``NaT``) becomes None, numpy scalars and arrays become
    Python numbers and lists, sets and tuples lists, mapping keys strings; anything else goes through ``fallback``
    (the report passes ``str``) or, without one, is a TypeError (as ``json.dumps`` would raise). That is what
    strict JSON parsers (jq, JavaScript's JSON.parse, Python's ``parse_constant`` checks) accept: an undefined
    figure (a class that never occurs, a run whose every sample failed) is ``null``, never the token ``NaN``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:
        kind = getattr(getattr(value, "dtype", None), "kind", None)
        if kind == "b":
            return bool(value)
        if isinstance(value, int) or kind in ("i", "u"):
            return int(value)
        if isinstance(value, float) or kind == "f":
            number = float(value)
            return number if math.isfinite(number) else None
    if isinstance(value, dict) or hasattr(value, "items") and callable(value.items):
        return {str(key): strict_json(item, fallback=fallback) for key, item in value.items()}
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy arrays
        return strict_json(value.tolist(), fallback=fallback)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [strict_json(item, fallback=fallback) for item in value]
    try:
        missing = bool(value != value)  # NaT and float-like missing values are unequal to themselves
    except TypeError:
        missing = True  # pd.NA: every comparison with it is NA, whose truth value is undefined
    if missing:
        return None
    if fallback is None:
        raise TypeError(f"a {type(value).__name__} cannot be written as JSON: {value!r:.80}")
    return fallback(value)


def write_json_atomically(path: Path, payload: Any, *, indent: int | None = 2) -> None:
    """``payload`` as strict JSON (see :func:`strict_json`), written atomically."""
    text = json.dumps(strict_json(payload), indent=indent, separators=None if indent else (",", ":"), allow_nan=False)
    write_atomically(path, lambda temp: temp.write_text(text + "\n"))


MANIFEST_NAME = ".coco-seg-files.json"  # inside an output folder: every file coco-seg wrote there


class OutputFolderError(ValueError):
    """An output folder cannot be written without touching files that coco-seg did not write."""


def _files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if not path.is_dir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_orphans(target: Path, *, carry: Iterable[str] = ()) -> None:
    """Temporaries of an earlier run on ``target`` that was killed (its process is gone). A ``carry`` entry that
    the killed run had already moved into its new folder is moved back into ``target`` first, so it survives."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:building|old)-(\d+)-[^/]*-coco-seg")
    for orphan in target.parent.glob(f".{glob.escape(target.name)}.*-coco-seg"):
        match = pattern.fullmatch(orphan.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            for name in carry:
                if (orphan / name).exists() and not (target / name).exists():
                    target.mkdir(parents=True, exist_ok=True)
                    os.replace(orphan / name, target / name)
            shutil.rmtree(orphan, ignore_errors=True)


def foreign_files(target: Path, *, known: Iterable[str] = ()) -> list[str]:
    """Files in ``target`` that coco-seg did not write there: not in its manifest, nor among ``known`` (the names an
    output written before manifests existed holds). [] for a folder that does not exist or is empty."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return []
    if target.is_symlink() or not target.is_dir():
        raise OutputFolderError(f"{target} is not a folder: refusing to replace it")
    owned = {MANIFEST_NAME, *known}
    manifest = target / MANIFEST_NAME
    if manifest.is_file():
        try:
            owned |= set(json.loads(manifest.read_text())["files"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass  # an unreadable manifest vouches for nothing
    return [name for name in _files_under(target) if name not in owned]


def prepare_folder(target: Path, *, known: Iterable[str] = (), carry: Iterable[str] = ()) -> Path:
    """The checks :func:`replace_folder` makes, for a command that works inside ``target`` (in its ``carry``
    entries) long before it replaces it: remove a killed run's temporaries (rescuing what it carried) and refuse a
    folder holding files coco-seg did not write, before any work is done. Returns ``target``, absolute."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    carry = tuple(carry)
    _remove_orphans(target, carry=carry)
    foreign = [name for name in foreign_files(target, known=known)
               if not any(name == c or name.startswith(f"{c}/") for c in carry)]  # a carried folder is ours
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputFolderError(f"refusing to write into {target}: it holds files coco-seg did not write ({listed}); "
                                f"choose a new or empty folder, or move them away")
    return target


def replace_folder(target: Path, build: Callable[[Path], None], *, known: Iterable[str] = (),
                   carry: Iterable[str] = ()) -> None:
    """Write a whole output folder: ``build`` fills a temporary sibling, which then takes ``target``'s place.

    A reader sees the previous folder or the new one, never a mix; a kill or a full disk during ``build`` leaves
    the previous folder as it was (the temporary is removed, or, after a kill, by the next run on ``target``).
    ``target`` may be absent, empty, or an earlier output of coco-seg (its manifest, or ``known`` names only);
    anything else is refused with :class:`OutputFolderError` before anything is written, since replacing it would
    delete files coco-seg did not write. The new folder's manifest lists every file ``build`` wrote.

    ``carry``: entries of ``target`` (a command's working files, such as analyze's resumable ``work``) that move,
    by rename, into the new folder after ``build`` succeeded, and back if the swap fails; a kill in between is
    repaired by the next run (see :func:`prepare_folder`).
    """
    carry = tuple(carry)
    target = prepare_folder(target, known=known, carry=carry)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building-{os.getpid()}-",
                                 suffix="-coco-seg"))
    try:
        build(temp)
        for name in carry:
            if (target / name).exists():
                os.replace(target / name, temp / name)
        write_json_atomically(temp / MANIFEST_NAME, {"files": _files_under(temp)})
        os.chmod(temp, 0o755)  # mkdtemp creates 0700; an output folder is as readable as any other output
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-{os.getpid()}-",
                                        suffix="-coco-seg"))
            os.replace(target, old)  # onto the empty folder mkdtemp reserved
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, target)
    except BaseException as error:
        for name in carry:
            if (temp / name).exists() and not (target / name).exists():
                target.mkdir(parents=True, exist_ok=True)
                os.replace(temp / name, target / name)
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(error, OSError) and error.filename is None:  # a writer that names no file (pyarrow)
            raise OSError(error.errno, error.strerror or str(error), str(target)) from error
        raise
