"""Tests for feratt_jax.losses: hand-computed values, independent re-implementations, jit."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feratt_jax import losses as L

IDENTITY_23 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


# ---------------------------------------------------------------------------------------------
# Cross-entropy, reconstruction, STN, embedding norm: hand-computed values
# ---------------------------------------------------------------------------------------------


def test_cross_entropy_by_hand():
    # Row 0: softmax(0, ln 3) = (1/4, 3/4), label 1 -> -ln(3/4).
    # Row 1: softmax(ln 2, 0) = (2/3, 1/3), label 0 -> -ln(2/3).
    logits = jnp.asarray([[0.0, math.log(3.0)], [math.log(2.0), 0.0]], jnp.float32)
    expected = (-math.log(3 / 4) - math.log(2 / 3)) / 2
    assert float(L.cross_entropy(logits, jnp.asarray([1, 0]))) == pytest.approx(expected, rel=1e-6)
    # Float labels (the reference's meta[:, 0]) are truncated like .long().
    assert float(L.cross_entropy(logits, jnp.asarray([1.0, 0.0]))) == pytest.approx(
        expected, rel=1e-6
    )


def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, size=9)
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    got = L.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


def test_reconstruction_loss_by_hand():
    # tanh(3 d) for d = ln(k)/6 is (k - 1)/(k + 1): 1/2 for k = 3, 3/4 for k = 7.
    # Differences: +ln3/6, -ln3/6, 0, +ln7/6 -> mean tanh = (0.5 + 0.5 + 0 + 0.75)/4 = 0.4375.
    x_org = jnp.asarray(np.array([0.5, 0.2, 0.7, 0.1], np.float32).reshape(1, 2, 2, 1))
    delta = np.array([math.log(3) / 6, -math.log(3) / 6, 0.0, math.log(7) / 6], np.float32)
    recon = x_org - jnp.asarray(delta.reshape(1, 2, 2, 1))
    assert float(L.reconstruction_loss(x_org, recon)) == pytest.approx(5 * 0.4375, rel=1e-5)


def test_reconstruction_loss_equals_reference_exp_formula():
    # The reference's own formula, (e^{6d} - 1)/(e^{6d} + 1), in float64 numpy.
    rng = np.random.default_rng(1)
    x_org = rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
    att = rng.uniform(0, 2, size=(2, 4, 4, 3)).astype(np.float32)
    d = np.exp(6 * np.abs(x_org.astype(np.float64) - att))
    expected = 5 * np.mean((d - 1) / (d + 1))
    got = L.reconstruction_loss(jnp.asarray(x_org), jnp.asarray(att))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # And tanh stays finite where exp(6d) would overflow float32.
    big = L.reconstruction_loss(jnp.zeros((1, 2)), jnp.full((1, 2), 100.0))
    assert float(big) == pytest.approx(5.0)


def test_the_linear_reconstruction_form_keeps_the_slope_at_zero_and_does_not_saturate():
    # One face pixel (0.64) predicted black, one background pixel right at 0.
    x_org = jnp.asarray([[0.64, 0.0]], jnp.float32)
    black = jnp.zeros((1, 2), jnp.float32)
    assert float(L.reconstruction_loss(x_org, black)) == pytest.approx(2.5 * math.tanh(1.92), rel=1e-6)
    assert float(L.reconstruction_loss(x_org, black, "linear")) == pytest.approx(2.5 * 1.92, rel=1e-6)
    # d/dr of 5/2 tanh(3 |x - r|) at r = 0: -7.5 (1 - tanh(1.92)^2), 8 % of the linear form's -7.5.
    g_tanh = jax.grad(lambda r: L.reconstruction_loss(x_org, r))(black)
    g_linear = jax.grad(lambda r: L.reconstruction_loss(x_org, r, "linear"))(black)
    assert float(g_tanh[0, 0]) == pytest.approx(-7.5 * (1 - math.tanh(1.92) ** 2), rel=1e-5)
    assert float(g_linear[0, 0]) == pytest.approx(-7.5, rel=1e-6)
    assert 0.08 < float(g_tanh[0, 0] / g_linear[0, 0]) < 0.09
    # Near zero error the two forms agree to first order.
    near = x_org - 1e-4
    assert float(L.reconstruction_loss(x_org, near, "linear")) == pytest.approx(float(L.reconstruction_loss(x_org, near)), rel=1e-4)
    with pytest.raises(ValueError, match="reconstruction form must be one of"):
        L.reconstruction_loss(x_org, black, "l2")


def test_feratt_losses_pass_the_reconstruction_form_on():
    x_org = jnp.full((2, 4, 4, 3), 0.5, jnp.float32)
    outputs = {"logits": jnp.zeros((2, 8)), "reconstruction": jnp.zeros((2, 4, 4, 3))}
    batch = {"label": jnp.asarray([0, 1]), "x_org": x_org}
    ref = L.feratt_losses(outputs, batch, variant="attention", num_classes=8)
    lin = L.feratt_losses(outputs, batch, variant="attention", num_classes=8, reconstruction_form="linear")
    assert float(ref["reconstruction"]) == pytest.approx(5 * math.tanh(1.5), rel=1e-6)
    assert float(lin["reconstruction"]) == pytest.approx(7.5, rel=1e-6)
    assert float(lin["total"] - ref["total"]) == pytest.approx(7.5 - 5 * math.tanh(1.5), rel=1e-5)


def test_stn_loss_by_hand():
    # x_org is a 1x2 image [1, 3]. The target theta is the identity (warp = [1, 3]); the predicted
    # theta translates by one pixel (tx = 2/W = 1), so output column w reads source column w + 1:
    # [3, 0] (column 2 is outside -> 0). Loss = 10 * mean([1 - 3, 3 - 0]^2) = 10 * 13/2 = 65.
    x_org = jnp.asarray(np.array([1.0, 3.0], np.float32).reshape(1, 1, 2, 1))
    pred = IDENTITY_23.copy()
    pred[0, 2] = 1.0
    loss = L.stn_loss(x_org, jnp.asarray(pred[None]), jnp.asarray(IDENTITY_23[None]))
    assert float(loss) == pytest.approx(65.0, rel=1e-6)
    # Same theta -> 0; (B, 6) targets (the reference's meta layout) are accepted.
    same = L.stn_loss(x_org, jnp.asarray(pred[None]), jnp.asarray(pred.reshape(1, 6)))
    assert float(same) == 0.0


def test_stn_loss_gradient_reaches_predicted_theta():
    rng = np.random.default_rng(2)
    x_org = jnp.asarray(rng.uniform(size=(2, 8, 8, 3)).astype(np.float32))
    target = jnp.asarray(np.repeat(IDENTITY_23[None], 2, axis=0))
    pred = target + 0.1
    grad = jax.grad(L.stn_loss, argnums=1)(x_org, pred, target)
    assert grad.shape == (2, 2, 3)
    assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).max() > 1e-3


def test_embedding_norm_by_hand_and_grad_at_zero():
    assert float(L.embedding_norm(jnp.asarray([[3.0, 4.0], [0.0, 0.0]]))) == pytest.approx(5.0)
    assert float(L.embedding_norm(jnp.asarray([[1.0, 2.0], [2.0, 4.0]]))) == pytest.approx(5.0)
    z = jnp.asarray([[1.0, 2.0], [2.0, 4.0]])
    np.testing.assert_allclose(
        np.asarray(jax.grad(L.embedding_norm)(z)), np.asarray(z) / 5.0, rtol=1e-6
    )
    g0 = jax.grad(L.embedding_norm)(jnp.zeros((2, 3)))
    np.testing.assert_array_equal(np.asarray(g0), 0.0)


# ---------------------------------------------------------------------------------------------
# DGMM (Gaussian-space) loss: hand-computed values
# ---------------------------------------------------------------------------------------------

# Tiny case used by the hand computations: two 1-D embeddings, x = 0 (class 0) and x = 1
# (class 2), C = 3 (class 1 absent), sigma = 0.5, so exp(-d^2 / (2 sigma^2)) = exp(-2 d^2).
X_TINY = jnp.asarray([[0.0], [1.0]], jnp.float32)
Y_TINY = jnp.asarray([0, 2])
PERM_SWAP = jnp.asarray([1, 0])


def _dgmm(lam, perm, mode, x=X_TINY, y=Y_TINY, includes_self=True):
    # The hand computations below use the reference's class means, which contain the row itself
    # (with one row per class here, the own-class mean *is* the row).
    return float(
        L.gaussian_space_loss_with_mix(
            x, y, lam, perm, num_classes=3, sigma=0.5, mixup_label_mode=mode,
            class_mean_includes_self=includes_self,
        )
    )


def _unmixed_row_loss() -> float:
    # mu_0 = 0, mu_2 = 1. Row x = 0: pi = (1, 0, e)/(1 + e) with e = exp(-2); target (1, 0, 0)
    # -> (1/(1+e) - 1)^2 + (e/(1+e))^2 = 2 (e/(1+e))^2. Row x = 1 is the mirror image.
    e = math.exp(-2.0)
    return 2 * (e / (1 + e)) ** 2


@pytest.mark.parametrize("mode", ["soft", "reference"])
def test_dgmm_no_mixup_missing_class_by_hand(mode):
    assert _dgmm(None, None, mode) == pytest.approx(_unmixed_row_loss(), rel=1e-6)


def test_dgmm_soft_mixup_by_hand():
    # lam = 0.75, perm swaps the two rows. Mixed rows: x = 0.25 (target 0.75 e0 + 0.25 e2) and
    # x = 0.75 (target 0.25 e0 + 0.75 e2). Means from the un-mixed rows: mu_0 = 0, mu_2 = 1.
    # At x = 0.25: exp(-2 * 0.0625) : exp(-2 * 0.5625) = 1 : exp(-1), so
    # pi = (1, 0, r)/(1 + r) with r = exp(-1); class 1 is absent -> 0.
    r = math.exp(-1.0)
    p_near, p_far = 1 / (1 + r), r / (1 + r)
    mixed_row = (p_near - 0.75) ** 2 + (p_far - 0.25) ** 2  # x = 0.75 is symmetric
    expected = (2 * _unmixed_row_loss() + 2 * mixed_row) / 4
    assert _dgmm(0.75, PERM_SWAP, "soft") == pytest.approx(expected, rel=1e-6)


def test_dgmm_reference_mixup_cross_class_has_zero_target_by_hand():
    # Reference mode, same lam/perm: the float labels mix to 0.25*2 = 0.5 and 0.75*2 = 1.5, which
    # equal no class, so the mixed rows have all-zero targets and do not enter any mean.
    r = math.exp(-1.0)
    p_near, p_far = 1 / (1 + r), r / (1 + r)
    mixed_row = p_near**2 + p_far**2
    expected = (2 * _unmixed_row_loss() + 2 * mixed_row) / 4
    assert _dgmm(0.75, PERM_SWAP, "reference") == pytest.approx(expected, rel=1e-6)


def test_dgmm_reference_half_mix_creates_class_by_hand():
    # lam = 0.5: the float labels 0 and 2 mix to exactly 1.0, so the reference files both mixed
    # rows (x = 0.5) under class 1, a class absent from the batch. Means: 0, 0.5, 1.
    # exp(-2 d^2) for d = 0, 0.5, 1: 1, exp(-0.5), exp(-2).
    a, b = math.exp(-0.5), math.exp(-2.0)
    s_end = 1 + a + b  # rows x = 0 and x = 1
    end_row = (1 / s_end - 1) ** 2 + (a / s_end) ** 2 + (b / s_end) ** 2
    s_mid = a + 1 + a  # rows x = 0.5, target class 1
    mid_row = (a / s_mid) ** 2 + (1 / s_mid - 1) ** 2 + (a / s_mid) ** 2
    expected = (2 * end_row + 2 * mid_row) / 4
    assert _dgmm(0.5, PERM_SWAP, "reference") == pytest.approx(expected, rel=1e-6)


def test_dgmm_soft_half_mix_by_hand():
    # Soft mode, lam = 0.5: mixed rows sit at x = 0.5 with target (0.5, 0, 0.5); class 1 stays
    # masked, so pi = (0.5, 0, 0.5) there: zero loss on the mixed rows.
    expected = (2 * _unmixed_row_loss() + 0.0) / 4
    assert _dgmm(0.5, PERM_SWAP, "soft") == pytest.approx(expected, rel=1e-6)


def test_dgmm_all_rows_far_from_all_means_is_finite():
    # exp underflows to 0 for every class: pi = 0 / (0 + 1e-15) = 0, loss = 1 per row.
    x = jnp.asarray([[0.0], [100.0], [200.0]], jnp.float32)
    y = jnp.asarray([0, 0, 1])
    loss = L.gaussian_space_loss_with_mix(x, y, None, None, num_classes=2, sigma=0.5, class_mean_includes_self=True)
    # Class 0 mean is 50: rows 0 and 1 are 50 away (pi = 0), row 2 is its own class-1 mean.
    assert float(loss) == pytest.approx(2.0 / 3.0, rel=1e-6)
    # Leaving the row out: rows 0 and 1 are 100 from the other class-0 row (pi = 0, loss 1 each);
    # row 2 is alone in class 1, so it has no own-class mean (column absent, pi = 0, loss 1).
    loo = L.gaussian_space_loss_with_mix(x, y, None, None, num_classes=2, sigma=0.5)
    assert float(loo) == pytest.approx(1.0, rel=1e-6)
    grad = jax.grad(lambda z: L.gaussian_space_loss_with_mix(z, y, None, None, num_classes=2))(x)
    assert np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------------------------------------
# DGMM against independent re-implementations (numpy loops, and torch for the reference mode)
# ---------------------------------------------------------------------------------------------


def _without_row(members, x, n, mu):
    """The mean of the member rows other than row n (None when n is the only member)."""
    if not members[n]:
        return mu
    others = members.copy()
    others[n] = False
    return x[others].mean(axis=0) if others.any() else None


def _memberships_row_by_row(rows, means_of, num_classes, sigma):
    """pi for each row from ``means_of(n, c)`` (None: class c absent for row n)."""
    pi = np.zeros((rows.shape[0], num_classes))
    for n in range(rows.shape[0]):
        for c in range(num_classes):
            mu = means_of(n, c)
            if mu is not None:
                pi[n, c] = np.exp(-np.sum((rows[n] - mu) ** 2) / (2.0 * sigma**2))
    return np.clip(pi / (pi.sum(axis=1, keepdims=True) + 1e-15), 0.0, 1.0)


def numpy_reference_dgmm(x, y, lam, perm, num_classes, sigma, leave_one_out=False):
    """The reference's DGMMLoss.forward, loop for loop, with a given lam and perm.

    ``leave_one_out``: each member row against the mean of the other members of its class.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.float32)
    if lam is not None:
        lam = np.float32(lam)
        perm = np.asarray(perm)
        x = np.concatenate([x, x * lam + x[perm] * (np.float32(1) - lam)])
        y = np.concatenate([y, y * lam + y[perm] * (np.float32(1) - lam)])
    x = x.astype(np.float64)
    n = x.shape[0]
    pi = np.zeros((n, num_classes))
    yh = np.zeros((n, num_classes))
    for c in range(num_classes):
        index = y == c  # exact float equality, as in the reference
        if index.sum() == 0:
            continue
        mu = x[index].mean(axis=0)
        pi[:, c] = np.exp(-np.sum((x - mu) ** 2, axis=1) / (2.0 * sigma**2))
        yh[index, c] = 1
    pi = pi / (pi.sum(axis=1, keepdims=True) + 1e-15)
    pi = np.clip(pi, 0.0, 1.0)
    if leave_one_out:
        def means_of(row, c):
            members = y == c
            return _without_row(members, x, row, x[members].mean(axis=0)) if members.any() else None

        pi = _memberships_row_by_row(x, means_of, num_classes, sigma)
    return np.mean(np.sum((pi - yh) ** 2, axis=1))


