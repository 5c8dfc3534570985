"""The ``feratt`` command line: every argparse parser and every deferred import of the library.

Each subcommand is a pair: ``_add_<name>`` registers its arguments, and
``_run_<name>(args)`` parses nothing more, calls one library function (the
same a notebook calls: ``train.train_and_evaluate``, ``evaluate.evaluate_run``,
``bench.run_bench``, ...) and prints its result. The library is imported
only when a command runs, so ``feratt --help`` starts without JAX and XLA
reads its flags after they are set. Nothing in the library imports this
module.
"""

from __future__ import annotations

import argparse
import errno
import json
import pathlib
import sys
from typing import Sequence

# Mirrors feratt_jax.models.MODEL_NAMES without importing JAX.
_MODEL_HELP = "ferattention, ferattentiongmm, ferattentionstn, ferattentiongmmstn, ferattention_2019, preactresnet18, resnet18, cvgg13"
_CONFIG_HELP = "a packaged config NAME[:SIZE] (e.g. ferattention:quick) or a FILE.py[:ARG] (experiments/configs/)"
_DISTRIBUTED_HELP = "call jax.distributed.initialize() first (multi-host)"


def _initialize_distributed(requested: bool, config) -> None:
    if requested or config.train.distributed:
        import jax

        jax.distributed.initialize()


# ==========================================================================
# info, train, eval, export
# ==========================================================================


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameter counts, output shapes and FLOPs of a model")
    p.add_argument("--model", required=True, help=f"one of: {_MODEL_HELP}")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--dim", type=int, default=32, help="embedding size of the GMM variants")
    p.add_argument("--backbone", default=None, help="FERAtt backbone: preactresnet18 | resnet18 | cvgg13")
    p.add_argument("--attention-channels", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--no-flops", action="store_true", help="skip compiling the forward for FLOPs")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from feratt_jax.models.summary import model_summary

    options = {}
    if args.backbone is not None:
        options["backbone"] = args.backbone
    if args.attention_channels is not None:
        options["attention_channels"] = args.attention_channels
    summary = model_summary(
        args.model,
        num_classes=args.num_classes,
        dim=args.dim,
        image_size=args.image_size,
        with_flops=not args.no_flops,
        **options,
    )
    print(json.dumps(summary))
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a config in a workdir (resumes automatically); extra --config.a.b=value override fields",
    )
    p.add_argument("--config", required=True, help=_CONFIG_HELP)
    p.add_argument("--workdir", required=True)
    p.add_argument("--distributed", action="store_true", help=_DISTRIBUTED_HELP)
    p.set_defaults(func=_run_train, accepts_overrides=True)


def _run_train(args: argparse.Namespace) -> int:
    from feratt_jax import configs

    config = configs.load_config(args.config, args.overrides)
    _initialize_distributed(args.distributed, config)
    from feratt_jax.train import train_and_evaluate

    summary = train_and_evaluate(config, args.workdir)
    if "test" in summary:
        test = summary["test"]
        print(
            f"test accuracy {test['accuracy']:.4f}  macro-P {test['macro_precision']:.4f}  "
            f"macro-R {test['macro_recall']:.4f}  reference-F1 {test['reference_f1']:.4f}  "
            f"({test['num_examples']} images; {args.workdir}/eval/metrics.json)"
        )
        if "figures" in summary:
            # The test confusion matrix and attention/reconstruction grid of the best checkpoint (``feratt eval``'s).
            print(f"figures: {', '.join(summary['figures'])}")
    return 0


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained run's best checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--noise-sweep", action="store_true", help="accuracy under Gaussian noise sigma in 0.01..0.3")
    p.set_defaults(func=_run_eval, accepts_overrides=True)


