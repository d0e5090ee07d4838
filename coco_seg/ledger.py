"""The bad-sample ledger: the ``on_bad_sample`` policy, the per-split report and the decode-time failures.

A split's problems are settled once at preprocess (:func:`settle`): with ``error`` one DataError lists them (the
first ``SHOWN_PROBLEMS`` quoted, every one in the report), with ``skip`` they are left out, logged and listed.
Each split's outcome is written to ``<reports_dir>/bad_samples_<split>.json`` (temporary file + rename, so a
reader never sees half a report): found, kept, served, the skipped (or, with ``error``, refused) samples with file
and reason, the ignored annotations, and — appended by the engine's per-sample calls through
:func:`record_decode_failure` — the samples that passed preprocess but then failed to decode
(``failed_at_decode``). Engine workers in several processes append to one report under a file lock.
"""

import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Optional

from coco_seg.atomic import write_json_atomically as _write_json_atomically
from coco_seg.config import REPORTS_DIR_ENV_VAR, Config
from coco_seg.split_data import BadSample, DataError, SampleRecord, SplitData

try:  # POSIX: serialises report updates of engine worker processes; elsewhere the in-process lock must do
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

SHOWN_PROBLEMS = 5  # problems quoted in an error message; the rest are counted (and all are in the report)
REPORT_VERSION = 1
_REPORT_LOCK = threading.Lock()  # one report update at a time within a process (engine calls may be threaded)


def settle(split: SplitData, bad: list[BadSample], *, source: str, empty_hint: str) -> None:
    """Apply ``on_bad_sample`` to the problems found in a split, write its report, and refuse an empty split."""
    name, config = split.name, split.config
    for problem in bad:
        split.records.pop(problem.sample_id, None)
    ignored = split.ignored_annotations  # entries that belong to no usable image: refused with the samples
    if config.on_bad_sample == "error" and (bad or ignored):
        split.refused = bad
        report = write_bad_sample_report(split)
        problems = [str(problem) for problem in bad] + [f"ignored: {line}" for line in ignored]
        listed = "\n".join(f"  - {problem}" for problem in problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        where = f" (all listed in {report})" if report is not None else ""
        counts = f"{len(bad)} bad sample(s)" + (f" and {len(ignored)} entries that belong to no image" if ignored
                                                 else "")
        raise DataError(f"data.splits.{name}: {counts} in {source}{where}:\n{listed}{more}\n"
                        f"Fix the data, or set on_bad_sample: skip to leave them out (they are then listed).")
    for problem in bad:
        logger.warning("skipping %s in split %s: %s", problem.sample_id, name, problem)
    split.skipped = bad
    split.records = limit_records(split.records, config.sample_limit_per_split)
    report = write_bad_sample_report(split)
    if bad:
        logger.warning("split %s: %d of %d sample(s) skipped%s", name, len(bad), split.found,
                       f", listed in {report}" if report is not None else "")
    if not split.records:
        listed = f"; the skipped samples are listed in {report}" if bad and report is not None else ""
        if split.labeled:
            raise DataError(f"data.splits.{name}: no usable sample in {source} ({split.found} image(s) with a class "
                            f"of labels.classes = {list(config.classes)}, {len(bad)} skipped){listed}")
        raise DataError(f"data.splits.{name}.images: no usable image file ({empty_hint}) in "
                        f"{source} ({split.found} found, {len(bad)} skipped){listed}")


def limit_records(records: dict[str, SampleRecord], limit: Optional[int]) -> dict[str, SampleRecord]:
    if limit is None or len(records) <= limit:
        return records
    return dict(list(records.items())[:limit])


def report_path_for(config: Config, split_name: str) -> Path:
    return config.reports_dir / f"bad_samples_{split_name}.json"


def bad_sample_report(split: SplitData) -> dict[str, Any]:
    """The JSON-ready report of a split: counts (kept + skipped = found in skip mode; kept + refused = found in
    error mode) and every left-out sample with its file and reason."""
    return {
        "version": REPORT_VERSION,
        "split": split.name,
        "annotations": None if split.annotations_path is None else str(split.annotations_path),
        "images": None if split.images_dir is None else str(split.images_dir),
        "on_bad_sample": split.config.on_bad_sample,
        "found": split.found,
        "kept": split.kept,
        "served": len(split.records),  # kept, after sample_limit_per_split
        "skipped": [bad.as_json() for bad in split.skipped],
        "refused": [bad.as_json() for bad in split.refused],
        "ignored_annotations": list(split.ignored_annotations),
        "failed_at_decode": [bad.as_json() for bad in split.failed_at_decode.values()],
    }


@contextlib.contextmanager
def _report_file_lock(path: Path):
    """Exclusive lock on ``.<report>.lock`` beside the report: engine workers in other processes append too."""
    with _REPORT_LOCK:
        if fcntl is None:
            yield
            return
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def write_bad_sample_report(split: SplitData) -> Optional[Path]:
    """Write the split's report (preprocess time); returns its path, or None when the default folder is not
    writable (a warning says so). A ``reports_dir`` the user chose that cannot be written is a DataError."""
    path = report_path_for(split.config, split.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _report_file_lock(path):
            _write_json_atomically(path, bad_sample_report(split))
    except OSError as error:
        if split.config.reports_dir_setting is not None:
            raise DataError(f"reports_dir: cannot write the bad-sample report {path}: {error.strerror or error} "
                            f"(set in {split.config.source})") from None
        if os.environ.get(REPORTS_DIR_ENV_VAR):
            raise DataError(f"${REPORTS_DIR_ENV_VAR}: cannot write the bad-sample report {path}: "
                            f"{error.strerror or error}") from None
        logger.warning("cannot write the bad-sample report %s (%s); set reports_dir in the config to a writable "
                       "folder. The skipped samples are in this log only.", path, error.strerror or error)
        return None
    split.report_path = path
    return path


def record_decode_failure(split: SplitData, bad: BadSample) -> bool:
    """Note that an accepted sample failed to decode: log one warning and add it to the split's report.

    Returns False when the sample was already recorded (by this process). Never raises: it runs inside the
    engine's per-sample calls, where an exception would end the run. Failures recorded by other processes (engine
    workers) are kept: the report on disk is merged, not overwritten.
    """
    with _REPORT_LOCK:
        if bad.sample_id in split.failed_at_decode:
            return False
        split.failed_at_decode[bad.sample_id] = bad
    path = split.report_path
    logger.warning("split %s, sample %s (%s) cannot be decoded: %s. It is served as a placeholder (black image, "
                   "ignored ground truth, metadata missing)%s", split.name, bad.sample_id, bad.file, bad.reason,
                   f" and listed in {path}" if path is not None else "")
    if path is None:
        return True
    try:
        with _report_file_lock(path):
            report = bad_sample_report(split)
            try:
                on_disk = json.loads(path.read_text())
            except (OSError, ValueError):
                on_disk = {}
            if on_disk.get("split") == report["split"] and on_disk.get("annotations") == report["annotations"]:
                listed = {entry["sample_id"] for entry in report["failed_at_decode"]}
                report["failed_at_decode"] += [entry for entry in on_disk.get("failed_at_decode", [])
                                               if isinstance(entry, dict) and entry.get("sample_id") not in listed]
            _write_json_atomically(path, report)
    except Exception as error:  # noqa: BLE001 — a report that cannot be updated must not stop the engine
        logger.warning("cannot update the bad-sample report %s: %s", path, error)
    return True
