"""The paper-era FERAtt (reference commit 53fd5e4, Jan 2019: the code behind the paper's tables).

Model ``ferattention_2019`` (the reference's arch ``atentionresnet34``,
reference.md 8) with that commit's ``runs/train.sh`` and trainer settings:
128x128 input, batch 240, Adam (amsgrad) at lr 1e-4 with PyTorch's StepLR
(x0.1 every 100 epochs), 500 epochs of 70,000 samples (291 batches each, the
loader drops the last partial batch), dim 32, and the loss
CE + DGMM(sigma 1.0, no mixup) + 2 min(MSE(x_org * mask, att), 30) + the
unscaled STN MSE, back-propagated without the later trainers' x B.

Not reproduced: the reference's scheduler took one step at construction
(PyTorch 1.0), so its decays came one epoch early (after 99, 199, ...
epochs); train.sh's dataset is BU-3DFE (7 classes), this config's default is
the synthetic benchmark (8), as the other configs.

Full run (a GPU job):
    feratt train --config experiments/configs/ferattention_2019.py --workdir runs/ferattention_2019
CPU run (narrow networks at 128x128; slower than HEAD's quick configs at 64):
    feratt train --config experiments/configs/ferattention_2019.py:quick --workdir runs/ferattention_2019_quick
"""

from feratt_jax import configs
from feratt_jax.losses import reference_loss_options

STEPS_PER_EPOCH = 70_000 // 240  # 291
EPOCHS, STEP_EPOCHS = 500, 100


def get_config(arg: str = ""):
    c = configs.base_config("ferattention_2019")
    c.model.num_feature_blocks = 4
    c.data.image_size = 128
    c.data.render_preset = "paper2019"  # train.py's generator: angle 45, translation 0.2, warp 0.1, scale 0.2
    c.data.eval_render_preset = "paper2019"
    for key, value in reference_loss_options(c.loss.variant).items():
        c.loss[key] = value  # sigma 1.0, no mixup, no x B
    c.optimizer.schedule = "step"
    c.optimizer.step_gamma = 0.1
    c.train.batch_size = 240
    c.train.num_steps = EPOCHS * STEPS_PER_EPOCH
    c.optimizer.step_size = STEP_EPOCHS * STEPS_PER_EPOCH
    c.train.eval_every = 10 * STEPS_PER_EPOCH  # the reference's snapshot interval, 10 epochs
    c.train.checkpoint_every = 10 * STEPS_PER_EPOCH
    c.train.image_log_every = 10 * STEPS_PER_EPOCH
    c = configs.sized(c, arg)
    if arg in ("quick", "tiny"):
        # The same schedule shape on the shorter run: decay x0.1 after each fifth of it.
        c.optimizer.step_size = max(c.train.num_steps * STEP_EPOCHS // EPOCHS, 1)
    return c
