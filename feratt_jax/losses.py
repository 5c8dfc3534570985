"""FERAtt training losses (docs/reference.md section 2), as pure, jit-safe functions of arrays.

Terms (each returned separately by `feratt_losses`):

* `cross_entropy`: mean softmax cross-entropy on the logits (the reference's
  `nn.CrossEntropyLoss()`).
* `reconstruction_loss`: the reference's `Attloss`, ``5 * mean(tanh(3 |x_org - att|))``.
* `stn_loss`: the reference's `STNloss`,
  ``10 * mean((warp(x_org, theta*) - warp(x_org, theta))^2)``.
* `gaussian_space_loss`: the reference's `DGMMLoss` (Gaussian class memberships of the embedding,
  with in-batch mixup), with a well-defined soft-label mixup mode (default) and a
  `mixup_label_mode="reference"` mode, and each row measured against the mean of the *other*
  rows of its class (default) or, with ``class_mean_includes_self=True``, against a mean that
  contains the row itself; the two reference options together reproduce the reference bit for
  bit.
* `embedding_norm`: ``||z||_2`` over the whole batch matrix (the reference's ``z.norm(2)``).
* `masked_reconstruction_mse`: the paper-era (commit 53fd5e4) reconstruction term,
  ``2 * min(mean((x_org * mask - att)^2), 30)``; that code's STN term is `stn_loss` with scale 1.

`feratt_losses` composes them per trainer variant (docs/reference.md 2.2). Layout: images are NHWC;
every loss here is a mean over all elements, so the layout does not change the values.

No function loops in Python over data; the only Python branching is on static options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from feratt_jax.ops.spatial_transform import warp_affine

__all__ = [
    "VARIANT_TERMS",
    "PAPER_ERA_VARIANTS",
    "term_weights",
    "REFERENCE_EMBEDDING_NORM_WEIGHT",
    "REFERENCE_SCALES_BY_BATCH_SIZE",
    "cross_entropy",
    "reconstruction_loss",
    "stn_loss",
    "masked_reconstruction_mse",
    "gaussian_space_loss",
    "gaussian_space_loss_with_mix",
    "leave_one_out_scale",
    "sample_mixup",
    "embedding_norm",
    "feratt_losses",
    "reference_loss_options",
]

MixupLabelMode = Literal["soft", "reference"]

# Added to the row sums of the membership matrix before normalising, as in the reference's
# DGMMLoss (eps = 1e-15); it only matters for rows far from every class mean.
_DGMM_EPS = 1e-15

# Which loss terms each trainer variant adds up (docs/reference.md 2.2). "classifier" is the
# PreActResNet18-style baseline: cross-entropy only.
VARIANT_TERMS: dict[str, tuple[str, ...]] = {
    "classifier": ("cross_entropy",),
    "attention": ("cross_entropy", "reconstruction"),
    "attention_stn": ("cross_entropy", "reconstruction", "stn"),
    "attention_gmm": ("cross_entropy", "gaussian_space", "reconstruction", "embedding_norm"),
    "attention_gmm_stn": (
        "cross_entropy",
        "gaussian_space",
        "reconstruction",
        "stn",
        "embedding_norm",
    ),
    # The paper-era trainer (commit 53fd5e4, loss "attgmm"): CE + DGMM + its attLoss, whose two
    # parts are kept as separate terms (masked_reconstruction_mse and the unscaled STN MSE).
    "attention_gmm_stn_2019": ("cross_entropy", "gaussian_space", "reconstruction", "stn"),
}
# Variants whose reconstruction and STN terms are the paper-era definitions.
PAPER_ERA_VARIANTS = ("attention_gmm_stn_2019",)

# Weight of ||z||_2 in the reference trainers: AttentionGMMNeuralNet adds `0.0 * z.norm(2)`
# (a no-op), AttentionGMMSTNNeuralNet adds `1e-4 * z.norm(2)` (docs/reference.md 2.2, defect 9).
REFERENCE_EMBEDDING_NORM_WEIGHT: dict[str, float] = {
    "attention_gmm": 0.0,
    "attention_gmm_stn": 1e-4,
}

# Whether the reference trainer back-propagates `loss * B` instead of `loss` (docs/reference.md 2.2,
# defect 9). HEAD has no trainer for the plain classifier; it is listed as unscaled.
REFERENCE_SCALES_BY_BATCH_SIZE: dict[str, bool] = {
    "classifier": False,
    "attention": True,
    "attention_stn": True,
    "attention_gmm": False,
    "attention_gmm_stn": True,
    "attention_gmm_stn_2019": False,
}


# ----------------------------------------------------------------------------------------------
# Single terms
# ----------------------------------------------------------------------------------------------


def cross_entropy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy, like `torch.nn.CrossEntropyLoss()` with integer targets.

    Args:
      logits_BC: (B, C) unnormalised scores.
      labels_B: (B,) class indices; float labels (the reference's ``meta[:, 0]``) are truncated to
        integers like ``.long()``.

    Returns:
      Scalar mean over the batch of ``-log softmax(logits)[label]``.
    """
    logits_BC = jnp.asarray(logits_BC)
    labels_B = jnp.asarray(labels_B).astype(jnp.int32)
    log_probs_BC = jax.nn.log_softmax(logits_BC, axis=-1)
    picked_B = jnp.take_along_axis(log_probs_BC, labels_B[:, None], axis=-1)[:, 0]
    return -jnp.mean(picked_B)