def numpy_soft_dgmm(x, y, lam, perm, num_classes, sigma, leave_one_out=False):
    """The documented soft mode, written as a plain loop over classes (``leave_one_out``: see
    `numpy_reference_dgmm`; mixed rows are members of no class)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y).astype(int)
    eye = np.eye(num_classes)
    rows, targets = x, eye[y]
    if lam is not None:
        perm = np.asarray(perm)
        rows = np.concatenate([x, lam * x + (1 - lam) * x[perm]])
        targets = np.concatenate([targets, lam * eye[y] + (1 - lam) * eye[y[perm]]])
    pi = np.zeros((rows.shape[0], num_classes))
    for c in range(num_classes):
        members = y == c  # un-mixed rows only
        if not members.any():
            continue
        mu = x[members].mean(axis=0)
        pi[:, c] = np.exp(-np.sum((rows - mu) ** 2, axis=1) / (2.0 * sigma**2))
    pi = np.clip(pi / (pi.sum(axis=1, keepdims=True) + 1e-15), 0.0, 1.0)
    if leave_one_out:
        def means_of(row, c):
            members = np.zeros(rows.shape[0], bool)
            members[: len(y)] = y == c
            if not members.any():
                return None
            return _without_row(members, rows, row, rows[members].mean(axis=0))

        pi = _memberships_row_by_row(rows, means_of, num_classes, sigma)
    return np.mean(np.sum((pi - targets) ** 2, axis=1))


def _random_batch(seed, batch=12, dim=4, present=(0, 1, 3), num_classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.asarray(present), size=batch)
    labels[: len(present)] = present  # every listed class occurs at least once
    centres = rng.normal(scale=0.6, size=(num_classes, dim))
    x = (centres[labels] + rng.normal(scale=0.3, size=(batch, dim))).astype(np.float32)
    perm = rng.permutation(batch)
    return x, labels, perm


# lam = 0.5 turns some 1/3 cross-class mixes into the absent class 2 (a reference quirk, which the
# "reference" label mode keeps); 0.3 and 0.6180339 give inexact float mixes.
@pytest.mark.parametrize(
    "mode,numpy_oracle", [("reference", numpy_reference_dgmm), ("soft", numpy_soft_dgmm)]
)
@pytest.mark.parametrize("lam", [None, 0.5, 0.3, 0.6180339])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("includes_self", [True, False])
def test_dgmm_matches_numpy_loop(mode, numpy_oracle, lam, seed, includes_self):
    x, labels, perm = _random_batch(seed)
    expected = numpy_oracle(x, labels, lam, perm, 5, 0.5, leave_one_out=not includes_self)
    got = L.gaussian_space_loss_with_mix(
        jnp.asarray(x),
        jnp.asarray(labels),
        lam,
        None if lam is None else jnp.asarray(perm),
        num_classes=5,
        sigma=0.5,
        mixup_label_mode=mode,
        class_mean_includes_self=includes_self,
    )
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_dgmm_reference_mode_matches_torch_transcription():
    """Reference mode against a torch transcription of HEAD's DGMMLoss (float32 label mixing done
    by torch), for lam values drawn from torch's own Beta(2, 2)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for seed in range(4):
        x_np, labels_np, perm_np = _random_batch(seed, batch=16)
        x = torch.from_numpy(x_np)
        y = torch.from_numpy(labels_np.astype(np.float32))
        lam = torch.distributions.Beta(torch.tensor([2.0]), torch.tensor([2.0])).sample()
        if seed == 0:
            lam = torch.tensor([0.5])
        indices = torch.from_numpy(perm_np)
        x_all = torch.cat([x, lam * x + (1 - lam) * x[indices]], dim=0)
        y_all = torch.cat([y, lam * y + (1 - lam) * y[indices]], dim=0)
        pi = torch.zeros(x_all.shape[0], 5)
        yh = torch.zeros(x_all.shape[0], 5)
        for c in range(5):
            index = y_all == int(c)
            if index.sum() == 0:
                continue
            muc = x_all[index].mean(dim=0)
            pi[:, c] = torch.exp(-torch.sum((x_all - muc) ** 2, dim=1) / (2.0 * 0.5**2))
            yh[index, c] = 1
        pi = (pi / (pi.sum(dim=1, keepdim=True) + 1e-15)).clamp(0.0, 1.0)
        ref = torch.mean(torch.sum((pi - yh) ** 2, dim=1)).item()
        got = L.gaussian_space_loss_with_mix(
            jnp.asarray(x_np),
            jnp.asarray(labels_np),
            float(lam.item()),
            jnp.asarray(perm_np),
            num_classes=5,
            sigma=0.5,
            mixup_label_mode="reference",
            class_mean_includes_self=True,
        )
        assert float(got) == pytest.approx(ref, rel=1e-5, abs=1e-7), seed


