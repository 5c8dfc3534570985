"""Baseline: ResNet18 (torchvision layout, not pretrained) on the composite resized to 224x224, as the reference feeds it.

    feratt train --config experiments/configs/resnet18.py --workdir runs/resnet18
    feratt train --config experiments/configs/resnet18.py:quick --workdir runs/resnet18_quick

The same config without a clone: ``--config resnet18[:ARG]`` (feratt_jax.configs.NAMED_CONFIGS).
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    return configs.named_config("resnet18", arg)
