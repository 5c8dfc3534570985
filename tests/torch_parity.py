"""Helpers shared by the PyTorch parity tests (test_torch_interop, test_feratt_2019). Needs torch."""

from __future__ import annotations

import torch


def randomize_bn_and_stn_(model: torch.nn.Module, seed: int) -> None:
    """Make BN layers (affine and running statistics) and the STN regressor non-trivial, so that
    the parity checks have teeth: converted defaults (gamma 1, beta 0, mean 0, var 1, identity
    theta) would hide layout mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
        if hasattr(model, "stn"):
            model.stn.fc_loc[2].weight.normal_(0.0, 0.02, generator=g)