def _run_eval(args: argparse.Namespace) -> int:
    from feratt_jax.evaluate import evaluate_run

    report = evaluate_run(args.workdir, split=args.split, noise_sweep=args.noise_sweep, overrides=args.overrides)
    print(json.dumps({k: report[k] for k in ("accuracy", "macro_precision", "macro_recall", "reference_f1", "macro_f1")}))
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from feratt_jax.export import FORMATS  # names only: export.py imports jax inside its functions

    p = subparsers.add_parser("export", help="a trained model as a serialized inference function (StableHLO) for serving")
    p.add_argument("--workdir", required=True, help="feratt train workdir (its best checkpoint) or model export")
    p.add_argument("--format", choices=FORMATS, default="stablehlo")
    p.add_argument("--out", required=True, help="output folder (feratt.stablehlo, export.json, load_feratt.py)")
    p.add_argument("--platforms", default=None, help="lowering platforms, e.g. cpu,cuda (default: this machine's)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from feratt_jax.export import export_model

    platforms = tuple(args.platforms.split(",")) if args.platforms else None
    spec = export_model(args.workdir, args.out, format=args.format, platforms=platforms)
    print(f"wrote {args.out}: {spec['model']} step {spec['step']}, input {spec['input_shape']}, outputs {spec['outputs']}")
    return 0


# ==========================================================================
# data preview, data prepare
# ==========================================================================


def _add_data(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="data tools: preview, prepare", description="Synthetic data preview; real-dataset conversion."
    )
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True
    pv = sub.add_parser(
        "preview",
        help="write a PNG grid of faces, composites, masks and labels",
        description="Render a few synthetic faces of every class and write a PNG contact sheet. "
        "--config.data.FIELD=VALUE overrides apply to the config's data section (the packaged ferattention "
        "config's without --config), e.g. --config.data.face_scene_prob=1.0 or --config.data.render.downsample_size=16.",
    )
    pv.add_argument("--out", required=True, help="output PNG path")
    pv.add_argument(
        "--config",
        default=None,
        help="experiment config FILE[:ARG] (e.g. experiments/configs/ferattention.py:quick); its data section is used",
    )
    pv.add_argument("--subjects", type=int, default=2, help="number of subjects shown (default 2)")
    pv.add_argument("--seed", type=int, default=0, help="render seed (default 0)")
    pv.add_argument(
        "--preset", default=None, help="renderer preset, a key of feratt_jax.data.render.PRESETS (default: the config's)"
    )
    pv.set_defaults(func=_run_data_preview, accepts_overrides=True)

    pr = sub.add_parser(
        "prepare",
        help="convert a real dataset (CK+, JAFFE, BU-3DFE, FER2013, FER+, AffectNet, RAF-DB, or a class-per-folder tree) into aligned faces",
        description="Parse a dataset's native layout, align every face into a 128x128 dark face and write the "
        "records that --config.data.source reads. Interrupted conversions resume.",
    )
    from feratt_jax.data.real import FOLDER, FORMAT_CHOICES, PREPARE_DATASETS  # names only: no JAX, no converters

    pr.add_argument(
        "--dataset",
        required=True,
        choices=PREPARE_DATASETS,
        help=f"which native layout --raw-dir holds ({FOLDER}: DIR/<class>/*.png or DIR/{{train,val,test}}/<class>/)",
    )
    pr.add_argument("--raw-dir", required=True, help="the dataset as downloaded from its provider")
    pr.add_argument(
        "--out",
        default=None,
        help="prepared folder (default: $FERATT_DATA_DIR/DATASET or ~/.cache/feratt_jax/datasets/DATASET, "
        "which is where --config.data.source=DATASET looks)",
    )
    pr.add_argument(
        "--format",
        default="auto",
        choices=FORMAT_CHOICES,
        help="auto: one .npz for CK+/JAFFE/BU-3DFE/RAF-DB, ArrayRecord shards for FER2013/FER+/AffectNet",
    )
    pr.add_argument("--chunk-size", type=int, default=0, help="faces per shard / resume chunk (0: 512 npz, 4096 shards)")
    pr.add_argument("--workers", type=int, default=1, help="processes converting chunks in parallel (default 1)")
    pr.add_argument("--landmarks-csv", default=None, help="CSV path,x0,y0,...,x67,y67 of 68-point landmarks per image")
    pr.add_argument("--frames-per-sequence", type=int, default=3, help="CK+: peak frames per sequence (default 3)")
    pr.add_argument("--min-intensity", type=int, default=1, help="BU-3DFE: lowest expression intensity kept, 1-4")
    pr.add_argument(
        "--class-map",
        default=None,
        help=f"{FOLDER}: NAME=LABEL,... for class folders named otherwise (LABEL: an expression name, 0-7, or drop)",
    )
    pr.add_argument("--subjects-csv", default=None, help=f"{FOLDER}: CSV path,subject (path relative to --raw-dir)")
    pr.add_argument("--overwrite", action="store_true", help="replace a different (or finished) conversion in --out")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=_run_data_prepare)


