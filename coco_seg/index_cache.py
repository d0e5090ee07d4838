"""The annotation side of preprocess — read, index, select, check annotations — computed once and cached.

Algorithm: the first preprocess of a split parses the instances JSON, indexes it and derives the category names,
the class map, the candidate images in order (id, file name, size, annotation problem) and each candidate's
annotations. That is written under ``<cache dir>/index/<key>``: ``<key>.blob`` holds one JSON line of annotations
per candidate and ``<key>.json`` everything else plus the byte offsets of those lines.
The key hashes the annotation file's content (sha256 of its bytes, streamed) and every config value the
selection depends on (label mode, classes, background_share) with the cache format version, so changed
bytes or config land on a new key whatever the file's size and times say, and a copy elsewhere reuses it.
Later runs read only the small JSON; a sample's annotations are read from the blob when the sample is decoded (one
positional read, one ``orjson.loads``). The first run serves its samples from the blob it has just written as
well, so the parsed file (gigabytes of Python objects at COCO scale) is never kept: on Linux it is parsed in a
forked child process that writes the cache and exits (:func:`cached_scan`), elsewhere it is freed once the scan
ends (and kept only when the cache cannot be written). The garbage collector is paused while the scan and the
write run: they create millions of objects that all stay alive until the end, which the collector would otherwise
walk again and again (more than doubling the time). Both files are written under temporary names and renamed into
place, blob first, so a reader finds either no cache or a complete one; two processes building the same key at
once each write a complete, identical cache and the last rename wins.

Images are checked on every run, but a file's check (its problem and header size, see coco_seg.images) is not
redone while the file is unchanged: :class:`FileCheckMemo` keeps the results per image folder under
``<cache dir>/files/``, each under the file's identity — size, modification and status-change times (ns) and inode
— which the folder listing's stat gives. Replacing, truncating or rewriting a file changes its status-change time,
which no user call can set back, so a changed file is always checked again.
"""

import contextlib
import gc
import hashlib
import json
import logging
import os
import pickle
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import orjson

from coco_seg.atomic import write_atomically, write_json_atomically
from coco_seg.config import Config, user_cache_dir
from coco_seg.images import pread

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: keyed on content; 2: each annotation carries its geometric area (coco_seg.annotation_checks.AREA_KEY)
CACHE_DIR_ENV_VAR = "COCO_SEG_CACHE_DIR"
IN_PROCESS_ENV_VAR = "COCO_SEG_PREPROCESS_IN_PROCESS"  # 1: never fork the first scan into a child process


@dataclass(frozen=True)
class LazyAnnotations:
    """One image's annotations, read from the index blob on demand (plain data: picklable, no open file)."""

    blob: Path
    start: int
    end: int

    def load(self) -> tuple[dict, ...]:
        # a raw descriptor and one positional read: this runs once per sample decode, where a buffered file
        # object's set-up costs as much as the read
        descriptor = os.open(self.blob, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            return tuple(orjson.loads(pread(descriptor, self.end - self.start, self.start)))
        finally:
            os.close(descriptor)


Annotations = Union[tuple[dict, ...], LazyAnnotations]


@dataclass(frozen=True)
class Candidate:
    image_id: int
    file_name: str
    width: Any  # as the file says: an int normally, anything when the entry is broken (reported as a problem)
    height: Any
    problem: Optional[str]  # first annotation problem, None when all are usable
    annotations: Annotations


@dataclass(frozen=True)
class AnnotationScan:
    category_names: dict[int, str]
    class_of_category: dict[int, int]
    ignored: list[str]  # annotations that refer to no image
    candidates: list[Candidate]


def _memo_key(name: str) -> str:
    """A file name as a JSON key: itself when it is valid UTF-8; else ``/`` (which no file name holds) and its bytes
    in hex, so that names which are not UTF-8 (lone surrogates in Python, refused by orjson) are kept apart."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return "/" + os.fsencode(name).hex()


def cache_root() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV_VAR)
    return Path(configured) if configured else user_cache_dir()


def cache_dir() -> Path:
    return cache_root() / "index"


def content_digest(path: Path) -> str:
    """sha256 of the file's bytes, streamed in 1 MiB reads (hardware-accelerated on x86-64 and ARMv8: ~0.4 s for
    450 MB here, against ~1 s for blake2b)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def cache_key(config: Config, annotations_path: Path) -> str:
    """The index's key: the annotation file's content (its sha256) and every config value the selection depends on.

    Content, not identity: a copy that keeps size and times (``cp -p``, ``rsync -t``, an unpacked archive) over the
    file is a new key exactly when its bytes differ, and the same file at another path reuses the cache."""
    identity = {"format": CACHE_FORMAT, "sha256": content_digest(annotations_path), "label_mode": config.label_mode,
                "targets": [list(t.coco_names) for t in config.target_classes],
                "background_share": config.background_share}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(folder: Path, key: str) -> Optional[AnnotationScan]:
    index, blob = folder / f"{key}.json", folder / f"{key}.blob"
    try:
        payload = orjson.loads(index.read_bytes())
    except (OSError, ValueError):
        return None
    if payload.get("format") != CACHE_FORMAT or not blob.is_file():
        return None
    return _scan_from_rows(payload, blob)


