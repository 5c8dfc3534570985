"""FERAtt+Cls with the STN (attstnnet/ferattentionstn) on the synthetic benchmark.

Full run (reference settings: batch 32, Adam+amsgrad lr 1e-4, 64x64):
    feratt train --config experiments/configs/ferattentionstn.py --workdir runs/ferattentionstn
CPU run of minutes:
    feratt train --config experiments/configs/ferattentionstn.py:quick --workdir runs/ferattentionstn_quick

The same config without a clone: ``--config ferattentionstn[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ferattentionstn", arg)