def _run_data_preview(args: argparse.Namespace) -> int:
    from feratt_jax.data.preview import write_preview

    config = None
    if args.config or args.overrides:
        from feratt_jax.configs import load_config

        config = load_config(args.config or "ferattention", args.overrides)
    path = write_preview(args.out, config, num_subjects=args.subjects, seed=args.seed, preset=args.preset)
    print(f"wrote {path}")
    return 0


def _run_data_prepare(args: argparse.Namespace) -> int:
    from feratt_jax.data.real.prepare import prepare_dataset

    report = prepare_dataset(
        args.dataset,
        args.raw_dir,
        args.out,
        format=args.format,
        chunk_size=args.chunk_size,
        workers=args.workers,
        landmarks_csv=args.landmarks_csv,
        frames_per_sequence=args.frames_per_sequence,
        min_intensity=args.min_intensity,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        class_map=args.class_map,
        subjects_csv=args.subjects_csv,
    )
    print(report.summary())
    return 0


# ==========================================================================
# convert
# ==========================================================================


_CONVERT_DESCRIPTION = """\
Convert between reference PyTorch checkpoints and feratt-jax model exports.

    feratt convert --from-torch chk000100.pth.tar --model ferattention --num-classes 8 --out exports/ck
    feratt convert --to-torch exports/ck --out ck.pth.tar

--from-torch writes a model export (what feratt eval/predict load); --model, --num-classes and --dim
default to the arch/num_classes/num_output_channels a reference trainer file records (the paper-era arch
atentionresnet34 is ferattention_2019). --to-torch writes a .pth.tar the reference's loader accepts.
"""


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert between reference PyTorch checkpoints and feratt-jax exports",
        description=_CONVERT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="FILE", help="reference .pth.tar or bare state_dict to import")
    direction.add_argument("--to-torch", metavar="DIR", help="feratt-jax export directory (or training workdir) to write as a reference .pth.tar")
    p.add_argument("--out", required=True, help="export directory (--from-torch) or .pth.tar file (--to-torch)")
    p.add_argument("--model", help="arch name, e.g. ferattention (default: the file's 'arch')")
    p.add_argument("--num-classes", type=int, help="C (default: the file's 'num_classes')")
    p.add_argument("--dim", type=int, help="embedding size (default: the file's 'num_output_channels', else 32)")
    p.add_argument("--backbone", help="preactresnet18 | resnet18 | cvgg13 (FERAtt variants)")
    p.add_argument("--attention-channels", type=int, help="channels of g_att/g_ft if not num_classes")
    p.add_argument("--no-encoder-alias", action="store_true", help="--to-torch: omit the reference's duplicated attention_map.encoder.* keys")
    p.add_argument("--trust-pickle", action="store_true", help="--from-torch: allow arbitrary pickled objects (only for files you trust)")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from feratt_jax import convert

    if args.from_torch:
        spec_path, spec = convert.from_torch(
            args.from_torch,
            args.out,
            model=args.model,
            num_classes=args.num_classes,
            dim=args.dim,
            backbone=args.backbone,
            attention_channels=args.attention_channels,
            trust_pickle=args.trust_pickle,
        )
        print(f"wrote {spec_path} ({spec['model_name']}, C={spec['num_classes']}, dim={spec['dim']}, options={spec['model_options']})")
        return 0
    path, spec = convert.to_torch(args.to_torch, args.out, include_encoder_alias=not args.no_encoder_alias)
    print(f"wrote {path} ({spec['model_name']}, C={spec['num_classes']}, dim={spec['dim']})")
    if spec.get("extra", {}).get("input_standardization"):
        print(
            f"note: {args.to_torch} was trained with model.input_standardization=True: standardize each image "
            "to zero mean and unit std over its pixels and channels before the model, as the reference's "
            "loaders do not"
        )
    return 0


