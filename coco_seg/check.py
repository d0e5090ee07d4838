"""`coco-seg check`: the Tensorleap engine's own checks of the entry file, run locally, with a verdict.

Two checks, each in a fresh subprocess because code-loader keeps global state (a second loader in one process
fails): (1) the engine loader — ``LeapLoader.check_dataset()`` on ``leap_integration.py`` (never raises: its
``is_valid`` and every payload are read) followed by ``get_sample`` on the first samples of every split, whose
input/GT shapes and dtypes and metadata we verify ourselves (the loader does not); (2) the entry file's
``@tensorleap_integration_test`` on the first sample of every labeled split, which loads the model and runs every
metric, the loss, every visualizer and the custom latent spaces.

A metadata value that is None is reported as missing, not as a failure (an unknown value is a valid answer);
a sample that failed to decode is a failure, reported as such with its file and reason.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_FILE = "leap_integration.py"
SAMPLES_PER_SPLIT = 2
RESULT_MARKER = "COCO_SEG_CHECK_RESULT "


@dataclass
class CheckResult:
    name: str
    passed: bool
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _engine_check_worker(code_path: str) -> dict[str, Any]:
    """Runs inside the subprocess: the engine loader's dataset check plus per-sample shape checks."""
    import numpy as np
    from code_loader.contract.enums import DataStateEnum
    from code_loader.leaploader import LeapLoader

    from coco_seg.config import get_config
    from coco_seg.registry import GROUND_TRUTH_NAME, INPUT_NAME

    config = get_config()
    loader = LeapLoader(code_path=code_path, code_entry_name=ENTRY_FILE)
    result = loader.check_dataset()
    report: dict[str, Any] = {
        "is_valid": bool(result.is_valid),
        "general_error": result.general_error,
        "payloads": [{"name": p.name, "is_passed": bool(p.is_passed), "display": {k: str(v)[:2000] for k, v in
                                                                                  (p.display or {}).items()}}
                     for p in result.payloads],
        "samples": [],
        "problems": [],
        "notes": [],
    }
    if not result.is_valid:
        return report
    size, channels = config.image_size, config.num_classes
    for state_name, state in (("training", DataStateEnum.training), ("validation", DataStateEnum.validation),
                              ("unlabeled", DataStateEnum.unlabeled)):
        if state_name == "unlabeled" and "unlabeled" not in config.splits:
            continue
        response = loader._preprocess_result()[state]
        for sample_id in response.sample_ids[:SAMPLES_PER_SPLIT]:
            sample = loader.get_sample(state, sample_id)
            image = sample.inputs[INPUT_NAME]
            entry = {"split": state_name, "sample_id": sample_id, "image": [list(image.shape), str(image.dtype)],
                     "metadata_none": sorted(k for k, v in sample.metadata_is_none.items() if v)}
            where = f"{state_name} sample {sample_id}"
            failure = getattr(response.data, "failed_at_decode", {}).get(sample_id)
            if failure is not None:  # served as a placeholder (ignored GT, missing metadata): say why, not what
                report_path = response.data.report_path
                report["problems"].append(f"{where} ({failure.file}) failed to decode (see the report"
                                          f"{'' if report_path is None else ' ' + str(report_path)}): "
                                          f"{failure.reason}; served as a placeholder")
                report["samples"].append(entry)
                continue
            if image.shape != (size, size, 3) or image.dtype != np.float32:
                report["problems"].append(f"{where}: image is {image.shape} {image.dtype}, expected "
                                          f"({size}, {size}, 3) float32")
            elif not (-1.0 <= float(image.min()) and float(image.max()) <= 1.0):
                report["problems"].append(f"{where}: image values outside [-1, 1]")
            if state_name != "unlabeled":
                mask = sample.gt[GROUND_TRUTH_NAME]
                entry["mask"] = [list(mask.shape), str(mask.dtype)]
                if mask.shape != (size, size, channels) or mask.dtype != np.float32:
                    report["problems"].append(f"{where}: mask is {mask.shape} {mask.dtype}, expected "
                                              f"({size}, {size}, {channels}) float32")
                elif not np.allclose(mask.sum(axis=-1), 1.0):
                    report["problems"].append(f"{where}: mask is not one-hot")
            if entry["metadata_none"]:
                report["notes"].append(f"{where}: metadata missing (None): {', '.join(entry['metadata_none'])}")
            report["samples"].append(entry)
    report["bad_samples"] = _bad_sample_summaries(loader)  # after the fetches above, which may add decode failures
    return report


