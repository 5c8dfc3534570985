"""Baseline: CVGG13 on the 64x64 composite.

    feratt train --config experiments/configs/cvgg13.py --workdir runs/cvgg13
    feratt train --config experiments/configs/cvgg13.py:quick --workdir runs/cvgg13_quick
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    c = configs.base_config("cvgg13")
    c.model.input_size = 0
    return configs.sized(c, arg)