RECONSTRUCTION_FORMS = ("tanh", "linear")


def reconstruction_loss(x_org: jax.Array, reconstruction: jax.Array, form: str = "tanh") -> jax.Array:
    """The reference's `Attloss`: ``5 * mean(tanh(3 |x_org - reconstruction|))`` (``form="tanh"``).

    ``form="linear"``: ``5 * mean(3 |x_org - reconstruction|)``, the same slope at zero error
    without the saturation. The tanh form gives a face pixel predicted black (error ~0.64) 8 %
    of the gradient of a nearly right pixel, while the background, most of a ``train``-preset
    frame, is exactly right when black; with the module's final ReLU, a run whose
    reconstruction has gone black stays there (docs/training.md section 8).

    The reference computes ``d = exp(6|x_org - att|)`` and ``(d - 1)/(d + 1)``, i.e.
    ``(e^{6 delta} - 1)/(e^{6 delta} + 1)``, which equals ``tanh(3 delta)``; tanh is used here
    because it cannot overflow (exp(6 delta) overflows float32 for delta > ~14.7). The reference's
    ``clamp(max=30)`` never acts (every element is < 1) and is omitted, as is its unused mask.

    Args:
      x_org: clean target image (any shape, e.g. (B, H, W, 3)).
      reconstruction: the model's reconstruction ("att"), same shape.
      form: "tanh" (the reference) or "linear".

    Returns:
      Scalar loss (in [0, 5) for the tanh form).
    """
    if form not in RECONSTRUCTION_FORMS:
        raise ValueError(f"reconstruction form must be one of {RECONSTRUCTION_FORMS}, got {form!r}")
    x_org = jnp.asarray(x_org)
    reconstruction = jnp.asarray(reconstruction)
    if x_org.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch: x_org {x_org.shape} vs {reconstruction.shape}")
    error = 3.0 * jnp.abs(x_org - reconstruction)
    return 5.0 * jnp.mean(jnp.tanh(error) if form == "tanh" else error)