def _split_data(loader: Any) -> list[Any]:
    """The SplitData of every split the binder's preprocess returned (training, validation, unlabeled)."""
    return [response.data for response in loader._preprocess_result().values()
            if hasattr(response.data, "skipped")]


def _bad_sample_summaries(loader: Any) -> list[dict[str, Any]]:
    return [{"split": split.name, "found": split.found, "kept": split.kept, "served": len(split.records),
             "skipped": len(split.skipped), "failed_at_decode": len(split.failed_at_decode),
             "report": None if split.report_path is None else str(split.report_path)}
            for split in _split_data(loader)]


def _integration_test_worker() -> dict[str, Any]:
    """Runs inside the subprocess: the entry file's integration test on the first sample of each labeled split."""
    sys.path.insert(0, str(REPO_ROOT))
    import leap_integration

    return {"tested": leap_integration.main(samples_per_split=1),
            "latent_spaces": leap_integration.MODEL_OUTPUTS.has_features}


def _run_worker(kind: str, *, config_path: Optional[Path], timeout: float) -> tuple[Optional[dict], str]:
    env = dict(os.environ, TL_DISABLE_ANALYTICS="true", TF_CPP_MIN_LOG_LEVEL="2")
    if config_path is not None:
        env["COCO_SEG_CONFIG"] = str(Path(config_path).resolve())
    process = subprocess.run([sys.executable, "-m", "coco_seg.check", "--worker", kind], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout)
    output = process.stdout + process.stderr
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):]), output
    return None, output


def _tail(text: str, lines: int = 25) -> list[str]:
    return text.strip().splitlines()[-lines:]


def engine_check(*, config_path: Optional[Path] = None, timeout: float = 600) -> CheckResult:
    report, output = _run_worker("engine", config_path=config_path, timeout=timeout)
    if report is None:
        return CheckResult("engine loader", False, ["the check crashed:"] + _tail(output))
    details = []
    if report["general_error"]:
        details.append(f"general error: {report['general_error']}")
    for payload in report["payloads"]:
        if not payload["is_passed"]:
            details.append(f"payload {payload['name']} failed: {payload['display']}")
    details += report["problems"]
    passed = report["is_valid"] and not details
    return CheckResult("engine loader", passed, details + report["notes"], report)


def integration_test(*, config_path: Optional[Path] = None, timeout: float = 600) -> CheckResult:
    report, output = _run_worker("integration", config_path=config_path, timeout=timeout)
    if report is None:
        return CheckResult("integration test", False, ["the integration test failed:"] + _tail(output))
    details = [f"ran on {', '.join(report['tested'])}"]
    if not report["latent_spaces"]:
        details.append("the model has no decoder-features output: the custom latent spaces are off "
                       "(re-export it with `coco-seg export` to have them)")
    return CheckResult("integration test", True, details, report)


def run_checks(*, config_path: Optional[Path] = None) -> list[CheckResult]:
    return [engine_check(config_path=config_path), integration_test(config_path=config_path)]


def print_report(results: list[CheckResult]) -> bool:
    for result in results:
        print(f"[{'PASS' if result.passed else 'FAIL'}] {result.name}")
        for line in result.details:
            print(f"    {line}")
        for split in result.data.get("bad_samples", []):
            # Skipped samples are not failures (on_bad_sample: skip asked for it) but must not go unseen.
            where = f"; listed in {split['report']}" if split["report"] else ""
            print(f"    split {split['split']}: {split['kept']} of {split['found']} sample(s) kept, "
                  f"{split['skipped']} skipped, {split['failed_at_decode']} failed to decode{where}")
        for payload in result.data.get("payloads", []):
            print(f"    {'ok ' if payload['is_passed'] else 'BAD'} {payload['name']}")
    passed = all(r.passed for r in results)
    print("check passed" if passed else "check FAILED")
    return passed


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        result = _engine_check_worker(str(REPO_ROOT)) if argv[1] == "engine" else _integration_test_worker()
        print(RESULT_MARKER + json.dumps(result, default=str), flush=True)
        return 0
    return 0 if print_report(run_checks()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
