"""The paper-era FERAtt (reference commit 53fd5e4, Jan 2019: the code behind the paper's tables).

Model ``ferattention_2019`` (the reference's arch ``atentionresnet34``,
docs/reference.md 8) with that commit's ``runs/train.sh`` and trainer settings
(:func:`feratt_jax.configs.paper_era_settings`): 128x128 input, batch 240,
Adam (amsgrad) at lr 1e-4 with PyTorch's StepLR (x0.1 every 100 epochs), 500
epochs of 70,000 samples (291 batches), dim 32, and the loss
CE + DGMM(sigma 1.0, no mixup) + 2 min(MSE(x_org * mask, att), 30) + the
unscaled STN MSE, back-propagated without the later trainers' x B.
train.sh trains on BU-3DFE (7 classes); like the other configs this one
defaults to the synthetic benchmark (8). The ``:quick``/``:tiny`` sizes keep
the schedule's decays at the same fractions of their shorter runs.

Full run (a GPU job):
    feratt train --config experiments/configs/ferattention_2019.py --workdir runs/ferattention_2019
CPU run (narrow networks at 128x128; slower than HEAD's quick configs at 64):
    feratt train --config experiments/configs/ferattention_2019.py:quick --workdir runs/ferattention_2019_quick

The same config without a clone: ``--config ferattention_2019[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ferattention_2019", arg)
