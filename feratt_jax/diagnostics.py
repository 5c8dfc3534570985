"""Diagnostics of a trained FERAtt run: why does it (not) beat its baseline?

Pure functions over a model, its variables and rendered batches, so a
notebook, ``experiments/feratt_diagnostics.py`` and the tests share them:

* :func:`make_train_mode_logits_fn`: predictions with each batch's own
  BatchNorm statistics; with :mod:`feratt_jax.precise_bn` (statistics
  re-estimated for the current weights) it separates what a network has
  learned from how far its running averages lag behind its weights.
* :func:`attention_on_face`: how much of the attention map falls on the face
  (the renderer's mask) rather than the clutter: mean-attention ratio and a
  per-image pixel AUC (0.5 = attention ignores where the face is).
* :func:`reconstruction_errors`: the reconstruction's L1 error inside and
  outside the face against the clean target, next to trivial predictors.
* :func:`make_classifier_fn`: the trained classification head fed any image
  (e.g. the clean target face: would a perfect reconstruction help?).
* :func:`make_loss_term_gradients_fn`: each loss term's gradient norm per part of
  the network, and how aligned the classification and reconstruction
  gradients are on the shared trunk (loss balance).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feratt_jax import losses as losses_lib
from feratt_jax.plots import attention_map
from feratt_jax.models.feratt import backbone_input, make_backbone
from feratt_jax.models.layers import normalize_layer
from feratt_jax.factory import loss_options, model_input_fn

# Top-level parameter collections of FERAttention, grouped by the paper's parts.
PARTS = {
    "attention": ("attention_map",),
    "features": ("conv_input", "feature", "conv_mid"),
    "reconstruction": ("reconstruction", "conv2_bn"),
    "classifier": ("netclass",),
}
TRUNK_PARTS = ("attention", "features", "reconstruction")


def _rgb(x_BHWC: np.ndarray | jax.Array) -> jax.Array:
    x = jnp.asarray(x_BHWC, jnp.float32)
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


# ---------------------------------------------------------------------------
# BatchNorm statistics (re-estimation itself lives in feratt_jax.precise_bn)
# ---------------------------------------------------------------------------


def make_train_mode_logits_fn(model: Any, config: ml_collections.ConfigDict) -> Callable:
    """``fn(params, batch_stats, image_BHWC) -> logits`` with BatchNorm normalising by this batch's own statistics."""
    prepare = model_input_fn(config)

    @jax.jit
    def fn(params, batch_stats, image_BHWC):
        outputs, _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            prepare(_rgb(image_BHWC)),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return outputs["logits"].astype(jnp.float32)

    return fn


# ---------------------------------------------------------------------------
# Attention and reconstruction
# ---------------------------------------------------------------------------


def pixel_auc(scores_N: np.ndarray, positive_N: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half.

    The Mann-Whitney U statistic over ranks; nan when either class is empty.
    """
    from scipy.stats import rankdata

    scores_N = np.asarray(scores_N, np.float64).ravel()
    positive_N = np.asarray(positive_N, bool).ravel()
    n_pos = int(positive_N.sum())
    n_neg = positive_N.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores_N)  # average ranks for ties
    return float((ranks[positive_N].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
        "auc": float(np.mean(_per_row_auc(att_BN, face_BN))),
        "template_auc": float(np.mean(_per_row_auc(template_N, face_BN))),
        "face_to_background": float(np.mean(face_mean / np.maximum(background_mean, 1e-12))),
        "across_image_variance": float(att_BHW.var(axis=0).mean() / total) if total > 0 else float("nan"),
    }


def _per_row_auc(scores_BN: np.ndarray, positive_BN: np.ndarray) -> np.ndarray:
    """:func:`pixel_auc` of every row at once (each row must hold both classes).

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
        x = prepare(_rgb(rendered["image"]))

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
