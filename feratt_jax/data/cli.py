"""``feratt data ...`` subcommands; registered by the top-level ``feratt`` CLI.

``feratt_jax/cli.py`` calls :func:`add_data_subcommands` with its argparse
sub-parsers; each leaf parser sets ``func(args) -> int`` as its default.
"""

from __future__ import annotations

import argparse


def add_data_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``data`` command group (``data preview``, ``data prepare``).

    Args:
      subparsers: the object returned by ``parser.add_subparsers()``.

    Returns:
      The ``data`` parser.
    """
    data = subparsers.add_parser(
        "data", help="data tools: preview, prepare", description="Synthetic data preview; real-dataset conversion."
    )
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True
    pv = sub.add_parser(
        "preview",
        help="write a PNG grid of faces, composites, masks and labels",
        description="Render a few synthetic faces of every class and write a PNG contact sheet.",
    )
    pv.add_argument("--out", required=True, help="output PNG path")
    pv.add_argument(
        "--config",
        default=None,
        help="experiment config FILE[:ARG] (e.g. experiments/configs/ferattention.py:quick); its data section is used",
    )
    pv.add_argument("--subjects", type=int, default=2, help="number of subjects shown (default 2)")
    pv.add_argument("--seed", type=int, default=0, help="render seed (default 0)")
    pv.add_argument("--preset", default=None, help="renderer preset: train, eval or identity (default: the config's)")
    pv.set_defaults(func=run_preview)
    pr = sub.add_parser(
        "prepare",
        help="convert a real dataset (CK+, JAFFE, BU-3DFE, FER2013, FER+, AffectNet, RAF-DB) into aligned faces",
        description="Parse a dataset's native layout, align every face into a 128x128 dark face and write the "
        "records that --config.data.source reads. Interrupted conversions resume.",
    )
    from feratt_jax.data.real.prepare import add_prepare_arguments, run_prepare

    add_prepare_arguments(pr)
    pr.set_defaults(func=run_prepare)
    return data


def run_preview(args: argparse.Namespace) -> int:
    """Handler of ``feratt data preview``."""
    from feratt_jax.data.preview import write_preview

    config = None
    if args.config:
        from feratt_jax.configs import load_config

        config = load_config(args.config)
    path = write_preview(args.out, config, num_subjects=args.subjects, seed=args.seed, preset=args.preset)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m feratt_jax.data.cli preview --out x.png``)."""
    parser = argparse.ArgumentParser(prog="feratt")
    add_data_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