# ==========================================================================
# bench
# ==========================================================================


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time train/inference steps, FLOPs, MFU and the renderer; optionally beside PyTorch",
        description="Benchmark the trainer's train step (on a pre-rendered batch), the eval forward and the "
        "renderer; --compare-torch runs the PyTorch twin interleaved in the same process.",
    )
    p.add_argument("--model", nargs="+", default=["ferattention"], help=f"one or more of: {_MODEL_HELP}")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32])
    p.add_argument("--image-size", type=int, default=None, help="input side (default 64; 32 for preactresnet18, 224 for resnet18)")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"], help="JAX compute dtype(s); PyTorch runs fp32")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation (default 2)")
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--compare-torch", action="store_true", help="also time the PyTorch implementation (eager and channels_last)")
    p.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when JAX runs on a GPU")
    p.add_argument("--render-batch-size", type=int, nargs="*", default=[32, 256], help="renderer batch sizes (give none to skip)")
    p.add_argument("--render-steps", type=int, default=None, help="timed renderer calls (default --steps)")
    p.add_argument("--yardstick-shape", type=int, nargs=4, default=None, metavar=("B", "H", "W", "C"), help="conv yardstick size")
    p.add_argument(
        "--no-fast-cpu-flags",
        dest="fast_cpu_flags",
        action="store_false",
        help="measure jaxlib's defaults: do not add feratt_jax.xla_cpu.FAST_CPU_FLAGS to XLA_FLAGS (added by default)",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--markdown", default=None, metavar="OUT", help="write the tables as markdown")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from feratt_jax import bench

    # Rebuilt from the parsed arguments: sys.argv is not the bench's own
    # command line when it is called in-process (tests, notebooks).
    skip = {"func", "command", "overrides", "accepts_overrides"}
    options = " ".join(f"--{k.replace('_', '-')}={v}" for k, v in sorted(vars(args).items()) if k not in skip)
    command = f"feratt bench {options}"
    report = bench.run_bench(
        args.model,
        args.batch_size,
        image_size=args.image_size,
        precisions=args.precision,
        steps=args.steps,
        warmup=args.warmup,
        compare_torch=args.compare_torch,
        torch_device=args.torch_device,
        render_batch_sizes=args.render_batch_size,
        render_steps=args.render_steps,
        num_classes=args.num_classes,
        yardstick_shape=tuple(args.yardstick_shape) if args.yardstick_shape else None,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        # Partial results reach the files after every setting ("complete": false until the end).
        checkpoint=lambda partial: bench.write_outputs({**partial, "meta": {**partial["meta"], "command": command}}, args.json, args.markdown),
    )
    report["meta"]["command"] = command
    bench.write_outputs(report, args.json, args.markdown)
    print(bench.to_markdown(report))
    return 0


# ==========================================================================
# represent, predict, kfold
# ==========================================================================


def _add_represent(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "represent",
        help="embeddings of a trained run, the kNN (k=11) recovery test and a 2-D embedding plot",
    )
    p.add_argument("--workdir", required=True, help="feratt train workdir or model export")
    p.add_argument("--split", choices=("val", "test"), default="test", help="held-out set scored by the kNN")
    p.add_argument("--k", type=int, default=None, help="neighbours (default: the reference's 11)")
    p.add_argument("--train-size", type=int, default=0, help="rendered training samples (0 = max(val_size, test_size))")
    p.add_argument("--out", default=None, help="output folder (default WORKDIR/represent)")
    p.set_defaults(func=_run_represent)


def _run_represent(args: argparse.Namespace) -> int:
    from feratt_jax.represent import represent_run

    k = {} if args.k is None else {"k": args.k}
    m = represent_run(args.workdir, split=args.split, train_size=args.train_size, out=args.out, **k)
    if m["representation"] != "embedding":
        print(f"note: {m['note']}")
    summary = {"representation": m["representation"], "k": m["k"], "knn_accuracy": m["accuracy"]}
    summary.update({k: m[k] for k in ("nmi", "macro_precision", "macro_recall", "reference_f1", "classifier_accuracy")})
    summary["out"] = args.out or str(pathlib.Path(args.workdir) / "represent")
    print(json.dumps(summary))
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="find the face in photos (or every frame of a video), classify its expression, write attention overlays",
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="photos (PNG, JPEG, ...) or videos (.mp4, ...: per-frame CSV + annotated video)"
    )
    p.add_argument("--workdir", required=True, help="feratt train workdir or model export")
    p.add_argument("--out", default=None, help="folder for overlay PNGs and predictions.json (default WORKDIR/predict)")
    p.add_argument("--margin", type=float, default=None, help="crop margin per side, as a share of the face box (default 0.25)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    p.add_argument("--smooth", type=float, default=0.0, help="video: moving-average weight of past frames' probabilities, in [0, 1) (0: off)")
    p.add_argument("--batch-size", type=int, default=32, help="video: frames classified per device batch")
    p.add_argument("--no-progress", action="store_true", help="video: no progress bar")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from feratt_jax import video
    from feratt_jax.predict import predict_images

    margin = {} if args.margin is None else {"margin": args.margin}
    for clip in [p for p in args.images if video.is_video(p)]:
        done = video.predict_video(
            clip, args.workdir, out=args.out, smooth=args.smooth, batch_size=args.batch_size, progress=not args.no_progress, **margin
        )
        print(f"{clip}: {done['frames']} frames at {done['fps']:g} fps -> {done['csv']}, {done['video']}")
    photos = [p for p in args.images if not video.is_video(p)]
    if not photos:
        return 0
    results = predict_images(photos, args.workdir, out=args.out, **margin)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        probs = "  ".join(f"{name} {p:.3f}" for name, p in r["probabilities"].items())
        face = "" if r["face_detected"] else "  [no face found: whole image]"
        print(f"{r['image']}: {r['label']} ({r['probability']:.3f})  |  {probs}  ->  {r['overlay']}{face}")
    return 0


def _add_kfold(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kfold",
        help="train folds 0..K-1 of a config (resumable) and write a mean +- std table; extra --config.a.b=value override fields",
    )
    p.add_argument("--config", required=True, help=_CONFIG_HELP)
    p.add_argument("--folds", type=int, required=True, help="number of folds K (at most what the data config defines)")
    p.add_argument("--workdir", required=True, help="parent folder; fold k trains in WORKDIR/fold_k")
    p.add_argument("--distributed", action="store_true", help=_DISTRIBUTED_HELP)
    p.set_defaults(func=_run_kfold, accepts_overrides=True)


def _run_kfold(args: argparse.Namespace) -> int:
    from feratt_jax import configs, kfold, validation

    config = configs.load_config(args.config, args.overrides)
    kfold.check_folds(config, args.folds)  # before any multi-host rendezvous
    validation.validate(kfold.fold_config(config, 0))
    _initialize_distributed(args.distributed, config)
    if any(o.removeprefix("--").startswith("config.data.fold=") for o in args.overrides):
        print("note: --config.data.fold is ignored by kfold (every fold 0..K-1 is run)")
    result = kfold.run_kfold(config, args.folds, args.workdir, config_spec=args.config)
    if "stopped" in result:
        return 0
    mean, std = result["mean"], result["std"]
    print(
        f"{result['folds']}-fold test: "
        + "  ".join(f"{t} {100 * mean[k]:.2f} +- {100 * std[k]:.2f}" for k, t in kfold.COLUMNS)
        + f"  ({args.workdir}/kfold.md)"
    )
    return 0


# ==========================================================================
# The parser and main
# ==========================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feratt", description="FERAtt in JAX/Flax")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_train, _add_eval, _add_export, _add_data, _add_convert, _add_bench, _add_represent, _add_predict, _add_kfold):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(join_config_overrides(sys.argv[1:] if argv is None else list(argv)))
    overrides = [a for a in extra if a.startswith("--config.")]
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    args.overrides = overrides
    if getattr(args, "fast_cpu_flags", True):
        # Before JAX starts its backends: XLA reads XLA_FLAGS once (docs/performance.md).
        from feratt_jax.xla_cpu import apply_fast_cpu_flags

        apply_fast_cpu_flags()
    from feratt_jax.workdir_lock import WorkdirBusyError

    name = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError, WorkdirBusyError) as err:
        # User errors (bad names, missing files, a corrupt checkpoint, a
        # missing optional extra, a workdir another trainer holds): one
        # clear line, no traceback.
        print(f"feratt {name}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"feratt {name}: error: {err.strerror}", file=sys.stderr)
        return 1


def join_config_overrides(argv: list[str]) -> list[str]:
    """``--config.a.b VALUE`` -> ``--config.a.b=VALUE`` (absl's spaced form), other arguments unchanged."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--config.") and "=" not in item and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            joined.append(f"{item}={argv[i + 1]}")
            i += 2
            continue
        joined.append(item)
        i += 1
    return joined


if __name__ == "__main__":
    sys.exit(main())
