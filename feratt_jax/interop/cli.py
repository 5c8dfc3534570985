"""``feratt convert``: reference PyTorch checkpoints <-> feratt-jax model exports.

::

    feratt convert --from-torch chk000100.pth.tar --model ferattention --num-classes 8 --out exports/ck
    feratt convert --to-torch exports/ck --out ck.pth.tar

``--from-torch`` writes a :mod:`feratt_jax.model_io` export (what ``feratt
eval``/``predict`` load). ``--model``/``--num-classes``/``--dim`` default to
the ``arch``/``num_classes``/``num_output_channels`` a reference trainer file
records (the paper-era arch ``atentionresnet34`` is ``ferattention_2019``). ``--to-torch`` writes a ``.pth.tar`` the reference's loader accepts.
torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# The reference spells backbones without the depth; accept both.
_BACKBONE_ALIASES = {"preactresnet": "preactresnet18", "resnet": "resnet18", "cvgg": "cvgg13"}


def add_convert_subcommand(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``convert`` on an argparse subparsers object.

    Args:
      subparsers: from ``parser.add_subparsers()``.

    Returns:
      The ``convert`` parser (its handler is stored as the ``func`` default).
    """
    p = subparsers.add_parser(
        "convert",
        help="convert between reference PyTorch checkpoints and feratt-jax exports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="FILE", help="reference .pth.tar or bare state_dict to import")
    direction.add_argument("--to-torch", metavar="DIR", help="feratt-jax export directory to write as a reference .pth.tar")
    p.add_argument("--out", required=True, help="export directory (--from-torch) or .pth.tar file (--to-torch)")
    p.add_argument("--model", help="arch name, e.g. ferattention (default: the file's 'arch')")
    p.add_argument("--num-classes", type=int, help="C (default: the file's 'num_classes')")
    p.add_argument("--dim", type=int, help="embedding size (default: the file's 'num_output_channels', else 32)")
    p.add_argument("--backbone", help="preactresnet18 | resnet18 | cvgg13 (FERAtt variants)")
    p.add_argument("--attention-channels", type=int, help="channels of g_att/g_ft if not num_classes")
    p.add_argument(
        "--no-encoder-alias",
        action="store_true",
        help="--to-torch: omit the reference's duplicated attention_map.encoder.* keys",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="--from-torch: allow arbitrary pickled objects (only for files you trust)",
    )
    p.set_defaults(func=run_convert)
    return p


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``feratt convert``.

    Args:
      args: parsed arguments.

    Returns:
      Process exit status (0 on success).
    """
    from feratt_jax.model_io import CheckpointError

    try:
        if args.from_torch:
            return _from_torch(args)
        return _to_torch(args)
    except (CheckpointError, FileNotFoundError, ImportError, ValueError) as err:
        print(f"feratt convert: error: {err}", file=sys.stderr)
        return 2


def _from_torch(args: argparse.Namespace) -> int:
    from feratt_jax.interop.torch_checkpoint import read_torch_checkpoint, state_dict_to_variables
    from feratt_jax.model_io import abstract_variables, save_model
    from feratt_jax.models import FERATT_VARIANTS, build_model, model_name_for_arch

    state_dict, meta = read_torch_checkpoint(args.from_torch, weights_only=not args.trust_pickle)
    model_name = args.model or (model_name_for_arch(meta["arch"]) if meta.get("arch") else None)
    num_classes = args.num_classes if args.num_classes is not None else meta.get("num_classes")
    if model_name is None or num_classes is None:
        raise ValueError(f"{args.from_torch} does not record arch/num_classes: pass --model and --num-classes")
    dim = args.dim if args.dim is not None else int(meta.get("num_output_channels", 32))
    options: dict[str, Any] = dict(meta.get("feratt_jax_model_options") or {})
    if args.backbone:
        options["backbone"] = _BACKBONE_ALIASES.get(args.backbone, args.backbone)
    if args.attention_channels:
        options["attention_channels"] = args.attention_channels
    if model_name not in FERATT_VARIANTS and (args.backbone or args.attention_channels):
        raise ValueError(f"--backbone/--attention-channels apply to FERAtt variants, not {model_name!r}")
    module = build_model(model_name, num_classes=int(num_classes), dim=dim, **options)
    variables = state_dict_to_variables(state_dict, abstract_variables(module), source=args.from_torch)
    extra = {"converted_from": str(args.from_torch)}
    for key in ("epoch", "prec", "imsize"):
        if isinstance(meta.get(key), (int, float)):
            extra[f"reference_{key}"] = meta[key]
    spec_path = save_model(
        args.out, variables, model_name=model_name, num_classes=int(num_classes), dim=dim, model_options=options, extra=extra
    )
    print(f"wrote {spec_path} ({model_name}, C={num_classes}, dim={dim}, options={options})")
    return 0


def _to_torch(args: argparse.Namespace) -> int:
    from feratt_jax.interop.torch_checkpoint import export_reference_checkpoint
    from feratt_jax.runs import load_any

    _, variables, spec = load_any(args.to_torch)  # an export or a training workdir
    extra = spec.get("extra", {})
    path = export_reference_checkpoint(
        variables,
        spec["model_name"],
        args.out,
        num_classes=spec["num_classes"],
        dim=spec["dim"],
        include_encoder_alias=not args.no_encoder_alias,
        epoch=int(extra.get("epoch", extra.get("reference_epoch", 0))),
        prec=float(extra.get("prec", extra.get("reference_prec", 0.0))),
        **spec.get("model_options", {}),
    )
    print(f"wrote {path} ({spec['model_name']}, C={spec['num_classes']}, dim={spec['dim']})")
    if extra.get("input_standardization"):
        print(
            f"note: {args.to_torch} was trained with model.input_standardization=True: standardize each image "
            "to zero mean and unit std over its pixels and channels before the model, as the reference's "
            "loaders do not"
        )
    return 0


__all__ = ["add_convert_subcommand", "run_convert"]
