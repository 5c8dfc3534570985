"""FERAtt+Cls with the STN (attstnnet/ferattentionstn) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattentionstn.py --workdir runs/ferattentionstn
CPU run of minutes:
    feratt train --config experiments/configs/ferattentionstn.py:quick --workdir runs/ferattentionstn_quick
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    c = configs.base_config("ferattentionstn")
    return configs.sized(c, arg)
