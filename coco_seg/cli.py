"""The `coco-seg` command: make-sample, check, export, train, evaluate, analyze, demo."""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from coco_seg.config import CONFIG_ENV_VAR, ConfigError, load_config


def _use_config(path: Optional[str]) -> None:
    """``--config`` wins over the environment; it is exported, absolute, so that check's subprocesses (which run
    in other directories) read the same file. A relative ``$COCO_SEG_CONFIG`` is made absolute for the same reason."""
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
    if path is not None:
        os.environ[CONFIG_ENV_VAR] = str(Path(path).expanduser().absolute())


def cmd_make_sample(args: argparse.Namespace) -> int:
    from coco_seg.sample_data import make_sample

    summary = make_sample(Path(args.out), images=args.images, seed=args.seed, plant_defects=args.plant_defects)
    print(f"wrote {summary.training_images} training + {summary.validation_images} validation images to "
          f"{summary.out_dir} ({summary.planted_defects} planted label defects)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from coco_seg.check import print_report, run_checks

    config = load_config()  # fail fast, with the config error, before starting subprocesses
    print(f"checking leap_integration.py with config {config.source} ({config.label_mode}: "
          f"{', '.join(config.class_names)}; model {config.model_path})")
    return 0 if print_report(run_checks()) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from coco_seg.export import export_model, model_card_for
    from coco_seg.model import build_unet, load_keras_checkpoint

    config = load_config()
    if args.untrained:
        import keras

        keras.utils.set_random_seed(args.seed)  # an untrained model is still a reproducible one
        model = build_unet(image_size=config.image_size, num_classes=config.num_classes,
                           encoder_weights=args.encoder_weights, alpha=args.alpha)
        extra = {"trained": False, "encoder_weights": args.encoder_weights}
    else:
        from coco_seg.training import training_card_fields

        extra = {"trained": True, **training_card_fields(Path(args.checkpoint))}  # first: it settles the journal
        model = load_keras_checkpoint(Path(args.checkpoint))
    paths = export_model(model, Path(args.out), card=model_card_for(config, **extra))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from coco_seg.distribute import DistributeConfig
    from coco_seg.training import TrainOptions, train

    config = load_config()
    weights = args.class_weights
    if weights == "none":
        weights = None  # plain cross-entropy
    elif weights != "median-frequency":
        try:
            weights = tuple(float(w) for w in weights.split(","))
        except ValueError:
            raise ValueError(f"--class-weights takes median-frequency, none or one number per class separated by "
                             f"commas, got {args.class_weights!r}") from None
    options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           encoder_weights=args.encoder_weights, alpha=args.alpha, fine_tune=args.fine_tune,
                           augment=not args.no_augment, class_weights=weights, dice_weight=args.dice_weight,
                           boundary_weight=args.boundary_weight, repeat_threshold=args.repeat_threshold,
                           seed=args.seed, mixed_precision=args.mixed_precision)
    state = train(config, Path(args.out), options, resume=args.resume,
                  distribute=DistributeConfig(args.distribute, args.replicas))
    if state.best_epoch is not None:
        print(f"best epoch {state.best_epoch}: validation mean IoU {state.best_validation['mean_iou']:.3f}; "
              f"export it with: coco-seg export --checkpoint {Path(args.out) / 'checkpoints' / 'best.keras'} "
              f"--out DIR")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from coco_seg.evaluate import evaluate_model
    from coco_seg.export import check_model_matches_config, load_model

    config = load_config()
    model = load_model(Path(args.model))
    check_model_matches_config(model, config, model_path=Path(args.model))
    evaluation = evaluate_model(model, config, split_name=args.split)
    degenerate = evaluation.degenerate()
    if degenerate:
        raise ValueError(degenerate + "; no figures written")
    print(evaluation.table())
    if evaluation.non_finite_pixels:
        print(f"coco-seg evaluate: warning: the model's output is NaN or Inf at {evaluation.non_finite_pixels} of "
              f"{evaluation.labelled_pixels} labelled pixels; they count as predicting no class", file=sys.stderr)
    if evaluation.scored_samples is not None and evaluation.scored_samples < evaluation.samples:
        print(f"coco-seg evaluate: warning: {evaluation.samples - evaluation.scored_samples} of {evaluation.samples} "
              f"samples have no labelled pixel (failed to decode; see the split's bad-sample report) and are not "
              f"scored", file=sys.stderr)
    if args.json:
        evaluation.write_json(Path(args.json))
        print(f"wrote {args.json}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from coco_seg.analysis.run import analyze

    load_config()  # fail fast on a bad config, before the binder is imported
    summary = analyze(model_path=Path(args.model), out_dir=Path(args.out), splits=args.split, limit=args.limit,
                      batch_size=args.batch_size, latent_space=args.latent_space,
                      embedding_layer=args.embedding_layer)
    for key, value in summary.items():
        print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


def write_demo_config(out: Path, *, data_root: Path, model_path: Path, label_mode: str = "category") -> Path:
    config_path = out / "config.yaml"
    config_path.write_text(
        "# written by `coco-seg demo`\n"
        f"data:\n  root: {json.dumps(str(data_root))}\n"
        f"labels:\n  mode: {label_mode}\n"
        f"model:\n  path: {json.dumps(str(model_path))}\n")
    return config_path


def cmd_demo(args: argparse.Namespace) -> int:
    from coco_seg.analysis.run import analyze
    from coco_seg.check import print_report, run_checks
    from coco_seg.export import export_model, model_card_for
    from coco_seg.model import load_keras_checkpoint
    from coco_seg.sample_data import make_sample
    from coco_seg.training import TrainOptions, train, training_card_fields

    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/5] generating the sample dataset with planted label defects in {out / 'data'}")
    summary = make_sample(out / "data", images=args.images, seed=0, plant_defects=args.plant_defects)
    config_path = write_demo_config(out, data_root=summary.out_dir, model_path=out / "model" / "model.onnx")
    _use_config(str(config_path))
    config = load_config(config_path)
    print(f"[2/5] training a small model for {args.epochs} epochs on the CPU (random encoder: ImageNet weights "
          f"need a download)")
    # Plain cross-entropy: class weights shift the predicted probabilities towards the rare classes, and the label-
    # issue ranking (confident learning) reads those probabilities; with median-frequency weights the demo found 12
    # of its 14 planted defects in the top 28, below the >= 90 % its test asks (plain cross-entropy meets it).
    options = TrainOptions(epochs=args.epochs, batch_size=8, encoder_weights="none", alpha=0.35, fine_tune=True,
                           class_weights=None)
    state = train(config, out / "run", options, resume=(out / "run" / "train_state.json").is_file())
    checkpoint = out / "run" / "checkpoints" / "best.keras"
    print("[3/5] exporting model.onnx, model.h5 and model_card.json")
    card = model_card_for(config, trained=True, **training_card_fields(checkpoint))
    export_model(load_keras_checkpoint(checkpoint), out / "model", card=card)
    print("[4/5] running the Tensorleap engine checks on leap_integration.py")
    passed = print_report(run_checks(config_path=config_path))
    print("[5/5] analysing the training and validation splits (the label defects were planted in training)")
    analysis = analyze(model_path=out / "model" / "model.onnx", out_dir=out / "analysis",
                       splits=["training", "validation"])
    print(f"\ndemo {'finished' if passed else 'FAILED'} in {time.monotonic() - started:.0f} s")
    print(f"  data:     {summary.out_dir} ({summary.training_images} training, {summary.validation_images} "
          f"validation images, {summary.planted_defects} planted label defects)")
    print(f"  model:    {out / 'model'} (best epoch {state.best_epoch}, validation mean IoU "
          f"{state.best_validation['mean_iou']:.3f})")
    if "planted_defect_recall" in analysis:
        print(f"  planted label defects found by the label-issue ranking: {analysis['planted_defects_found']} "
              f"(recall {analysis['planted_defect_recall']:.0%})")
    print(f"  report:   {analysis['report']}")
    print(f"  config:   {config_path}  (use it with COCO_SEG_CONFIG={config_path} or --config)")
    return 0 if passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coco-seg", description=__doc__)
    parser.add_argument("--config", help=f"YAML overriding the defaults (else ${CONFIG_ENV_VAR})")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("make-sample", help="write the generated COCO-layout sample dataset")
    sample.add_argument("--out", required=True)
    sample.add_argument("--images", type=int, default=48, help="total images over both splits")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--plant-defects", type=float, default=0.0, metavar="FRACTION",
                        help="share of training images given a known label defect (planted_defects.json)")
    sample.set_defaults(run=cmd_make_sample)

    check = commands.add_parser("check", help="run the engine loader check and the integration test")
    check.set_defaults(run=cmd_check)

    export = commands.add_parser("export", help="write model.onnx, model.h5 and model_card.json")
    export.add_argument("--out", required=True)
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--untrained", action="store_true", help="a freshly built model (decoder untrained)")
    source.add_argument("--checkpoint", help="a trained Keras model (.keras or .h5)")
    export.add_argument("--encoder-weights", default="imagenet", metavar="imagenet|none|PATH",
                        help="encoder weights for --untrained (default imagenet, needs a download)")
    export.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier for --untrained")
    export.add_argument("--seed", type=int, default=0,
                        help="random initialisation of --untrained (the same seed gives the same weights)")
    export.set_defaults(run=cmd_export)

    train = commands.add_parser("train", help="train the U-Net on the configured splits")
    train.add_argument("--out", required=True, help="run folder: checkpoints, train_state.json")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--encoder-weights", default="imagenet", metavar="imagenet|none|PATH")
    train.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    train.add_argument("--fine-tune", action="store_true", help="train the encoder too (frozen by default)")
    train.add_argument("--no-augment", action="store_true", help="no flip / scale-crop augmentation")
    train.add_argument("--class-weights", metavar="median-frequency|none|W0,W1,...", default="median-frequency",
                       help="cross-entropy weight per class: median-frequency (default) computes them from the "
                            "training split's pixel frequencies at the start (recorded in train_state.json); none: "
                            "plain cross-entropy; or one weight per class, background first")
    train.add_argument("--dice-weight", type=float, default=0.0, help="add this × (1 - soft dice) to the loss")
    train.add_argument("--boundary-weight", type=float, default=0.0,
                       help="pixels on a ground-truth class boundary weigh 1 + this in the cross-entropy")
    train.add_argument("--repeat-threshold", type=float, default=0.0, metavar="T",
                       help="repeat-factor sampling: an image holding a class found in a fraction f < T of the "
                            "training images appears round(sqrt(T / f)) times per epoch; 0 (default) turns it off")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue the run in --out after its last epoch")
    train.add_argument("--mixed-precision", action="store_true",
                       help="Keras mixed_float16: float16 compute, float32 weights, logits and loss, dynamic loss "
                            "scaling (for GPUs with tensor cores; slower on a CPU). Checkpoints load for inference "
                            "and export in float32")
    train.add_argument("--distribute", choices=["auto", "none", "mirrored", "multi-worker"], default="auto",
                       help="tf.distribute strategy: mirrored = MirroredStrategy over the local GPUs; multi-worker = "
                            "MultiWorkerMirroredStrategy from TF_CONFIG (only the chief writes --out); auto = "
                            "mirrored when more than one GPU is visible, else none (the default)")
    train.add_argument("--replicas", type=int, metavar="N",
                       help="mirrored: use N GPUs; without a GPU, split the CPU into N logical devices (a testing "
                            "aid that runs the distributed path anywhere; not faster). --batch-size stays the "
                            "global batch and must divide by N")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="dataset-level IoU per class (confusion matrix over the split)")
    evaluate.add_argument("--model", required=True, help=".onnx, .h5 or .keras")
    evaluate.add_argument("--split", default="validation", choices=["training", "validation"])
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.set_defaults(run=cmd_evaluate)

    analyze = commands.add_parser("analyze", help="offline analysis report: map, dashboards, label issues, ...")
    analyze.add_argument("--model", required=True, help=".onnx (with its model.h5 beside it), .h5 or .keras")
    analyze.add_argument("--out", required=True)
    analyze.add_argument("--split", metavar="NAME[,NAME...]",
                         help="splits analysed together in one embedding space, comma-separated (default: every "
                              "labeled split configured, plus unlabeled when configured)")
    analyze.add_argument("--limit", type=int, help="first N samples of the split")
    analyze.add_argument("--batch-size", type=int, default=16)
    analyze.add_argument("--latent-space", choices=["tensorleap", "encoder"], default="tensorleap",
                         help="the map's embedding: tensorleap (default) = the integration's custom latent space, "
                              "decoder features pooled per class; encoder = a layer, global-average-pooled")
    analyze.add_argument("--embedding-layer", help="with --latent-space encoder: layer whose pooled output is the "
                                                   "embedding (default: the encoder's last block)")
    analyze.set_defaults(run=cmd_analyze)

    demo = commands.add_parser("demo", help="the main job on the embedded generated dataset")
    demo.add_argument("--out", default="coco-seg-demo")
    demo.add_argument("--images", type=int, default=200)
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--plant-defects", type=float, default=0.1, metavar="FRACTION")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    _use_config(args.config)
    try:
        return args.run(args)
    except (ConfigError, ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"coco-seg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, file too large, read-only, permission, a folder where a file goes...
        print(f"coco-seg {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2


def describe_os_error(error: OSError) -> str:
    """``<what>, <path>`` for an I/O error, whichever layer raised it (some libraries put the path only in the
    message, some give an errno without a strerror)."""
    what = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    paths = [os.fsdecode(p) for p in (error.filename, error.filename2) if p is not None]
    return ", ".join([what, *paths]) if paths else what


if __name__ == "__main__":
    sys.exit(main())
