"""FERAtt+Cls (the reference's attnet/ferattention) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattention.py --workdir runs/ferattention
CPU run of minutes:
    feratt train --config experiments/configs/ferattention.py:quick --workdir runs/ferattention_quick

The same config without a clone: ``--config ferattention[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ferattention", arg)