def _scan_from_rows(payload: dict[str, Any], blob: Path) -> AnnotationScan:
    candidates = [Candidate(image_id, file_name, width, height, problem, LazyAnnotations(blob, start, end))
                  for image_id, file_name, width, height, problem, start, end in payload["candidates"]]
    return AnnotationScan(category_names={int(k): v for k, v in payload["category_names"].items()},
                          class_of_category={int(k): v for k, v in payload["class_of_category"].items()},
                          ignored=payload["ignored"], candidates=candidates)


def _write_cache(folder: Path, key: str, scan: AnnotationScan) -> AnnotationScan:
    """Write the cache of ``scan``; return the same scan with its annotations read from the new blob."""
    blob = folder / f"{key}.blob"
    offsets: list[tuple[int, int]] = []

    def write_blob(temp: Path) -> None:
        position = 0
        with open(temp, "wb") as stream:
            for candidate in scan.candidates:
                try:
                    line = orjson.dumps(candidate.annotations) + b"\n"
                except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits, which only the json fallback parses
                    line = json.dumps(candidate.annotations, separators=(",", ":")).encode() + b"\n"
                stream.write(line)
                offsets.append((position, position + len(line)))
                position += len(line)

    write_atomically(blob, write_blob)
    rows = [[c.image_id, c.file_name, c.width, c.height, c.problem, start, end]
            for c, (start, end) in zip(scan.candidates, offsets)]
    payload = {"format": CACHE_FORMAT, "category_names": scan.category_names,
               "class_of_category": scan.class_of_category, "ignored": scan.ignored, "candidates": rows}
    write_json_atomically(folder / f"{key}.json", payload, indent=None)
    return _scan_from_rows(payload, blob)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees memory) and restore its state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fork_available() -> bool:
    return (hasattr(os, "fork") and sys.platform.startswith("linux")
            and os.environ.get(IN_PROCESS_ENV_VAR, "").strip().lower() not in ("1", "true", "yes"))


def _build_in_child(folder: Path, key: str, scan: Callable[[], AnnotationScan],
                    while_building: Callable[[], None]) -> Optional[AnnotationScan]:
    """Scan and write the cache in a forked child process while ``while_building`` runs here; the scan as read
    back from the new cache. An exception of the scan (bad data) is raised here as it was raised there; None when
    the child could not finish otherwise (it died, or could not write), so the caller scans in this process."""
    read_end = write_end = None
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
    except OSError as error:  # out of descriptors, processes or memory, or forbidden in this sandbox
        for end in (read_end, write_end):
            if end is not None:
                os.close(end)
        logger.warning("cannot start the preprocess child process (%s); parsing in this process instead", error)
        return None
    if pid == 0:  # the child: only this thread exists here; it leaves with os._exit, skipping every clean-up
        status = 1
        try:
            os.close(read_end)
            try:
                with collector_paused():
                    _write_cache(folder, key, scan())
                outcome = b"ok"
            except BaseException as error:  # noqa: BLE001 — everything goes back to the parent
                try:
                    outcome = pickle.dumps(error)
                except Exception:  # noqa: BLE001 — an exception that cannot be pickled goes back as its text
                    outcome = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(outcome)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        while_building()
    finally:
        with os.fdopen(read_end, "rb") as pipe:
            outcome = pipe.read()  # until the child exits
        os.waitpid(pid, 0)
    if outcome == b"ok":
        return _read_cache(folder, key)
    try:
        error = pickle.loads(outcome)
    except Exception:  # noqa: BLE001 — no outcome: the child died (e.g. out of memory)
        logger.warning("the preprocess child process stopped without a result; parsing in this process instead")
        return None
    if isinstance(error, OSError):
        logger.warning("the preprocess child process could not write the index cache in %s (%s); parsing in this "
                       "process instead", folder, error)
        return None
    raise error


