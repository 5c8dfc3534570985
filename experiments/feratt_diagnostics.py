"""Why FERAtt does (not) beat the baseline: diagnostics of the paper-table runs.

Reads the fold workdirs that ``experiments/paper_table.py`` trained
(``<workdir>/<method>/fold_<k>``) and measures, on each fold's fixed test set:

* **BatchNorm lag**: test accuracy with the running statistics the trainer
  evaluates with, with statistics re-estimated for the same weights over
  training composites ("precise BN"), and with each test batch's own
  statistics; for the best-validation and the last checkpoint.
* **Attention** (FERAtt): is the attention map on the face? Mean attention
  on face / background pixels and the per-image pixel AUC against the
  renderer's face mask, trained vs the same network untrained.
* **Reconstruction** (FERAtt): L1 error on and off the face against the clean
  target, next to trivial predictors (all zeros, copy the input, the input
  cut out by the true mask).
* **Classifier head** (FERAtt): the trained head fed the clean target face or
  the raw composite instead of the reconstruction.
* **Loss balance** (FERAtt): each loss term's gradient norm per network part
  and its cosine with the cross-entropy gradient on the shared trunk, over
  the first 8 batches of the training stream.

Writes ``diagnostics.json``, ``diagnostics.md`` and ``attention_<method>.png``
(fold 0) to ``--out``. Folds already in ``diagnostics.json`` are kept, so a
rerun only adds new folds (``--redo`` recomputes the chosen methods). Roughly two minutes per fold and
method on 2 CPU cores.

    python experiments/feratt_diagnostics.py --workdir runs/paper_table \
        --out experiments/results/paper_table_cpu/diagnostics
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feratt_jax import losses as losses_lib
from feratt_jax.evaluate import attention_grid
from feratt_jax.factory import build_training, loss_options, make_inputs, make_render, model_input_fn
from feratt_jax.kfold import finished_summary
from feratt_jax.models.feratt import backbone_input, make_backbone
from feratt_jax.models.layers import normalize_layer
from feratt_jax.plots import attention_map
from feratt_jax.runs import LoadedRun
from feratt_jax.step import TrainState, as_rgb, predict_dataset
from feratt_jax.train import make_bn_recalibration

METHODS = ("preactresnet18", "ferattention", "ferattentiongmm", "preactresnet18_narrow")
GRADIENT_BATCHES = 8


# ===========================================================================
# The probes: pure functions over a model, its variables and rendered batches
# (the tests call them through tests/experiment_scripts.py)
# ===========================================================================

# Top-level parameter collections of FERAttention, grouped by the paper's parts.
PARTS = {
    "attention": ("attention_map",),
    "features": ("conv_input", "feature", "conv_mid"),
    "reconstruction": ("reconstruction", "conv2_bn"),
    "classifier": ("netclass",),
}
TRUNK_PARTS = ("attention", "features", "reconstruction")


def _rgb(x_BHWC: np.ndarray | jax.Array) -> jax.Array:
    return as_rgb(jnp.asarray(x_BHWC, jnp.float32))


# ---------------------------------------------------------------------------
# Probes: BatchNorm statistics (re-estimation itself lives in feratt_jax.precise_bn)
# ---------------------------------------------------------------------------


def make_train_mode_logits_fn(model: Any, config: ml_collections.ConfigDict) -> Callable:
    """``fn(params, batch_stats, image_BHWC) -> logits`` with BatchNorm normalising by this batch's own statistics."""
    prepare = model_input_fn(config)

    @jax.jit
    def fn(params, batch_stats, image_BHWC):
        outputs, _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            prepare(jnp.asarray(image_BHWC, jnp.float32)),  # prepare makes it RGB
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return outputs["logits"].astype(jnp.float32)

    return fn


# ---------------------------------------------------------------------------
# Attention and reconstruction
# ---------------------------------------------------------------------------


