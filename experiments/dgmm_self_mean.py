"""What the DGMM loss and the in-batch nearest-class-mean accuracy give for embeddings that know nothing.

The reference measures each row of a batch against class means that contain the row itself
(docs/reference.md section 7, defect 20). This script draws embeddings with no class information
(i.i.d. normal, times a scale), labels them as the trainer's batches are labelled (B rows, C
classes, B / C rows each), and reports, per scale, the mean DGMM loss (sigma 0.5, soft mixup: the
trainer's default) and the in-batch nearest-class-mean accuracy under both rules: the reference's
(row in its own mean) and this port's default (the mean of the other rows of its class). A loss or
an accuracy that such embeddings reach says nothing about what a network has learned. A control
with class information (class centres plus noise) shows what each rule gives a network that has
learned the classes.

    python experiments/dgmm_self_mean.py --out experiments/results/dgmm_self_mean.json

Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from feratt_jax import losses, metrics

SCALES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 2.0)
# The class-informative control: class centres ~ N(0, I), each row its centre plus N(0, WITHIN^2 I).
WITHIN = 0.5


def measure(batch: int, classes: int, dim: int, draws: int, seed: int, scales=SCALES) -> dict:
    """Per rule, embedding kind and scale: mean DGMM loss and in-batch NCM accuracy (percent) over ``draws`` batches.

    Kinds: ``random`` (no class information) and ``informative`` (class centres plus noise), the
    control that says the rule still rewards an embedding that has learned the classes.
    """
    if batch % classes:
        raise ValueError(f"--batch {batch} must be a multiple of --classes {classes}")
    labels_B = jnp.asarray(np.repeat(np.arange(classes), batch // classes))
    rng = np.random.default_rng(seed)
    kinds = {
        "random": rng.normal(size=(draws, batch, dim)),
        "informative": rng.normal(size=(draws, classes, dim))[:, np.asarray(labels_B)]
        + WITHIN * rng.normal(size=(draws, batch, dim)),
    }
    keys_N = jax.random.split(jax.random.PRNGKey(seed), draws)
    out: dict = {"batch": batch, "classes": classes, "dim": dim, "draws": draws, "seed": seed, "within_class_std": WITHIN, "rules": {}}
    for rule, includes_self in (("row_in_own_mean (reference)", True), ("row_left_out (default)", False)):

        @jax.jit
        def mean_figures(z_NBD, s=includes_self):
            # All draws at once: one compiled program per rule, vmapped over the batches.
            loss_N = jax.vmap(
                lambda z, k: losses.gaussian_space_loss(z, labels_B, k, num_classes=classes, class_mean_includes_self=s)
            )(z_NBD, keys_N)
            acc_N = jax.vmap(lambda z: metrics.nearest_class_mean_accuracy(z, labels_B, include_self=s))(z_NBD)
            return jnp.mean(loss_N), jnp.mean(acc_N)

        out["rules"][rule] = {}
        for kind, z_NBD in kinds.items():
            rows = []
            for scale in scales:
                loss, acc = mean_figures(jnp.asarray(z_NBD * scale, jnp.float32))
                rows.append({"scale": scale, "dgmm_loss": round(float(loss), 4), "ncm_accuracy_pct": round(float(acc), 1)})
            out["rules"][rule][kind] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="rows per batch (the trainer's batch size)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--dims", type=int, nargs="+", default=[32, 64], help="embedding sizes (model.dim: 32 here, 64 in the paper)")
    p.add_argument("--draws", type=int, default=20, help="random batches per scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.out is not None and not args.out.parent.is_dir():
        print(f"--out: folder {args.out.parent} does not exist", file=sys.stderr)
        return 2
    results = {"command": "python experiments/dgmm_self_mean.py " + " ".join(argv if argv is not None else sys.argv[1:]), "runs": []}
    for dim in args.dims:
        run = measure(args.batch, args.classes, dim, args.draws, args.seed)
        results["runs"].append(run)
        print(f"B={args.batch} C={args.classes} dim={dim}: DGMM loss / NCM accuracy per scale")
        for rule, by_kind in run["rules"].items():
            for kind, rows in by_kind.items():
                cells = "  ".join(f"x{r['scale']}: {r['dgmm_loss']:.3f} / {r['ncm_accuracy_pct']:.0f}%" for r in rows)
                print(f"  {rule:28s} {kind:11s} {cells}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