def test_dgmm_rng_wrapper_uses_sample_mixup():
    x, labels, _ = _random_batch(3)
    key = jax.random.PRNGKey(7)
    lam, perm = L.sample_mixup(key, x.shape[0], alpha=2.0)
    assert 0.0 < float(lam) < 1.0
    assert sorted(np.asarray(perm).tolist()) == list(range(x.shape[0]))
    for mode in ("soft", "reference"):
        via_rng = L.gaussian_space_loss(
            jnp.asarray(x), jnp.asarray(labels), key, num_classes=5, mixup_label_mode=mode
        )
        explicit = numpy_reference_dgmm if mode == "reference" else numpy_soft_dgmm
        expected = explicit(x, labels, float(lam), np.asarray(perm), 5, 0.5, leave_one_out=True)
        assert float(via_rng) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # mixup=False needs no rng and is the plain B-row loss.
    plain = L.gaussian_space_loss(
        jnp.asarray(x), jnp.asarray(labels), None, num_classes=5, mixup=False
    )
    assert float(plain) == pytest.approx(numpy_soft_dgmm(x, labels, None, None, 5, 0.5, leave_one_out=True), rel=1e-5)


def test_sample_mixup_lambda_is_beta_2_2():
    # Beta(2, 2): mean 1/2, variance 2*2/((4^2)(5)) = 1/20.
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    lams = np.asarray(jax.vmap(lambda k: L.sample_mixup(k, 4)[0])(keys))
    assert abs(lams.mean() - 0.5) < 0.02
    assert abs(lams.var() - 0.05) < 0.006