def attention_on_face(attention_BHWC: np.ndarray, mask_BHW1: np.ndarray) -> dict[str, float]:
    """How face-selective and how input-dependent an attention map is, against the renderer's face mask.

    Returns:
      ``auc``: per-image pixel AUC of the image's map as a detector of its
        face (0.5 = blind to the face; below 0.5 = the face marked low,
        which is as selective, since the gate multiplies a signed feature map).
      ``template_auc``: the same AUC for one fixed map, the mean map over
        all images: what a position prior alone achieves.
      ``face_to_background``: mean attention on face pixels over mean on
        background pixels, averaged over images.
      ``across_image_variance``: the share of the maps' variance that is
        between images (mean over pixels of the variance across images, over
        the total variance); 0 = every image gets the same map.
    """
    att_BHW = attention_map(attention_BHWC)
    mask_BHW = np.asarray(mask_BHW1)[..., 0] > 0.5
    if att_BHW.shape != mask_BHW.shape:
        raise ValueError(f"attention {att_BHW.shape} and mask {mask_BHW.shape} differ in shape")
    b = att_BHW.shape[0]
    att_BN, face_BN = att_BHW.reshape(b, -1), mask_BHW.reshape(b, -1)
    n_face = face_BN.sum(axis=1)
    usable = (n_face > 0) & (n_face < face_BN.shape[1])  # both face and background pixels
    if not usable.any():
        raise ValueError("no image has both face and background pixels")
    att_BN, face_BN, n_face = att_BN[usable], face_BN[usable], n_face[usable]
    template_N = att_BHW.mean(axis=0).ravel()
    face_mean = (att_BN * face_BN).sum(axis=1) / n_face
    background_mean = (att_BN * ~face_BN).sum(axis=1) / (face_BN.shape[1] - n_face)
    total = att_BHW.var()
    return {
        "auc": float(np.mean(per_row_auc(att_BN, face_BN))),
        "template_auc": float(np.mean(per_row_auc(template_N, face_BN))),
        "face_to_background": float(np.mean(face_mean / np.maximum(background_mean, 1e-12))),
        "across_image_variance": float(att_BHW.var(axis=0).mean() / total) if total > 0 else float("nan"),
    }


def per_row_auc(scores_BN: np.ndarray, positive_BN: np.ndarray) -> np.ndarray:
    """The pixel AUC (P(score of a random positive > score of a random negative), ties
    counting half: the Mann-Whitney U over ranks) of every row at once; each row must
    hold both classes.

    ``scores`` may be one row (N,) scored against every row of ``positive``:
    it is then ranked once.
    """
    from scipy.stats import rankdata

    ranks = rankdata(scores_BN, axis=-1)
    n_pos = positive_BN.sum(axis=1)
    n_neg = positive_BN.shape[1] - n_pos
    return ((ranks * positive_BN).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def reconstruction_errors(
    reconstruction_BHWC: np.ndarray, x_org_BHWC: np.ndarray, image_BHWC: np.ndarray, mask_BHW1: np.ndarray
) -> dict[str, float]:
    """Mean absolute error inside / outside the face, for the model and three trivial predictors.

    ``x_org`` is the clean face on black (the reconstruction target). The
    predictors: ``zeros`` (right everywhere off the face), ``input`` (copy
    the composite) and ``input_cut_out`` (the composite times the true mask:
    what a perfect attention mask with no relighting would give). The
    ``reference_loss`` is the reference's Att term on the same pair.
    """
    recon = np.asarray(reconstruction_BHWC, np.float64)
    target = np.asarray(_rgb(x_org_BHWC), np.float64)
    image = np.asarray(_rgb(image_BHWC), np.float64)
    face = np.broadcast_to(np.asarray(mask_BHW1) > 0.5, target.shape)
    if recon.shape != target.shape or image.shape != target.shape:
        raise ValueError(f"shapes differ: reconstruction {recon.shape}, x_org {target.shape}, image {image.shape}")

    def l1(pred: np.ndarray) -> dict[str, float]:
        err = np.abs(pred - target)
        return {"face": float(err[face].mean()), "background": float(err[~face].mean())}

    return {
        "model": l1(recon),
        "zeros": l1(np.zeros_like(target)),
        "input": l1(image),
        "input_cut_out": l1(image * face),
        "reference_loss": float(losses_lib.reconstruction_loss(jnp.asarray(target), jnp.asarray(recon))),
    }


def make_classifier_fn(model_config: ml_collections.ConfigDict) -> Callable:
    """``fn(params, batch_stats, image_BHWC) -> logits`` of a trained FERAtt's classification head.

    The head (``netclass``) is fed ``image`` in place of the reconstruction,
    through the same ``normalize_layer`` and backbone input path (no STN
    variants); ``params``/``batch_stats`` are the whole FERAtt's.
    """
    head = make_backbone(
        model_config.backbone,
        int(model_config.num_classes),
        int(model_config.dim) if model_config.name.startswith("ferattentiongmm") else None,
        jnp.float32,
        "netclass",
        int(model_config.backbone_width),
    )

    @jax.jit
    def fn(params, batch_stats, image_BHWC):
        x = backbone_input(model_config.backbone, normalize_layer(_rgb(image_BHWC)))
        outputs = head.apply({"params": params["netclass"], "batch_stats": batch_stats["netclass"]}, x, train=False)
        return outputs["logits"].astype(jnp.float32)

    return fn


# ---------------------------------------------------------------------------
# Loss balance
# ---------------------------------------------------------------------------


def _part_norms(grads: Mapping[str, Any]) -> dict[str, float]:
    norms = {}
    for part, names in PARTS.items():
        leaves = [leaf for name in names if name in grads for leaf in jax.tree.leaves(grads[name])]
        norms[part] = float(jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves))) if leaves else 0.0
    return norms


