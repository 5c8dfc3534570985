"""Benchmark-calibration candidates: the paper's baseline protocol on other face or dataset settings.

A config file (``feratt train --config experiments/calibration_candidates.py:NAME``)
kept out of ``experiments/configs/``, which holds only the packaged model
configs (``--config MODEL[:SIZE]``).

The calibration run of docs/training.md section 0 is the PreActResNet18
``:quick`` config on the ``train`` preset. A candidate changes only the data
side (never a model), named by the argument:

* ``v2_100subjects``: the second generator's rule (every subject poses the
  prototype at full strength; HOG 86.6 % on clean faces over 5 folds) on a
  dataset of BU-3DFE's size, 100 subjects with 10 per fold (80 train, 10
  validation, 10 test), instead of 200.

    feratt train --config experiments/calibration_candidates.py:v2_100subjects --workdir runs/cal_v2_100
    python experiments/calibration_curve.py --workdir runs/cal_v2_100 \\
        --out experiments/results/benchmark_calibration --name baseline_train_preset_v2_100subjects
"""

from feratt_jax import configs

CANDIDATES = {
    "v2_100subjects": {
        "generator": {"posing_variation": 0.0, "expressiveness_spread": 0.0},
        "num_subjects": 100,
        "subjects_per_fold": 10,
    },
}


def get_config(arg: str = "v2_100subjects"):
    if arg not in CANDIDATES:
        raise ValueError(f"calibration_candidates.py:{arg}: unknown candidate; choose one of {sorted(CANDIDATES)}")
    c = configs.named_config("preactresnet18", "quick")
    cand = CANDIDATES[arg]
    c.data.generator = dict(cand["generator"])
    c.data.num_subjects = cand["num_subjects"]
    c.data.subjects_per_fold = cand["subjects_per_fold"]
    c.data.render_preset = c.data.eval_render_preset = "train"
    c.train.num_steps = 6000
    c.train.eval_every = c.train.checkpoint_every = 500
    c.train.log_every = 100
    c.train.image_log_every = 0
    return c
