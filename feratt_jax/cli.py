"""The ``feratt`` command line. Thin: every subcommand calls a library function.

Subcommands register themselves through small ``add_*`` functions kept next
to the code they drive, so this file only wires them together.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import Sequence

from feratt_jax.bench_cli import add_bench_subcommand
from feratt_jax.data.cli import add_data_subcommands
from feratt_jax.interop.cli import add_convert_subcommand
from feratt_jax.kfold import add_kfold_subcommand
from feratt_jax.predict import add_predict_subcommand
from feratt_jax.represent import add_represent_subcommand


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameter counts, output shapes and FLOPs of a model")
    p.add_argument("--model", required=True, help="arch name, e.g. ferattention, ferattentiongmm, preactresnet18")
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
    p.add_argument("--config", required=True, help="experiments/configs/NAME.py[:quick|tiny]")
    p.add_argument("--workdir", required=True)
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host)")
    p.set_defaults(func=_run_train, accepts_overrides=True)


def _run_train(args: argparse.Namespace) -> int:
    from feratt_jax import configs

    config = configs.load_config(args.config, args.overrides)
    if args.distributed or config.train.distributed:
        import jax

        jax.distributed.initialize()
    from feratt_jax.train import train_and_evaluate

    summary = train_and_evaluate(config, args.workdir)
    if "test" in summary:
        test = summary["test"]
        print(
            f"test accuracy {test['accuracy']:.4f}  macro-P {test['macro_precision']:.4f}  "
            f"macro-R {test['macro_recall']:.4f}  reference-F1 {test['reference_f1']:.4f}  "
            f"({test['num_examples']} images; {args.workdir}/eval/metrics.json)"
        )
        if config.train.get("final_figures", False):
            _write_final_figures(args.workdir)
    return 0


def _write_final_figures(workdir: str) -> None:
    """The test confusion matrix and attention/reconstruction grid of the best checkpoint (``feratt eval``'s)."""
    from feratt_jax.evaluate import evaluate_run

    evaluate_run(workdir, split="test")
    print(f"figures: {workdir}/eval/confusion_test.png, {workdir}/eval/attention_test.png")


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
    from feratt_jax.export import FORMATS

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feratt", description="FERAtt in JAX/Flax")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_info(subparsers)
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_export(subparsers)
    # Each registers its arguments only; the heavy imports (torch, the
    # renderer, the benchmark) happen when the subcommand runs.
    add_data_subcommands(subparsers)
    add_convert_subcommand(subparsers)
    add_bench_subcommand(subparsers)
    add_represent_subcommand(subparsers)
    add_predict_subcommand(subparsers)
    add_kfold_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before JAX starts its backends: XLA reads XLA_FLAGS once (docs/performance.md).
    from feratt_jax.xla_cpu import apply_fast_cpu_flags

    apply_fast_cpu_flags()
    parser = build_parser()
    args, extra = parser.parse_known_args(join_config_overrides(sys.argv[1:] if argv is None else list(argv)))
    overrides = [a for a in extra if a.startswith("--config.")]
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown or (overrides and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    args.overrides = overrides
    from feratt_jax.workdir_lock import WorkdirBusyError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError, WorkdirBusyError) as err:
        # User errors (bad names, missing files, a missing optional extra,
        # a workdir another trainer holds): one clear line, no traceback.
        print(f"feratt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"feratt {args.command}: error: {err.strerror}", file=sys.stderr)
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
