"""Control for the paper table: the PreActResNet18 baseline at the width of FERAtt's own classifier.

At the quick (CPU) size FERAtt's classifier is narrowed to 16 channels while
the paper's baseline keeps 64, so "FERAtt vs baseline" there also compares a
narrow classifier with a wide one. This config is the baseline with FERAtt's
classifier width at each size (16 at quick, 64 = the baseline itself at full
size), so the front end's contribution can be read at matched capacity.
    feratt train --config experiments/configs/preactresnet18_narrow.py:quick --workdir runs/preactresnet18_narrow_quick

The same config without a clone: ``--config preactresnet18_narrow[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("preactresnet18_narrow", arg)
