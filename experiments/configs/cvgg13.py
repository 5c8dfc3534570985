"""Baseline: CVGG13 on the 64x64 composite.

    feratt train --config experiments/configs/cvgg13.py --workdir runs/cvgg13
    feratt train --config experiments/configs/cvgg13.py:quick --workdir runs/cvgg13_quick

The same config without a clone: ``--config cvgg13[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("cvgg13", arg)
