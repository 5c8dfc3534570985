"""Baseline: ResNet18 (torchvision layout, not pretrained) on the composite resized to 224x224, as the reference feeds it.

    feratt train --config experiments/configs/resnet18.py --workdir runs/resnet18
    feratt train --config experiments/configs/resnet18.py:quick --workdir runs/resnet18_quick
"""

from feratt_jax import configs


def get_config(arg: str = ""):
    c = configs.base_config("resnet18")
    c.model.input_size = 224
    return configs.sized(c, arg)