def _trunk_vector(grads: Mapping[str, Any]) -> jax.Array:
    names = [name for part in TRUNK_PARTS for name in PARTS[part] if name in grads]
    return jnp.concatenate([jnp.ravel(leaf) for name in names for leaf in jax.tree.leaves(grads[name])])


def make_loss_term_gradients_fn(model: Any, config: ml_collections.ConfigDict) -> Callable:
    """``fn(params, batch_stats, rendered, rng) -> report`` of each weighted loss term's gradient.

    The report is ``{"norms": {term: {part: norm}}, "trunk_cosine": {term:
    cos}}``, on one rendered training batch, with the train step's forward
    (train-mode BatchNorm). ``trunk_cosine`` is the cosine between that
    term's gradient and the cross-entropy gradient over the trunk
    (attention, features, reconstruction): the part every FERAtt term reaches.
    """
    options = loss_options(config)
    weights = losses_lib.term_weights(
        options["variant"], **{k: options[k] for k in ("cross_entropy_weight", "reconstruction_weight", "stn_weight", "gaussian_space_weight", "embedding_norm_weight")}
    )
    terms = [t for t, w in weights.items() if w]
    prepare = model_input_fn(config)

    @jax.jit
    def gradients(params, batch_stats, rendered, rng):
        batch = dict(rendered, x_org=_rgb(rendered["x_org"]))
        x = prepare(rendered["image"])

        def term_values(p):
            outputs, _ = model.apply(
                {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
            )
            values = losses_lib.feratt_losses(outputs, batch, rng, **options)
            return jnp.stack([weights[t] * values[t] for t in terms])

        jacobian = jax.jacrev(term_values)(params)  # leaves (T, *shape)
        return {t: jax.tree.map(lambda leaf, i=i: leaf[i], jacobian) for i, t in enumerate(terms)}

    def fn(params, batch_stats, rendered, rng):
        grads = gradients(params, batch_stats, {k: jnp.asarray(v) for k, v in rendered.items()}, rng)
        ce_trunk = _trunk_vector(grads["cross_entropy"])
        cosine = {}
        for t in terms:
            v = _trunk_vector(grads[t])
            denom = float(jnp.linalg.norm(v) * jnp.linalg.norm(ce_trunk))
            cosine[t] = float(jnp.dot(v, ce_trunk) / denom) if denom > 0 else float("nan")
        return {"norms": {t: _part_norms(g) for t, g in grads.items()}, "trunk_cosine": cosine}

    return fn


# ===========================================================================
# The report over the paper-table runs
# ===========================================================================


def _accuracy(logits_NC: np.ndarray, labels_N: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits_NC, -1) == np.asarray(labels_N)))


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def bn_report(run, fns: dict, test: dict[str, np.ndarray]) -> dict[str, float]:
    """Test accuracy of ``run``'s weights under three sources of BatchNorm statistics.

    ``fns["recalibrate"]`` is the trainer's precise-BN re-estimation
    (:func:`feratt_jax.train.make_bn_recalibration`).
    """
    params, running = run.state.params, run.state.batch_stats
    batch = int(run.config.train.eval_batch_size)
    labels = test["label"]

    def accuracy_with(stats) -> float:
        state = TrainState(step=run.state.step, params=params, batch_stats=stats, opt_state=None)
        return _accuracy(predict_dataset(run.eval_step, state, test, batch, run.mesh, keep=("logits",))["logits"], labels)

    precise = fns["recalibrate"](run.state)
    train_mode = np.concatenate([np.asarray(fns["train_mode_logits"](params, running, test["image"][s])) for s in _batches(len(labels), batch)])
    return {
        "step": run.step,
        "running_bn": accuracy_with(running),
        "precise_bn": accuracy_with(precise),
        "test_batch_bn": _accuracy(train_mode, labels),
    }


