"""BU-3DFE (7 classes), synthetic: faces composited onto clutter by the renderer (the paper's "Synthetic BU-3DFE" rows).

Prepare the data once (the folder this config reads by default):
    feratt data prepare --dataset bu3dfe --raw-dir RAW
Train (argument: model and/or size, e.g. ferattentiongmm,quick; models ferattention, ferattentiongmm, preactresnet18):
    feratt train --config experiments/configs/bu3dfe_synthetic.py --workdir runs/bu3dfe_synthetic
A prepared folder elsewhere: --config.data.source=path/to/prepared/bu3dfe

The same config without a clone: ``--config bu3dfe_synthetic[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("bu3dfe_synthetic", arg)
