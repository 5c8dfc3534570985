"""FERAtt+Rep+Cls (the reference's attgmmnet/ferattentiongmm) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattentiongmm.py --workdir runs/ferattentiongmm
CPU run of minutes:
    feratt train --config experiments/configs/ferattentiongmm.py:quick --workdir runs/ferattentiongmm_quick

The same config without a clone: ``--config ferattentiongmm[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ferattentiongmm", arg)
