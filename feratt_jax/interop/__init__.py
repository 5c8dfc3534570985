"""Interoperability with the PyTorch reference (pedrodiamel/ferattention).

* :mod:`feratt_jax.interop.torch_checkpoint`: reference state_dicts <-> Flax
  variables, reading and writing the reference trainer's ``.pth.tar`` files,
  and torchvision ResNet-34 weights for the attention encoder. The pure
  conversion functions work on NumPy arrays; only reading and writing files
  needs torch.
* :mod:`feratt_jax.interop.torch_model`: a PyTorch implementation of the same
  architectures with the reference's state_dict key names (needs torch).
* :mod:`feratt_jax.interop.torch_losses`: the reference's loss functions in
  PyTorch (needs torch).
* :mod:`feratt_jax.optimizers`: an optax transformation with exactly
  ``torch.optim.Adam`` semantics, AMSGrad included (no torch needed).

Nothing here imports torch at package import time, so ``import
feratt_jax.interop`` works without the ``[torch]`` extra.
"""

from __future__ import annotations

TORCH_EXTRA_HINT = "pip install 'feratt-jax[torch]'"


def require_torch():  # noqa: ANN201 - returns the torch module
    """Import and return torch, or raise an ImportError that names the extra.

    Returns:
      The ``torch`` module.

    Raises:
      ImportError: torch is not installed.
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError(f"PyTorch interop needs torch, which is not installed: {TORCH_EXTRA_HINT}") from err
    return torch


__all__ = ["TORCH_EXTRA_HINT", "require_torch"]
