"""CK+ (8 classes), real: the aligned faces as they are, no compositing (the paper's "Real CK+" rows).

Prepare the data once (the folder this config reads by default):
    feratt data prepare --dataset ckplus --raw-dir RAW
Train (argument: model and/or size, e.g. ferattentiongmm,quick; models ferattention, ferattentiongmm, preactresnet18):
    feratt train --config experiments/configs/ckplus_real.py --workdir runs/ckplus_real
A prepared folder elsewhere: --config.data.source=path/to/prepared/ckplus

The same config without a clone: ``--config ckplus_real[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ckplus_real", arg)