def feratt_report(run, fns: dict, init_variables, test: dict[str, np.ndarray], data, rng_seed: int = 0) -> dict[str, Any]:
    """Attention, reconstruction, classifier-head and loss-balance figures of one FERAtt run."""

    keep = ("logits", "reconstruction", "attention")
    batch = int(run.config.train.eval_batch_size)
    params, stats = run.state.params, run.state.batch_stats
    out = run.predict(test["image"], keep=keep)
    init_state = TrainState(step=run.state.step, params=init_variables["params"], batch_stats=init_variables["batch_stats"], opt_state=None)
    out_init = predict_dataset(run.eval_step, init_state, test, batch, run.mesh, keep=keep)

    head = {
        source: _accuracy(np.concatenate([np.asarray(fns["classifier"](params, stats, test[source][s])) for s in _batches(len(test["label"]), batch)]), test["label"])
        for source in ("x_org", "image")
    }
    head["reconstruction"] = _accuracy(out["logits"], test["label"])

    # The first GRADIENT_BATCHES batches of the training stream (the same ones for every run of a fold).
    render = make_render(data)
    grads = [
        fns["loss_term_gradients"](params, stats, render(data.train_batches(i)), jax.random.key(rng_seed + i))
        for i in range(GRADIENT_BATCHES)
    ]
    terms = list(grads[0]["norms"])
    parts = list(grads[0]["norms"][terms[0]])
    return {
        "attention": {
            "trained": attention_on_face(out["attention"], test["mask"]),
            "untrained": attention_on_face(out_init["attention"], test["mask"]),
        },
        "reconstruction": {
            "trained": reconstruction_errors(out["reconstruction"], test["x_org"], test["image"], test["mask"]),
            "untrained": reconstruction_errors(out_init["reconstruction"], test["x_org"], test["image"], test["mask"]),
        },
        "classifier_head_on": head,
        "gradient_norms": {t: {p: float(np.mean([g["norms"][t][p] for g in grads])) for p in parts} for t in terms},
        "trunk_cosine_with_cross_entropy": {t: float(np.mean([g["trunk_cosine"][t] for g in grads])) for t in terms},
        "trunk_cosine_std_over_batches": {t: float(np.std([g["trunk_cosine"][t] for g in grads], ddof=1)) for t in terms},
    }


