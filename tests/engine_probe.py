"""Run in a subprocess by tests/test_integration_entry.py (code-loader keeps global state: one loader per process).

Loads ``leap_integration.py`` with code-loader's own ``LeapLoader`` (config from ``$COCO_SEG_CONFIG``), runs its
dataset check, fetches samples through ``get_sample`` and runs the custom latent spaces through the engine's
``run_model_latent_space`` on the exported model's real outputs; prints one JSON line.
"""

import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from code_loader.contract.enums import DataStateEnum
    from code_loader.leaploader import LeapLoader

    from coco_seg.config import get_config
    from coco_seg.export import load_model, predict_outputs

    loader = LeapLoader(code_path=str(REPO_ROOT), code_entry_name="leap_integration.py")
    result = loader.check_dataset()
    report = {"is_valid": bool(result.is_valid), "general_error": result.general_error,
              "payloads": {p.name: {"is_passed": bool(p.is_passed), "display": {k: str(v) for k, v in
                                                                             (p.display or {}).items()}}
                           for p in result.payloads},
              "latent_specs": {name: {k: str(v) for k, v in spec.items()}
                               for name, spec in loader.get_custom_latent_space_specs().items()},
              "analysis_space": loader.get_custom_latent_space_for_analysis()}
    responses = loader._preprocess_result()
    training = responses[DataStateEnum.training]
    samples = [loader.get_sample(DataStateEnum.training, sample_id) for sample_id in training.sample_ids[:4]]
    report["metadata"] = [{name: [type(value).__name__, value, bool(sample.metadata_is_none[name])]
                           for name, value in sample.metadata.items()} for sample in samples]
    if DataStateEnum.unlabeled in responses:
        unlabeled = loader.get_sample(DataStateEnum.unlabeled, responses[DataStateEnum.unlabeled].sample_ids[0])
        report["unlabeled_metadata_none"] = {k: bool(v) for k, v in unlabeled.metadata_is_none.items()}

    model_path = get_config().model_path
    images = np.stack([sample.inputs["image"] for sample in samples])
    masks = np.stack([sample.gt["mask"] for sample in samples])
    outputs = predict_outputs(load_model(model_path), images)
    report["outputs"] = [list(o.shape) for o in outputs]
    if len(outputs) == 2:
        logits, features = outputs
        # As the engine does: tensors cast to float16 before they reach our functions.
        gt_space = loader.run_model_latent_space("decoder_gt_pooled", np.array(training.sample_ids[:4]),
                                                 DataStateEnum.training,
                                                 {"features": features.astype(np.float16),
                                                  "mask": masks.astype(np.float16)})
        prediction_space = loader.run_model_latent_space("decoder_prediction_pooled",
                                                         np.array(training.sample_ids[:4]), DataStateEnum.training,
                                                         {"features": features.astype(np.float16),
                                                          "prediction": logits.astype(np.float16)})
        report["gt_space"] = np.asarray(gt_space).tolist()
        report["prediction_space"] = np.asarray(prediction_space).tolist()
        report["gt_label_sets"] = [sorted(np.unique(m.argmax(-1)).tolist()) for m in masks]
        report["features_channels"] = int(features.shape[-1])
    print("ENGINE_PROBE " + json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