def stn_loss(
    x_org_BHWC: jax.Array, theta_pred_B23: jax.Array, theta_target_B23: jax.Array, *, scale: float = 10.0
) -> jax.Array:
    """The reference's `STNloss`: 10 x MSE between x_org warped by the target and by the prediction
    (``scale=1``: the paper-era code's unweighted term).

    Both warps use PyTorch's `affine_grid`/`grid_sample` semantics (align_corners=False, bilinear,
    zero padding) at x_org's own size. The gradient reaches `theta_pred_B23` through the bilinear
    weights (and the target theta too, if it is not constant).

    Args:
      x_org_BHWC: (B, H, W, C) clean image.
      theta_pred_B23: (B, 2, 3) predicted theta (or (B, 6)).
      theta_target_B23: (B, 2, 3) target theta from the data generator (or (B, 6), the layout of
        the reference's ``meta[:, 1:]``).

    Returns:
      Scalar ``scale * mean((warp(x_org, target) - warp(x_org, pred))^2)``.
    """
    x_org_BHWC = jnp.asarray(x_org_BHWC)
    batch = x_org_BHWC.shape[0]
    theta_pred_B23 = jnp.asarray(theta_pred_B23).reshape(batch, 2, 3)
    theta_target_B23 = jnp.asarray(theta_target_B23).reshape(batch, 2, 3)
    warped_target = warp_affine(x_org_BHWC, theta_target_B23)
    warped_pred = warp_affine(x_org_BHWC, theta_pred_B23)
    return scale * jnp.mean((warped_target - warped_pred) ** 2)


def masked_reconstruction_mse(
    x_org: jax.Array, mask: jax.Array, reconstruction: jax.Array, *, weight: float = 2.0, clamp_max: float = 30.0
) -> jax.Array:
    """The paper-era reconstruction term: ``weight * min(mean((x_org * mask - att)^2), clamp_max)``.

    The target is the clean face times the face mask (the reference's ``y_mask[:, 1]``). The clamp
    is the reference's ``torch.clamp(loss, max=30)``: above it the term is constant and passes no
    gradient (the paper-era reconstruction is unbounded, so it can act early in training).

    Args:
      x_org: (B, H, W, C) clean image.
      mask: (B, H, W, 1) or (B, H, W, C) face mask (1 on the face).
      reconstruction: (B, H, W, C) the model's reconstruction.

    Returns:
      Scalar loss.
    """
    x_org, mask, reconstruction = jnp.asarray(x_org), jnp.asarray(mask), jnp.asarray(reconstruction)
    if x_org.shape != reconstruction.shape or mask.shape[:-1] != x_org.shape[:-1]:
        raise ValueError(f"shape mismatch: x_org {x_org.shape}, mask {mask.shape}, reconstruction {reconstruction.shape}")
    mse = jnp.mean((x_org * mask.astype(x_org.dtype) - reconstruction) ** 2)
    return weight * jnp.minimum(mse, clamp_max)


def embedding_norm(z: jax.Array) -> jax.Array:
    """Frobenius norm of the whole batch matrix, the reference's ``z.norm(2)`` (not squared, not
    averaged over the batch).

    The gradient at z = 0 is defined as 0 (as in PyTorch) instead of the NaN of a plain sqrt.

    Args:
      z: (B, D) embeddings (any shape).

    Returns:
      Scalar ``sqrt(sum(z**2))``.
    """
    z = jnp.asarray(z)
    squared = jnp.sum(z * z)
    positive = squared > 0
    safe = jnp.where(positive, squared, jnp.ones_like(squared))
    return jnp.where(positive, jnp.sqrt(safe), jnp.zeros_like(squared))


# ----------------------------------------------------------------------------------------------
# Gaussian-space (DGMM) loss
# ----------------------------------------------------------------------------------------------


