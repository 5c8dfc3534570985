"""CK+ (8 classes), synthetic: faces composited onto clutter by the renderer (the paper's "Synthetic CK+" rows).

Prepare the data once (the folder this config reads by default):
    feratt data prepare --dataset ckplus --raw-dir RAW
Train (argument: model and/or size, e.g. ferattentiongmm,quick; models ferattention, ferattentiongmm, preactresnet18):
    feratt train --config experiments/configs/ckplus_synthetic.py --workdir runs/ckplus_synthetic
A prepared folder elsewhere: --config.data.source=path/to/prepared/ckplus

The same config without a clone: ``--config ckplus_synthetic[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("ckplus_synthetic", arg)