def test_dgmm_gradients_are_finite_with_missing_classes():
    x, labels, perm = _random_batch(4)
    for mode in ("soft", "reference"):
        grad = jax.grad(
            lambda z, mode=mode: L.gaussian_space_loss_with_mix(
                z, jnp.asarray(labels), 0.5, jnp.asarray(perm), num_classes=5, mixup_label_mode=mode
            )
        )(jnp.asarray(x))
        assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).max() > 0


def test_dgmm_leave_one_out_by_hand():
    # 1-D, sigma 0.5 (exp(-2 d^2)), no mixup. Class 0 = {0, 1}, class 1 = {3}.
    # Row 0: other class-0 row at 1 (d^2 = 1), class-1 mean at 3 (d^2 = 9).
    # Row 1: other class-0 row at 0 (d^2 = 1), class-1 mean 3 (d^2 = 4).
    # Row 2 is alone in class 1 (no own mean); class-0 mean 0.5 (d^2 = 6.25): pi = (1, 0).
    x = jnp.asarray([[0.0], [1.0], [3.0]], jnp.float32)
    y = jnp.asarray([0, 0, 1])

    def row(d_own, d_other):
        a, b = math.exp(-2 * d_own), math.exp(-2 * d_other)
        return 2 * (b / (a + b)) ** 2  # target (1, 0): (p - 1)^2 + (1 - p)^2

    expected = (row(1.0, 9.0) + row(1.0, 4.0) + (1.0 + 1.0)) / 3
    got = L.gaussian_space_loss_with_mix(x, y, None, None, num_classes=2, sigma=0.5)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_dgmm_random_embeddings_cannot_reach_a_low_loss():
    """Reference defect 20: with the row in its own class mean, embeddings that carry no class
    information reach a low DGMM loss at the right scale; without it they cannot. This fails if the
    default goes back to the reference's means."""
    rng = np.random.default_rng(0)
    labels = jnp.asarray(np.repeat(np.arange(8), 4))  # B = 32, C = 8
    for includes_self, bound in ((True, lambda v: v < 0.2), (False, lambda v: v > 0.55)):
        best = min(
            np.mean([
                float(L.gaussian_space_loss(
                    jnp.asarray(rng.normal(size=(32, 32)).astype(np.float32) * scale), labels,
                    jax.random.PRNGKey(t), num_classes=8, class_mean_includes_self=includes_self,
                ))
                for t in range(8)
            ])
            for scale in (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
        )  # fmt: skip
        assert bound(best), (includes_self, best)
    # The default is the fixed rule.
    z = jnp.asarray(rng.normal(size=(32, 32)).astype(np.float32) * 0.5)
    key = jax.random.PRNGKey(0)
    assert float(L.gaussian_space_loss(z, labels, key, num_classes=8)) == float(
        L.gaussian_space_loss(z, labels, key, num_classes=8, class_mean_includes_self=False)
    )


# ---------------------------------------------------------------------------------------------
# Per-variant composition
# ---------------------------------------------------------------------------------------------


def _fake_outputs_and_batch(batch=4, num_classes=3, dim=5, size=8, seed=0):
    rng = np.random.default_rng(seed)
    theta_pred = IDENTITY_23[None] + 0.1 * rng.normal(size=(batch, 2, 3))
    theta_true = IDENTITY_23[None] + 0.1 * rng.normal(size=(batch, 2, 3))
    outputs = {
        "logits": jnp.asarray(rng.normal(size=(batch, num_classes)).astype(np.float32)),
        "embedding": jnp.asarray(rng.normal(size=(batch, dim)).astype(np.float32)),
        "reconstruction": jnp.asarray(rng.uniform(size=(batch, size, size, 3)).astype(np.float32)),
        "theta": jnp.asarray(theta_pred.astype(np.float32)),
    }
    batch_dict = {
        "label": jnp.asarray(rng.integers(0, num_classes, size=batch)),
        "x_org": jnp.asarray(rng.uniform(size=(batch, size, size, 3)).astype(np.float32)),
        "theta": jnp.asarray(theta_true.astype(np.float32).reshape(batch, 6)),
        # The renderer's face mask (used by the paper-era variant); drawn last so the others are unchanged.
        "mask": jnp.asarray((rng.uniform(size=(batch, size, size, 1)) > 0.3).astype(np.float32)),
    }
    return outputs, batch_dict


# Expected composition per variant, written out from docs/reference.md 2.2.
EXPECTED_TERMS = {
    "classifier": {"cross_entropy": 1.0},
    "attention": {"cross_entropy": 1.0, "reconstruction": 1.0},
    "attention_stn": {"cross_entropy": 1.0, "reconstruction": 1.0, "stn": 1.0},
    "attention_gmm": {
        "cross_entropy": 1.0,
        "gaussian_space": 1.0,
        "reconstruction": 1.0,
        "embedding_norm": 0.0,
    },
    "attention_gmm_stn": {
        "cross_entropy": 1.0,
        "gaussian_space": 1.0,
        "reconstruction": 1.0,
        "stn": 1.0,
        "embedding_norm": 1e-4,
    },
}


@pytest.mark.parametrize("variant", sorted(EXPECTED_TERMS))
def test_feratt_losses_composition(variant):
    outputs, batch = _fake_outputs_and_batch()
    key = jax.random.PRNGKey(3)
    got = L.feratt_losses(outputs, batch, key, variant=variant, num_classes=3)
    weights = EXPECTED_TERMS[variant]
    assert set(got) == set(weights) | {"total", "total_unscaled"}
    # Each term equals the stand-alone function.
    standalone = {
        "cross_entropy": lambda: L.cross_entropy(outputs["logits"], batch["label"]),
        "reconstruction": lambda: L.reconstruction_loss(batch["x_org"], outputs["reconstruction"]),
        "stn": lambda: L.stn_loss(batch["x_org"], outputs["theta"], batch["theta"]),
        "gaussian_space": lambda: L.gaussian_space_loss(
            outputs["embedding"], batch["label"], key, num_classes=3
        ),
        "embedding_norm": lambda: L.embedding_norm(outputs["embedding"]),
    }
    for name in weights:
        assert float(got[name]) == pytest.approx(float(standalone[name]()), rel=1e-6), name
    expected_total = sum(w * float(got[name]) for name, w in weights.items())
    assert float(got["total_unscaled"]) == pytest.approx(expected_total, rel=1e-6)
    assert float(got["total"]) == pytest.approx(expected_total, rel=1e-6)
    # Batch-size scaling multiplies the total (and only the total) by B = 4.
    scaled = L.feratt_losses(
        outputs, batch, key, variant=variant, num_classes=3, scale_by_batch_size=True
    )
    assert float(scaled["total"]) == pytest.approx(4 * expected_total, rel=1e-6)
    assert float(scaled["total_unscaled"]) == pytest.approx(expected_total, rel=1e-6)


def test_feratt_losses_weights_and_reference_options():
    outputs, batch = _fake_outputs_and_batch()
    key = jax.random.PRNGKey(0)
    got = L.feratt_losses(
        outputs,
        batch,
        key,
        variant="attention_gmm_stn",
        num_classes=3,
        cross_entropy_weight=2.0,
        reconstruction_weight=0.5,
        stn_weight=3.0,
        gaussian_space_weight=0.25,
        embedding_norm_weight=0.1,
    )
    expected = (
        2.0 * float(got["cross_entropy"])
        + 0.5 * float(got["reconstruction"])
        + 3.0 * float(got["stn"])
        + 0.25 * float(got["gaussian_space"])
        + 0.1 * float(got["embedding_norm"])
    )
    assert float(got["total"]) == pytest.approx(expected, rel=1e-6)
    # The reference's per-trainer settings (docs/reference.md 2.2 and defect 9).
    assert L.reference_loss_options("attention")["scale_by_batch_size"] is True
    assert L.reference_loss_options("attention_stn")["scale_by_batch_size"] is True
    assert L.reference_loss_options("attention_gmm")["scale_by_batch_size"] is False
    assert L.reference_loss_options("attention_gmm")["embedding_norm_weight"] == 0.0
    gmm_stn = L.reference_loss_options("attention_gmm_stn")
    assert gmm_stn["scale_by_batch_size"] is True and gmm_stn["embedding_norm_weight"] == 1e-4
    assert gmm_stn["mixup_label_mode"] == "reference"
    assert gmm_stn["class_mean_includes_self"] is True
    assert L.reference_loss_options("attention_gmm")["class_mean_includes_self"] is True
    assert "class_mean_includes_self" not in L.reference_loss_options("attention")
    with pytest.raises(ValueError):
        L.feratt_losses(outputs, batch, key, variant="nope", num_classes=3)


def test_paper_era_composition():
    """attention_gmm_stn_2019 (reference commit 53fd5e4): CE + DGMM + 2 min(MSE(x_org * mask, att), 30)
    + the unscaled STN MSE, with that trainer's sigma 1, no mixup and no x B."""
    outputs, batch = _fake_outputs_and_batch()
    options = L.reference_loss_options("attention_gmm_stn_2019")
    assert options == {"scale_by_batch_size": False, "sigma": 1.0, "mixup": False, "class_mean_includes_self": True}
    got = L.feratt_losses(outputs, batch, None, variant="attention_gmm_stn_2019", num_classes=3, **options)
    masked = batch["x_org"] * batch["mask"]
    expected = {
        "cross_entropy": L.cross_entropy(outputs["logits"], batch["label"]),
        "gaussian_space": L.gaussian_space_loss_with_mix(
            outputs["embedding"], batch["label"], None, None, num_classes=3, sigma=1.0, class_mean_includes_self=True
        ),
        "reconstruction": 2.0 * jnp.mean((masked - outputs["reconstruction"]) ** 2),
        "stn": L.stn_loss(batch["x_org"], outputs["theta"], batch["theta"]) / 10.0,
    }
    assert set(got) == set(expected) | {"total", "total_unscaled"}
    for name, value in expected.items():
        assert float(got[name]) == pytest.approx(float(value), rel=1e-6), name
    assert float(got["total"]) == pytest.approx(sum(float(v) for v in expected.values()), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# jit of every loss
# ---------------------------------------------------------------------------------------------


def test_every_loss_jits_and_matches_eager():
    outputs, batch = _fake_outputs_and_batch(seed=5)
    key = jax.random.PRNGKey(11)
    x_org = batch["x_org"]
    cases = [
        (L.cross_entropy, (outputs["logits"], batch["label"]), {}),
        (L.reconstruction_loss, (x_org, outputs["reconstruction"]), {}),
        (L.stn_loss, (x_org, outputs["theta"], batch["theta"]), {}),
        (L.embedding_norm, (outputs["embedding"],), {}),
    ]
    for mode in ("soft", "reference"):
        cases.append(
            (
                functools.partial(L.gaussian_space_loss, num_classes=3, mixup_label_mode=mode),
                (outputs["embedding"], batch["label"], key),
                {},
            )
        )
        cases.append(
            (
                functools.partial(
                    L.gaussian_space_loss_with_mix, num_classes=3, mixup_label_mode=mode
                ),
                (outputs["embedding"], batch["label"], jnp.float32(0.3), jnp.asarray([1, 2, 3, 0])),
                {},
            )
        )
    for fn, args, _ in cases:
        eager = fn(*args)
        jitted = jax.jit(fn)(*args)
        assert jitted.shape == ()
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-6)

    for variant in L.VARIANT_TERMS:
        fn = functools.partial(
            L.feratt_losses, variant=variant, num_classes=3, scale_by_batch_size=True
        )
        eager = fn(outputs, batch, key)
        jitted = jax.jit(fn)(outputs, batch, key)
        assert set(jitted) == set(eager)
        for name in eager:
            np.testing.assert_allclose(
                np.asarray(jitted[name]), np.asarray(eager[name]), rtol=1e-5, atol=1e-6
            )
        # The total is differentiable w.r.t. the model outputs.
        grads = jax.grad(lambda o, fn=fn: fn(o, batch, key)["total"])(outputs)
        assert np.all(np.isfinite(np.asarray(grads["logits"])))


def test_term_weights_name_every_term_of_a_variant_with_the_reference_norm_weight():
    for variant, terms in L.VARIANT_TERMS.items():
        assert tuple(L.term_weights(variant)) == terms
    assert L.term_weights("attention_gmm_stn")["embedding_norm"] == 1e-4
    assert L.term_weights("attention_gmm")["embedding_norm"] == 0.0
    assert L.term_weights("attention", reconstruction_weight=0.5) == {"cross_entropy": 1.0, "reconstruction": 0.5}
    with pytest.raises(ValueError, match="unknown variant"):
        L.term_weights("nope")
