"""FERAtt+Rep+Cls with the STN (attgmmstnnet/ferattentiongmmstn) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattentiongmmstn.py --workdir runs/ferattentiongmmstn
CPU run of minutes:
    feratt train --config experiments/configs/ferattentiongmmstn.py:quick --workdir runs/ferattentiongmmstn_quick
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    c = configs.base_config("ferattentiongmmstn")
    return configs.sized(c, arg)
