"""The ``feratt`` command line. Thin: every subcommand calls a library function.

Subcommands register themselves through small ``add_*`` functions kept next
to the code they drive, so this file only wires them together.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feratt", description="FERAtt in JAX/Flax")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_info(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as err:
        # User errors (bad names, missing files, a missing optional extra):
        # one clear line, no traceback.
        print(f"feratt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
