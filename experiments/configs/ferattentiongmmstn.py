"""FERAtt+Rep+Cls with the STN (attgmmstnnet/ferattentiongmmstn) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattentiongmmstn.py --workdir runs/ferattentiongmmstn
CPU run of minutes:
    feratt train --config experiments/configs/ferattentiongmmstn.py:quick --workdir runs/ferattentiongmmstn_quick

The same config without a clone: ``--config ferattentiongmmstn[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ferattentiongmmstn", arg)