def sample_mixup(
    rng: jax.Array, batch_size: int, *, alpha: float = 2.0, dtype: Any = jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Draws the reference's mixup parameters: one scalar lambda ~ Beta(alpha, alpha) per call and a
    random permutation of the batch.

    Args:
      rng: PRNG key.
      batch_size: B (static).
      alpha: Beta parameter (the reference uses 2.0).
      dtype: float dtype of lambda.

    Returns:
      (lam, perm_B): a scalar and an int32 permutation of ``arange(B)``.
    """
    rng_lam, rng_perm = jax.random.split(rng)
    lam = jax.random.beta(rng_lam, alpha, alpha, dtype=dtype)
    perm_B = jax.random.permutation(rng_perm, batch_size).astype(jnp.int32)
    return lam, perm_B


def _class_means(rows_ND: jax.Array, weights_NC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted class means and a presence mask.

    Args:
      rows_ND: (N, D) embeddings.
      weights_NC: (N, C) non-negative membership weights (0/1 for hard labels).

    Returns:
      (means_CD, present_C): ``means[c] = sum_n w[n,c] x[n] / sum_n w[n,c]`` for classes with
      positive total weight, 0 for the others (whose `present` entry is False).
    """
    counts_C = jnp.sum(weights_NC, axis=0)
    present_C = counts_C > 0
    # HIGHEST precision: the accelerator default may round f32 matmul inputs (TF32/bf16 passes).
    sums_CD = jnp.einsum("nc,nd->cd", weights_NC, rows_ND, precision=jax.lax.Precision.HIGHEST)
    safe_counts_C = jnp.where(present_C, counts_C, jnp.ones_like(counts_C))
    return sums_CD / safe_counts_C[:, None], present_C


def _gaussian_memberships(
    rows_ND: jax.Array, means_CD: jax.Array, present_NC: jax.Array, sigma: float, dist_scale_NC: jax.Array | None = None
) -> jax.Array:
    """Normalised Gaussian memberships pi (N, C) of the reference's DGMMLoss.

    ``pi[n, c] = exp(-s[n, c] ||x_n - mu_c||^2 / (2 sigma^2))`` where ``present[n, c]`` and 0
    elsewhere (the reference skips absent classes and leaves the column at 0), then
    ``pi / (sum_c pi + 1e-15)`` clipped to [0, 1]. ``s`` (default 1) turns a distance to the full
    class mean into the distance to the mean without the row (`leave_one_out_scale`).
    """
    # Direct differences rather than the ||x||^2 + ||mu||^2 - 2 x.mu expansion: exact like the
    # reference and never negative.
    diff_NCD = rows_ND[:, None, :] - means_CD[None, :, :]
    sq_dist_NC = jnp.sum(diff_NCD * diff_NCD, axis=-1)
    if dist_scale_NC is not None:
        sq_dist_NC = sq_dist_NC * dist_scale_NC
    gauss_NC = jnp.exp(-sq_dist_NC / (2.0 * sigma**2))
    pi_NC = jnp.where(present_NC, gauss_NC, jnp.zeros_like(gauss_NC))
    pi_NC = pi_NC / (jnp.sum(pi_NC, axis=-1, keepdims=True) + _DGMM_EPS)
    return jnp.clip(pi_NC, 0.0, 1.0)


def leave_one_out_scale(weights_NC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row distance scale and presence for class means that leave the row itself out.

    With 0/1 membership w[n, c] (row n is one of the rows averaged into mean c) and class size N_c, the mean of class c without row n is
    ``(N_c mu_c - w x_n) / (N_c - w)``, so ``x_n - mu_c^(-n) = N_c / (N_c - w) (x_n - mu_c)``:
    the squared distance scales by ``(N_c / (N_c - w))^2`` (1 for classes the row is not in).
    A row alone in its class has no mean to be measured against: that column is absent for it.

    Returns:
      (scale_NC, present_NC).
    """
    counts_1C = jnp.sum(weights_NC, axis=0, keepdims=True)
    others_NC = counts_1C - weights_NC
    present_NC = others_NC > 0
    safe_others_NC = jnp.where(present_NC, others_NC, jnp.ones_like(others_NC))
    return (counts_1C / safe_others_NC) ** 2, present_NC


def gaussian_space_loss_with_mix(
    embedding_BD: jax.Array,
    labels_B: jax.Array,
    lam: jax.Array | float | None,
    perm_B: jax.Array | None,
    *,
    num_classes: int,
    sigma: float = 0.5,
    mixup_label_mode: MixupLabelMode = "soft",
    class_mean_includes_self: bool = False,
) -> jax.Array:
    """DGMM loss with explicit mixup parameters (for parity tests and custom samplers).

    Rows: the B embeddings, followed (when ``lam`` is given) by B mixed rows
    ``lam * x + (1 - lam) * x[perm]``. The loss is ``mean_rows sum_c (pi - Y)^2`` with pi the
    normalised Gaussian memberships to the class means (see `_gaussian_memberships`).

    Modes for the class means mu_c and the targets Y:

    * ``"soft"`` (default, a fix of reference defect 10). mu_c is the mean of the *un-mixed*
      rows of class c (hard labels). Un-mixed rows have one-hot targets; mixed row i has the soft
      target ``lam * onehot(y_i) + (1 - lam) * onehot(y_perm[i])``. Why un-mixed rows only: they
      are the true class samples, so mu_c is the class centroid (mixed rows would pull it toward
      other classes), every class that a soft target refers to is present among them (perm only
      reorders the batch), so no target mass ever lands on a masked class, and without mixup
      and with ``class_mean_includes_self`` the loss is exactly the reference's. The reference's
      means differ only by also averaging in the same-class mixes whose float label happens to
      equal c exactly.
    * ``"reference"``: the reference's behaviour. Labels are mixed as floats
      (``y * lam + y[perm] * (1 - lam)`` in float32), a row belongs to class c iff its float label
      equals c exactly (so cross-class mixes usually have an all-zero target, and e.g. a 50/50
      mix of classes 0 and 2 becomes class 1), mu_c is the mean over all 2B member rows.

    In both modes a class with no member rows has a zero pi column (masked with `jnp.where`).

    Each member row is measured against the mean of the *other* members of its class (a fix,
    docs/reference.md section 7, defect 20). The reference's mean contains the row itself, which
    pulls every row toward its own class mean whatever the embedding: at B = 32, C = 8 and the
    right scale, random embeddings with no class information reach a lower loss than a trained
    network did, so the loss can fall without the embedding learning anything.
    ``class_mean_includes_self`` restores the reference's means for parity. Leaving the row out,
    a row alone in its class has no own-class mean: that column is absent for it (its target
    term is a constant).

    Args:
      embedding_BD: (B, D) embeddings z.
      labels_B: (B,) class labels (int or integer-valued float).
      lam: scalar mixing weight, or None for no mixup (B rows only).
      perm_B: (B,) permutation of the batch; required when `lam` is given.
      num_classes: C (static).
      sigma: Gaussian width (the reference's HEAD trainers use 0.5).
      mixup_label_mode: "soft" or "reference" (static).
      class_mean_includes_self: measure each row against a class mean that contains it (the
        reference) instead of the mean of the other rows of its class (static).

    Returns:
      Scalar loss.
    """
    if mixup_label_mode not in ("soft", "reference"):
        raise ValueError(
            f"mixup_label_mode must be 'soft' or 'reference', got {mixup_label_mode!r}"
        )
    if lam is not None and perm_B is None:
        raise ValueError("perm_B is required when lam is given")
    x_BD = jnp.asarray(embedding_BD)
    labels_B = jnp.asarray(labels_B)
    if x_BD.ndim != 2 or labels_B.shape != (x_BD.shape[0],):
        raise ValueError(f"expected (B, D) and (B,), got {x_BD.shape} and {labels_B.shape}")
    dtype = x_BD.dtype

    if mixup_label_mode == "soft":
        onehot_BC = jax.nn.one_hot(labels_B.astype(jnp.int32), num_classes, dtype=dtype)
        means_CD, present_C = _class_means(x_BD, onehot_BC)
        rows_ND, targets_NC = x_BD, onehot_BC
        members_NC = onehot_BC  # only un-mixed rows enter the means
        if lam is not None:
            lam = jnp.asarray(lam, dtype=dtype)
            x_mix_BD = lam * x_BD + (1.0 - lam) * x_BD[perm_B]
            y_mix_BC = lam * onehot_BC + (1.0 - lam) * onehot_BC[perm_B]
            rows_ND = jnp.concatenate([x_BD, x_mix_BD], axis=0)
            targets_NC = jnp.concatenate([onehot_BC, y_mix_BC], axis=0)
            members_NC = jnp.concatenate([onehot_BC, jnp.zeros_like(y_mix_BC)], axis=0)
    else:
        # Reference: float32 labels, mixed with the same float32 arithmetic as the torch code
        # (lam is a float32 tensor there, so 1 - lam is rounded to float32 too).
        y_B = labels_B.astype(jnp.float32)
        rows_ND, y_N = x_BD, y_B
        if lam is not None:
            lam32 = jnp.asarray(lam, dtype=jnp.float32)
            lam_x = lam32.astype(dtype)
            x_mix_BD = x_BD * lam_x + x_BD[perm_B] * (1.0 - lam_x)
            y_mix_B = y_B * lam32 + y_B[perm_B] * (jnp.float32(1.0) - lam32)
            rows_ND = jnp.concatenate([x_BD, x_mix_BD], axis=0)
            y_N = jnp.concatenate([y_B, y_mix_B], axis=0)
        classes_1C = jnp.arange(num_classes, dtype=jnp.float32)[None, :]
        targets_NC = (y_N[:, None] == classes_1C).astype(dtype)
        means_CD, present_C = _class_means(rows_ND, targets_NC)
        members_NC = targets_NC

    if class_mean_includes_self:
        dist_scale_NC = None
        present_NC = jnp.broadcast_to(present_C[None, :], members_NC.shape)
    else:
        dist_scale_NC, present_NC = leave_one_out_scale(members_NC)
    pi_NC = _gaussian_memberships(rows_ND, means_CD, present_NC, sigma, dist_scale_NC)
    return jnp.mean(jnp.sum((pi_NC - targets_NC) ** 2, axis=-1))


def gaussian_space_loss(
    embedding_BD: jax.Array,
    labels_B: jax.Array,
    rng: jax.Array | None,
    *,
    num_classes: int,
    sigma: float = 0.5,
    mixup: bool = True,
    mixup_label_mode: MixupLabelMode = "soft",
    mixup_alpha: float = 2.0,
    class_mean_includes_self: bool = False,
) -> jax.Array:
    """The reference's DGMM (Gaussian-space representation) loss with in-batch mixup.

    Draws lambda ~ Beta(mixup_alpha, mixup_alpha) (one scalar per call) and a batch permutation
    from `rng`, then calls `gaussian_space_loss_with_mix`; see there for the two label modes and
    the masking of classes absent from the batch.

    Args:
      embedding_BD: (B, D) embeddings z.
      labels_B: (B,) class labels.
      rng: PRNG key; may be None when ``mixup=False``.
      num_classes: C (static).
      sigma: Gaussian width (reference HEAD: 0.5).
      mixup: add the B mixed rows (the reference always does).
      mixup_label_mode: "soft" (default) or "reference".
      mixup_alpha: Beta parameter (reference: 2.0).
      class_mean_includes_self: the reference's class means, which contain the row itself.

    Returns:
      Scalar loss.
    """
    embedding_BD = jnp.asarray(embedding_BD)
    lam = perm_B = None
    if mixup:
        if rng is None:
            raise ValueError("gaussian_space_loss needs an rng when mixup=True")
        lam, perm_B = sample_mixup(
            rng, embedding_BD.shape[0], alpha=mixup_alpha, dtype=embedding_BD.dtype
        )
    return gaussian_space_loss_with_mix(
        embedding_BD,
        labels_B,
        lam,
        perm_B,
        num_classes=num_classes,
        sigma=sigma,
        mixup_label_mode=mixup_label_mode,
        class_mean_includes_self=class_mean_includes_self,
    )


# ----------------------------------------------------------------------------------------------
# Per-variant composition (docs/reference.md 2.2)
# ----------------------------------------------------------------------------------------------


def reference_loss_options(variant: str) -> dict[str, Any]:
    """Keyword options of `feratt_losses` that reproduce the reference trainer of `variant`.

    Returns ``{"scale_by_batch_size": ..., "embedding_norm_weight": ...}`` (the latter only for the
    GMM variants) and, for the variants with a DGMM term, ``class_mean_includes_self=True`` and
    the reference's sigma, mixup and ``mixup_label_mode``.
    """
    if variant not in VARIANT_TERMS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANT_TERMS)}")
    options: dict[str, Any] = {"scale_by_batch_size": REFERENCE_SCALES_BY_BATCH_SIZE[variant]}
    if "gaussian_space" in VARIANT_TERMS[variant]:
        options["class_mean_includes_self"] = True
    if variant in PAPER_ERA_VARIANTS:  # DGMMLoss(sigma=1.0, mix=False), the constructor's defaults then
        options.update(sigma=1.0, mixup=False)
    if variant in REFERENCE_EMBEDDING_NORM_WEIGHT:
        options["embedding_norm_weight"] = REFERENCE_EMBEDDING_NORM_WEIGHT[variant]
        options["mixup_label_mode"] = "reference"
        options["sigma"] = 0.5
    return options


def term_weights(
    variant: str,
    *,
    cross_entropy_weight: float = 1.0,
    reconstruction_weight: float = 1.0,
    stn_weight: float = 1.0,
    gaussian_space_weight: float = 1.0,
    embedding_norm_weight: float | None = None,
) -> dict[str, float]:
    """The weight of each term of ``variant`` in :func:`feratt_losses`' total.

    ``embedding_norm_weight=None`` is the reference's weight for the variant.
    """
    if variant not in VARIANT_TERMS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANT_TERMS)}")
    if embedding_norm_weight is None:
        embedding_norm_weight = REFERENCE_EMBEDDING_NORM_WEIGHT.get(variant, 0.0)
    weights = {
        "cross_entropy": cross_entropy_weight,
        "gaussian_space": gaussian_space_weight,
        "reconstruction": reconstruction_weight,
        "stn": stn_weight,
        "embedding_norm": embedding_norm_weight,
    }
    return {name: float(weights[name]) for name in VARIANT_TERMS[variant]}


def feratt_losses(
    outputs: Mapping[str, jax.Array],
    batch: Mapping[str, jax.Array],
    rng: jax.Array | None = None,
    *,
    variant: str,
    num_classes: int,
    sigma: float = 0.5,
    mixup: bool = True,
    mixup_label_mode: MixupLabelMode = "soft",
    mixup_alpha: float = 2.0,
    cross_entropy_weight: float = 1.0,
    reconstruction_weight: float = 1.0,
    stn_weight: float = 1.0,
    gaussian_space_weight: float = 1.0,
    embedding_norm_weight: float | None = None,
    scale_by_batch_size: bool = False,
    reconstruction_form: str = "tanh",
    class_mean_includes_self: bool = False,
) -> dict[str, jax.Array]:
    """All loss terms of one trainer variant, each separately, plus their weighted total.

    Variants (docs/reference.md 2.2):

    ========================  ======================================================
    ``"classifier"``          CE
    ``"attention"``           CE + Att                       (reference ``attnet``)
    ``"attention_stn"``       CE + Att + STN                 (``attstnnet``)
    ``"attention_gmm"``       CE + DGMM + Att + 0.0 ||z||    (``attgmmnet``)
    ``"attention_gmm_stn"``   CE + DGMM + Att + STN + 1e-4 ||z||  (``attgmmstnnet``)
    ``"attention_gmm_stn_2019"``  CE + DGMM + 2 min(MSE(x_org * mask, att), 30) + STN/10
                              (the paper-era ``attgmm``; uses ``batch["mask"]``)
    ========================  ======================================================

    The 5x (Att) and 10x (STN) factors live inside the terms, as in the reference; the
    ``*_weight`` options multiply the terms on top of that (1.0 = the reference).

    Args:
      outputs: model outputs; uses ``logits`` (B, C), and per variant ``reconstruction``
        (B, H, W, 3), ``theta`` (B, 2, 3), ``embedding`` (B, D).
      batch: uses ``label`` (B,), and per variant ``x_org`` (B, H, W, 3) and ``theta`` (B, 2, 3)
        or (B, 6).
      rng: PRNG key for the DGMM mixup (GMM variants with ``mixup=True``).
      variant: one of `VARIANT_TERMS` (static).
      num_classes: C (static).
      sigma, mixup, mixup_label_mode, mixup_alpha, class_mean_includes_self: DGMM options, see
        `gaussian_space_loss`.
      cross_entropy_weight, reconstruction_weight, stn_weight, gaussian_space_weight: term weights.
      embedding_norm_weight: weight of ``||z||_2``; None = the reference's weight for the variant
        (0.0 for attention_gmm, 1e-4 for attention_gmm_stn).
      scale_by_batch_size: multiply ``total`` by the batch size B (``logits.shape[0]``), as the
        reference's attnet/attstnnet/attgmmstnnet trainers do before backward (attgmmnet does
        not; see `REFERENCE_SCALES_BY_BATCH_SIZE` / `reference_loss_options`). Off by default:
        under Adam it only changes the effective epsilon. With a sharded global batch, B is the
        global batch size.
      reconstruction_form: "tanh" (the reference's saturating loss) or "linear"; see
        `reconstruction_loss`. The paper-era variant's masked MSE ignores it.

    Returns:
      Dict with the unweighted value of each term of the variant (keys among ``cross_entropy``,
      ``reconstruction``, ``stn``, ``gaussian_space``, ``embedding_norm``), ``total_unscaled``
      (the weighted sum, what the reference logs as its loss) and ``total`` (the quantity to
      differentiate: ``total_unscaled``, times B when `scale_by_batch_size`).
    """
    weights = term_weights(
        variant,
        cross_entropy_weight=cross_entropy_weight,
        reconstruction_weight=reconstruction_weight,
        stn_weight=stn_weight,
        gaussian_space_weight=gaussian_space_weight,
        embedding_norm_weight=embedding_norm_weight,
    )
    terms = VARIANT_TERMS[variant]
    logits_BC = jnp.asarray(outputs["logits"])
    labels_B = jnp.asarray(batch["label"])

    values: dict[str, jax.Array] = {}
    values["cross_entropy"] = cross_entropy(logits_BC, labels_B)
    if "gaussian_space" in terms:
        values["gaussian_space"] = gaussian_space_loss(
            outputs["embedding"],
            labels_B,
            rng,
            num_classes=num_classes,
            sigma=sigma,
            mixup=mixup,
            mixup_label_mode=mixup_label_mode,
            mixup_alpha=mixup_alpha,
            class_mean_includes_self=class_mean_includes_self,
        )
    paper_era = variant in PAPER_ERA_VARIANTS
    if "reconstruction" in terms:
        if paper_era:
            values["reconstruction"] = masked_reconstruction_mse(batch["x_org"], batch["mask"], outputs["reconstruction"])
        else:
            values["reconstruction"] = reconstruction_loss(batch["x_org"], outputs["reconstruction"], reconstruction_form)
    if "stn" in terms:
        values["stn"] = stn_loss(batch["x_org"], outputs["theta"], batch["theta"], scale=1.0 if paper_era else 10.0)
    if "embedding_norm" in terms:
        values["embedding_norm"] = embedding_norm(outputs["embedding"])

    total = sum(weights[name] * values[name] for name in terms)
    values["total_unscaled"] = total
    values["total"] = total * logits_BC.shape[0] if scale_by_batch_size else total
    return values