def cached_scan(config: Config, annotations_path: Path, scan: Callable[[], AnnotationScan], *,
                while_building: Callable[[], None] = lambda: None) -> AnnotationScan:
    """The scan of ``annotations_path`` for ``config``: from the cache when it holds one, else ``scan()``, stored.

    Without a cache, on Linux the scan runs in a forked child process that writes the cache and exits, while
    ``while_building`` runs here (preprocess checks the image files meanwhile; it is not called otherwise); this
    process then reads the new cache. The child's gigabytes of parsed JSON are never allocated here, so this
    process stays small (freed Python objects are rarely returned to the system) and does not spend seconds freeing
    them. Elsewhere, with ``$COCO_SEG_PREPROCESS_IN_PROCESS=1``, or when the child fails for a reason other than the
    data, the scan runs here. A cache folder that cannot be written costs only the speed-up (a warning), never the
    run.
    """
    folder = cache_dir()
    try:
        key = cache_key(config, annotations_path)
    except OSError:
        return scan()  # the file is missing: let the scan raise its own clear error
    cached = _read_cache(folder, key)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if writable and _fork_available():
        built = _build_in_child(folder, key, scan, while_building)
        if built is not None:
            return built
    with collector_paused():  # in this process: nothing runs beside the scan, so while_building is left out
        result = scan()
        try:
            lazy = _write_cache(folder, key, result)
        except OSError as error:
            logger.warning("cannot write the preprocess index cache in %s (%s); the next run parses %s again",
                           folder, error, annotations_path)
            return result
        del result  # the parsed annotations, freed while the collector is still paused (else it walks them once)
        return lazy


FileIdentity = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def file_identity(stat: os.stat_result) -> FileIdentity:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


class FileCheckMemo:
    """The file checks of one image folder from earlier runs, valid while each file's identity is unchanged.

    ``get``/``put`` per file during preprocess, then one ``save`` (only when something was checked anew). Entries
    of files no longer in the folder are dropped on save. Not thread-safe: one preprocess fills it.
    """

    def __init__(self, images_dir: Path) -> None:
        digest = hashlib.sha256(f"{CACHE_FORMAT}:{images_dir.resolve()}".encode()).hexdigest()[:32]
        self.path = cache_root() / "files" / f"{digest}.json"
        try:
            loaded = orjson.loads(self.path.read_bytes())
            self._entries: dict[str, list] = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            self._entries = {}
        self._changed = False

    def get(self, name: str, identity: FileIdentity) -> Optional[tuple[Optional[str], Optional[tuple[int, int]]]]:
        """(problem, dimensions) found for ``name`` when it had this identity; None when unknown or changed."""
        entry = self._entries.get(_memo_key(name))
        if entry is None or len(entry) != 3 or tuple(entry[0]) != identity:
            return None
        return entry[1], None if entry[2] is None else (entry[2][0], entry[2][1])

    def put(self, name: str, identity: FileIdentity, problem: Optional[str],
            dimensions: Optional[tuple[int, int]]) -> None:
        self._entries[_memo_key(name)] = [list(identity), problem, None if dimensions is None else list(dimensions)]
        self._changed = True

    def save(self, present: Iterable[str]) -> None:
        """Write the memo (atomically) when it changed, keeping the files in ``present`` (the folder's names).
        A memo that cannot be written costs only the speed-up of the next run."""
        if not self._changed:
            return
        names = {_memo_key(name) for name in present}
        kept = {name: entry for name, entry in self._entries.items() if name in names}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, lambda temp: temp.write_bytes(orjson.dumps(kept)))
        except OSError as error:
            logger.debug("cannot write the file-check memo %s: %s", self.path, error)
