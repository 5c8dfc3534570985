"""FERAtt+Cls (the reference's attnet/ferattention) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattention.py --workdir runs/ferattention
CPU run of minutes:
    feratt train --config experiments/configs/ferattention.py:quick --workdir runs/ferattention_quick
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    c = configs.base_config("ferattention")
    return configs.sized(c, arg)
