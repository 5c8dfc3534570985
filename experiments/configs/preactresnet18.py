"""Baseline: PreActResNet18 alone on 32x32 inputs (the paper's baseline).

The composite is rendered at 64x64 like the FERAtt runs and average-pooled to
32x32 before the classifier, so both see the same pixels.
    feratt train --config experiments/configs/preactresnet18.py --workdir runs/preactresnet18
    feratt train --config experiments/configs/preactresnet18.py:quick --workdir runs/preactresnet18_quick

The same config without a clone: ``--config preactresnet18[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("preactresnet18", arg)