def diagnose_fold(method: str, workdir: pathlib.Path, out: pathlib.Path | None, bn_batches: int) -> dict[str, Any]:
    best = LoadedRun(workdir, which="best")
    latest = LoadedRun(workdir, which="latest")
    data = make_inputs(best.config)
    test = data.test
    # The trainer's own precise BN (same batches, rendered the same way), with --bn-batches batches.
    bn_config = ml_collections.ConfigDict(best.config.to_dict())
    bn_config.train.precise_bn_batches = bn_batches
    fns = {
        "recalibrate": make_bn_recalibration(best.model, bn_config, data, best.mesh),
        "train_mode_logits": make_train_mode_logits_fn(best.model, best.config),
    }
    row: dict[str, Any] = {
        "workdir": str(workdir),
        "recorded_test_accuracy": json.loads((workdir / "eval" / "metrics.json").read_text())["test"]["accuracy"],
        "best": bn_report(best, fns, test),
        "latest": bn_report(latest, fns, test) if latest.step != best.step else None,
    }
    if method.startswith("ferattention"):
        fns["classifier"] = make_classifier_fn(best.config.model)
        fns["loss_term_gradients"] = make_loss_term_gradients_fn(best.model, best.config)
        _, _, _, init_state = build_training(best.config, int(best.config.data.image_size))
        init = jax.jit(init_state)()
        row.update(feratt_report(best, fns, {"params": init.params, "batch_stats": init.batch_stats}, test, data))
        if out is not None:
            attention_grid(best, test, out / f"attention_{method}.png")
    return row


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _section(title: str, note: str, columns: list[str]) -> list[str]:
    """A markdown section: heading, explanation, and the header of a per-(method, fold) table."""
    return ["", f"## {title}", "", note, "", "| method | fold | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Diagnostics of the paper-table runs",
        "",
        "Made by `" + report["command"] + "` from the runs of `experiments/paper_table.py`; "
        "test set of each fold (512 composites of held-out subjects), percent.",
    ]
    lines += _section(
        "BatchNorm statistics: what the network knows vs what evaluation shows",
        "running = the trainer's evaluation (PyTorch-style running averages, momentum 0.1); precise = "
        f"statistics re-estimated for the same weights over {report['bn_batches']} training batches; "
        "test-batch = each test batch (`train.eval_batch_size` images) normalised by its own statistics.",
        ["best step", "running", "precise", "test-batch", "last step", "running", "precise", "test-batch"],
    )
    for method, folds in report["methods"].items():
        for fold, r in folds.items():
            b, last = r["best"], r["latest"] or r["best"]
            lines.append(
                f"| {method} | {fold} | {b['step']} | {_pct(b['running_bn'])} | {_pct(b['precise_bn'])} | {_pct(b['test_batch_bn'])} "
                f"| {last['step']} | {_pct(last['running_bn'])} | {_pct(last['precise_bn'])} | {_pct(last['test_batch_bn'])} |"
            )
    lines += [
        "",
        "Mean +- sample std over folds (the table's protocol is the first column: best-validation checkpoint, running averages):",
        "",
        "| method | folds | best, running | best, precise | last, running | last, precise |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, folds in report["methods"].items():
        cells = []
        for which in ("best", "latest"):
            for key in ("running_bn", "precise_bn"):
                values = [100 * (r[which] or r["best"])[key] for r in folds.values()]
                cells.append(f"{np.mean(values):.1f} +- {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}")
        lines.append(f"| {method} | {len(folds)} | " + " | ".join(cells) + " |")
    feratt = {m: f for m, f in report["methods"].items() if m.startswith("ferattention")}
    if feratt:
        lines += _section(
            "Attention and reconstruction (best checkpoint)",
            "attention AUC = per-image pixel AUC of the attention map as a face detector (0.5 = blind to the face; "
            "the map multiplies a signed feature map, so marking the face low, AUC near 0, is as selective as AUC near 1); "
            "fixed-template AUC = the same for the mean map over the test set, i.e. a position prior that ignores the image; "
            "between-image share = how much of the maps' variance differs between images (0 = the same map for every image); "
            "face/bg = mean attention on the face over mean on the background. Reconstruction: L1 on face / "
            "background pixels against the clean target; for scale, predicting zeros gives the face's mean "
            "brightness on the face and 0 off it, and cutting the composite out with the true mask gives the "
            "relighting error alone.",
            ["attention AUC (untrained)", "fixed-template AUC", "between-image share of variance (untrained)", "face/bg",
             "recon L1 face", "recon L1 bg", "zeros L1 face", "cut-out L1 face", "copy-input L1 bg"],
        )
        for method, folds in feratt.items():
            for fold, r in folds.items():
                a, rc = r["attention"], r["reconstruction"]
                lines.append(
                    f"| {method} | {fold} | {a['trained']['auc']:.3f} ({a['untrained']['auc']:.3f}) | {a['trained']['template_auc']:.3f} "
                    f"| {a['trained']['across_image_variance']:.3f} ({a['untrained']['across_image_variance']:.3f}) "
                    f"| {a['trained']['face_to_background']:.2f} "
                    f"| {rc['trained']['model']['face']:.3f} | {rc['trained']['model']['background']:.3f} "
                    f"| {rc['trained']['zeros']['face']:.3f} | {rc['trained']['input_cut_out']['face']:.3f} | {rc['trained']['input']['background']:.3f} |"
                )
        lines += _section(
            "Classifier head and loss balance (best checkpoint)",
            "head on X = accuracy of the trained classification head fed X in place of the reconstruction. "
            "Gradient norms of each loss term (with its weight) on the shared trunk (attention + features + "
            f"reconstruction) and on the classifier, mean over {GRADIENT_BATCHES} training batches; cos = cosine with the "
            "cross-entropy gradient on the trunk (mean +- std over those batches).",
            ["head on reconstruction", "head on clean face", "head on composite", "term: trunk grad, classifier grad[, cos]"],
        )
        for method, folds in feratt.items():
            for fold, r in folds.items():
                h = r["classifier_head_on"]
                g = r["gradient_norms"]
                trunk = {t: float(np.sqrt(sum(g[t][p] ** 2 for p in ("attention", "features", "reconstruction")))) for t in g}
                cos, cos_sd = r["trunk_cosine_with_cross_entropy"], r["trunk_cosine_std_over_batches"]
                terms = "; ".join(
                    f"{t}: {trunk[t]:.3g}, {g[t]['classifier']:.3g}" + ("" if t == "cross_entropy" else f", {cos[t]:+.2f} +- {cos_sd[t]:.2f}") for t in g
                )
                lines.append(f"| {method} | {fold} | {_pct(h['reconstruction'])} | {_pct(h['x_org'])} | {_pct(h['image'])} | {terms} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="paper_table.py's --workdir (holds <method>/fold_<k>)")
    p.add_argument("--out", required=True, help="folder for diagnostics.json/.md and the attention PNGs")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--folds", type=int, nargs="*", default=None, help="fold indices (default: every finished fold)")
    p.add_argument("--bn-batches", type=int, default=25, help="training batches for the precise BN statistics")
    p.add_argument("--redo", action="store_true", help="recompute the chosen methods' folds even if --out/diagnostics.json has them")
    args = p.parse_args(argv)

    root = pathlib.Path(args.workdir)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": "python experiments/feratt_diagnostics.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "workdir": str(root),
        "bn_batches": args.bn_batches,
        "methods": {},
    }
    previous = out / "diagnostics.json"
    if previous.is_file():
        # Folds diagnosed by an earlier invocation of the same runs and BN batch count are
        # kept; --redo recomputes only the chosen methods' folds.
        old = json.loads(previous.read_text())
        if old.get("bn_batches") == args.bn_batches and old.get("workdir") == str(root):
            report["methods"] = old["methods"]
    for method in args.methods:
        finished = sorted(
            (int(d.name.split("_")[1]), d) for d in (root / method).glob("fold_*") if finished_summary(d / "eval" / "metrics.json") is not None
        )
        if args.folds is not None:
            finished = [(k, d) for k, d in finished if k in args.folds]
        if not finished:
            print(f"{method}: no finished fold under {root / method}; skipped", flush=True)
            continue
        report["methods"].setdefault(method, {})
        for k, d in finished:
            if str(k) in report["methods"][method] and not args.redo:
                print(f"{method} fold {k}: kept from {previous} (--redo recomputes it)", flush=True)
                continue
            t0 = time.perf_counter()
            row = diagnose_fold(method, d, out if k == 0 else None, args.bn_batches)
            report["methods"][method][str(k)] = row
            report["methods"][method] = dict(sorted(report["methods"][method].items(), key=lambda kv: int(kv[0])))
            # A crash or a time budget later keeps this fold, in both files.
            previous.write_text(json.dumps(report, indent=2))
            (out / "diagnostics.md").write_text(markdown(report))
            print(f"{method} fold {k}: {time.perf_counter() - t0:.0f} s; best {row['best']}", flush=True)
    previous.write_text(json.dumps(report, indent=2))
    (out / "diagnostics.md").write_text(markdown(report))
    print((out / "diagnostics.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
