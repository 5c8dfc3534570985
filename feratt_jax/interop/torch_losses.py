"""The reference's training losses in PyTorch (docs/reference.md 2.1), for parity checks.

Written from the spec's definitions, in the reference's own arithmetic where
it differs from ours (e.g. ``(exp(6d) - 1) / (exp(6d) + 1)`` rather than
``tanh(3d)``), so the tests check the identities the JAX code relies on.
Images are NCHW. Importing this module requires torch.
"""

from __future__ import annotations

from feratt_jax.interop import require_torch
from feratt_jax.interop.torch_model import warp

torch = require_torch()
from torch.nn import functional as F  # noqa: E402


def cross_entropy(logits_BC: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """``nn.CrossEntropyLoss()`` on ``labels.long()``."""
    return F.cross_entropy(logits_BC, labels_B.long())


def att_loss(x_org: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """The reference's ``Attloss``: ``5 * clamp(mean((e^{6|d|} - 1) / (e^{6|d|} + 1)), max=30)``."""
    d = torch.exp(6.0 * torch.abs(x_org - att))
    return 5.0 * torch.clamp(torch.mean((d - 1.0) / (d + 1.0)), max=30.0)


def stn_loss(
    x_org_BCHW: torch.Tensor, theta_B23: torch.Tensor, target_theta_B23: torch.Tensor, scale: float = 10.0
) -> torch.Tensor:
    """``10 * mean((warp(x_org, target) - warp(x_org, theta))^2)``, align_corners=False (scale 1: the paper-era term)."""
    return scale * torch.mean((warp(x_org_BCHW, target_theta_B23) - warp(x_org_BCHW, theta_B23)) ** 2)


def att_loss_2019(x_org_BCHW: torch.Tensor, y_mask_B2HW: torch.Tensor, att_BCHW: torch.Tensor) -> torch.Tensor:
    """The paper-era attLoss's reconstruction part: ``2 * clamp(mean((x_org * y_mask[:, 1] - att)^2), max=30)``.

    ``y_mask`` is the reference's two-channel mask (0: background, 1: face).
    """
    loss = torch.mean((x_org_BCHW * y_mask_B2HW[:, 1, ...].unsqueeze(dim=1) - att_BCHW) ** 2)
    return 2 * torch.clamp(loss, max=30)


def dgmm_loss(
    z_BD: torch.Tensor,
    labels_B: torch.Tensor,
    lam: float | None,
    perm_B: torch.Tensor | None,
    *,
    num_classes: int,
    sigma: float = 0.5,
) -> torch.Tensor:
    """The reference's ``DGMMLoss`` with the mixup draw (lam, perm) given explicitly.

    Rows: z, then (if lam is given) ``lam * z + (1 - lam) * z[perm]`` with
    float labels mixed the same way; class c owns the rows whose float label
    equals c exactly; pi = exp(-|x - mu_c|^2 / (2 sigma^2)) normalised over
    classes (+1e-15), clamped to [0, 1]; loss = mean_rows sum_c (pi - Y)^2.
    """
    y = labels_B.float()
    x = z_BD
    if lam is not None:
        lam_t = torch.tensor(lam, dtype=torch.float32)
        x = torch.cat([x, x * lam_t + x[perm_B] * (1.0 - lam_t)], 0)
        y = torch.cat([y, y * lam_t + y[perm_B] * (1.0 - lam_t)], 0)
    n = x.shape[0]
    pi = torch.zeros(n, num_classes, dtype=x.dtype)
    target = torch.zeros(n, num_classes, dtype=x.dtype)
    for c in range(num_classes):
        mask = y == float(c)
        if not bool(mask.any()):
            continue
        mu = x[mask].mean(dim=0, keepdim=True)
        pi[:, c] = torch.exp(-((x - mu) ** 2).sum(dim=1) / (2.0 * sigma**2))
        target[mask, c] = 1.0
    pi = torch.clamp(pi / (pi.sum(dim=1, keepdim=True) + 1e-15), 0.0, 1.0)
    return ((pi - target) ** 2).sum(dim=1).mean()


__all__ = ["att_loss", "att_loss_2019", "cross_entropy", "dgmm_loss", "stn_loss"]
