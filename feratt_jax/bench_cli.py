"""``feratt bench``: argparse wiring for :mod:`feratt_jax.bench`.

Kept apart from the library so that building the ``feratt`` parser does not
import JAX; the bench module is imported only when the command runs.

::

    feratt bench --model ferattention --batch-size 32 128 --precision fp32 --compare-torch \\
        --json bench.json --markdown bench.md
    python -m feratt_jax.bench_cli ...   # the same, without the rest of the CLI
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

# Mirrors feratt_jax.models.MODEL_NAMES without importing JAX.
_MODEL_HELP = "ferattention, ferattentiongmm, ferattentionstn, ferattentiongmmstn, preactresnet18, resnet18, cvgg13"


def add_bench_subcommand(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``bench`` on an argparse subparsers object (``feratt bench``)."""
    p = subparsers.add_parser(
        "bench",
        help="time train/inference steps, FLOPs, MFU and the renderer; optionally beside PyTorch",
        description="Benchmark the JAX train step (the trainer's arithmetic on a pre-rendered batch), the eval "
        "forward and the renderer; --compare-torch runs the PyTorch twin interleaved in the same process.",
    )
    add_bench_arguments(p)
    p.set_defaults(func=run_bench_cli)
    return p


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
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


def run_bench_cli(args: argparse.Namespace) -> int:
    if args.fast_cpu_flags:
        # Before JAX starts its backend: XLA reads XLA_FLAGS only then.
        from feratt_jax.xla_cpu import apply_fast_cpu_flags

        apply_fast_cpu_flags()
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m feratt_jax.bench_cli`` (or ``-m feratt_jax.bench``): the bench alone."""
    parser = argparse.ArgumentParser(prog="python -m feratt_jax.bench", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_bench_cli(args)
    except (ValueError, ImportError) as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
