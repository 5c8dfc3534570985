"""Default configuration shared by every experiment config.

The named configs (:data:`NAMED_CONFIGS`, ``--config ferattention:quick``)
are a few lines on top of :func:`base_config`: each picks the model and the
loss variant and sizes the run (big_vision style: one trainer, variants are
configs); ``experiments/configs/NAME.py`` documents and returns the same. Library code reads
plain values from the ConfigDict; nothing below imports the trainer.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from typing import Any, Mapping, Sequence

import ml_collections

from feratt_jax.losses import reference_loss_options
from feratt_jax.models import FERATT_VARIANTS, LOSS_VARIANT, PAPER_ERA_MODELS
from feratt_jax.models.summary import DEFAULT_IMAGE_SIZE



def base_config(model_name: str) -> ml_collections.ConfigDict:
    """The reference's settings (docs/reference.md 4.2) for ``model_name``.

    Batch 32, Adam with amsgrad at lr 1e-4 and no schedule, 64x64 images,
    dim 32, sigma 0.5; subject-independent fold 0 of the synthetic benchmark.
    The paper-era model (ferattention_2019) gets that code's settings instead,
    see :func:`paper_era_settings`.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = model_name
    c.model.num_classes = 8
    c.model.dim = 32
    c.model.backbone = "preactresnet18"  # FERAtt variants only
    c.model.attention_channels = 0  # 0 = num_classes, as the reference ties them
    c.model.num_filters = 32  # attention U-Net decoder width (reference: 32; ferattention_2019: also the feature branch's)
    c.model.backbone_width = 64  # PreActResNet18 first-stage width (reference: 64)
    c.model.num_feature_blocks = 8  # residual blocks of the feature branch (reference: 8)
    c.model.reconstruction_relu = True  # ReLU(BN(.)) at the reconstruction's end (reference); False: BN(.)
    c.model.baseline_width = 0  # the PreActResNet18 baseline's first-stage width; 0 = the reference's 64
    c.model.input_size = 0  # 0 = the rendered image size; e.g. 32 for the paper's baseline
    c.model.input_standardization = False  # per-image zero mean / unit std before the model (not in the reference)
    c.model.compute_dtype = "float32"  # or "bfloat16" (params stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.variant = LOSS_VARIANT[model_name]
    c.loss.sigma = 0.5
    c.loss.mixup = True
    c.loss.mixup_label_mode = "soft"  # "reference" reproduces the float-equality bug
    # True: each row's class mean contains the row (the reference), which random embeddings can
    # exploit; False: the mean of the other rows of its class (docs/reference.md 7, defect 20)
    c.loss.class_mean_includes_self = False
    c.loss.cross_entropy_weight = 1.0
    c.loss.reconstruction_weight = 1.0
    c.loss.stn_weight = 1.0
    c.loss.gaussian_space_weight = 1.0
    c.loss.embedding_norm_weight = -1.0  # < 0: the reference's weight for the variant
    c.loss.scale_by_batch_size = False  # the reference's loss * B before backward
    # "tanh": the reference's saturating 5 mean tanh(3|err|); "linear": 5 mean 3|err|, which keeps
    # the gradient of badly wrong pixels (docs/training.md section 8)
    c.loss.reconstruction_form = "tanh"

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.amsgrad = True
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0  # torch Adam's L2 term, added to the gradient before the moments
    c.optimizer.decoupled_weight_decay = 0.0  # torch AdamW's decay, added after the Adam direction
    c.optimizer.schedule = "constant"  # or "cosine", "step" (StepLR: see step_size, step_gamma), or "plateau"
    c.optimizer.step_size = 0  # schedule "step": multiply the rate by step_gamma every step_size steps
    c.optimizer.step_gamma = 0.1
    # schedule "plateau": multiply the rate by plateau_factor after plateau_patience evaluations
    # without a better validation accuracy (optax.contrib.reduce_on_plateau)
    c.optimizer.plateau_factor = 0.1
    c.optimizer.plateau_patience = 5
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip_norm = 0.0  # 0 = off

    # Fields of feratt_jax.data.pipeline.DataConfig (batch size and number of
    # classes come from train/model); see its docstring for each.
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # or ckplus, bu3dfe, ... / a folder from `feratt data prepare`
    c.data.mode = "synthetic"  # "real": the aligned faces as they are, no compositing
    c.data.split = "kfold"  # "official": the dataset's own train/val/test partition
    c.data.num_subjects = 300
    c.data.intensities = 3
    c.data.face_seed = 0
    c.data.subjects_per_fold = 30
    c.data.num_folds = 0  # 0 = num_subjects // subjects_per_fold
    c.data.fold = 0
    c.data.val_subjects = -1  # -1 = subjects_per_fold
    c.data.image_size = 64
    c.data.val_size = 1024
    c.data.test_size = 2048
    c.data.eval_seed = 1234
    c.data.background_dir = ""  # a folder of the user's own images (e.g. COCO); "" = built-in
    c.data.face_scene_prob = 0.0  # share of backgrounds with other (non-dataset) faces pasted in
    c.data.render_preset = "train"
    c.data.eval_render_preset = "train"  # "eval" = the reference eval.py's harsher 45/0.3/0.2
    # An easier renderer preset for the first curriculum_steps training batches ("" = none).
    c.data.curriculum_preset = ""
    c.data.curriculum_steps = 0
    c.data.cache_dir = ""  # "" = $FERATT_CACHE_DIR or ~/.cache/feratt_jax
    c.data.loader = "auto"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.num_steps = 90_000
    c.train.log_every = 100
    c.train.eval_every = 2_000
    c.train.checkpoint_every = 2_000
    c.train.keep_checkpoints = 3
    c.train.image_log_every = 2_000
    c.train.eval_batch_size = 128
    # Re-estimate BatchNorm statistics over this many training batches before
    # each evaluation (feratt_jax/precise_bn.py); 0 = evaluate with the
    # running averages, as the reference does.
    c.train.precise_bn_batches = 0
    # `feratt train` ends by writing the test confusion matrix and the
    # attention/reconstruction grid of the best checkpoint to workdir/eval/.
    c.train.final_figures = False
    # Stop after this many evaluations without a better validation accuracy (0 = never); the best
    # checkpoint is what the final evaluation uses either way.
    c.train.early_stopping_patience = 0
    c.train.profile = False
    c.train.init_from = ""  # a model export dir (feratt convert) or another run's workdir
    c.train.distributed = False
    if model_name in PAPER_ERA_MODELS:
        paper_era_settings(c)
    return c


# The paper-era trainer's epoch: 70,000 rendered samples at batch 240, last partial batch dropped.
PAPER_ERA_STEPS_PER_EPOCH = 70_000 // 240


def paper_era_settings(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training settings of reference commit 53fd5e4 (runs/train.sh, train.py, attentionnet.py there).

    128x128 input; 4 feature blocks; the generator at angle 45 (else as HEAD's
    training); the loss CE + DGMM(sigma 1, no mixup) + 2 min(MSE, 30) + the
    unscaled STN MSE, not multiplied by B; Adam (amsgrad) at 1e-4 with StepLR
    x0.1 every 100 epochs; batch 240; 500 epochs; evaluation and snapshots
    every 10 epochs. PyTorch 1.0's StepLR took one step when built, so the
    reference decayed after 99, 199, ... epochs; this decays after 100, 200, ...
    """
    epoch = PAPER_ERA_STEPS_PER_EPOCH
    c.model.num_feature_blocks = 4
    c.data.image_size = 128
    c.data.render_preset = c.data.eval_render_preset = "paper2019"
    c.loss.update(reference_loss_options(c.loss.variant))
    c.optimizer.schedule = "step"
    c.optimizer.step_size = 100 * epoch
    c.optimizer.step_gamma = 0.1
    c.train.batch_size = 240
    c.train.num_steps = 500 * epoch
    c.train.eval_every = c.train.checkpoint_every = c.train.image_log_every = 10 * epoch
    return c


def set_num_steps(c: ml_collections.ConfigDict, num_steps: int) -> None:
    """Set ``train.num_steps``, keeping a step schedule's decays at the same fractions of the run."""
    if c.optimizer.schedule == "step" and c.train.num_steps:
        c.optimizer.step_size = max(c.optimizer.step_size * num_steps // c.train.num_steps, 1)
    c.train.num_steps = num_steps


def narrow_feratt(c: ml_collections.ConfigDict) -> None:
    """The CPU widths of FERAtt: U-Net decoder 32 -> 8 filters, feature branch 8 -> 2 blocks, classifier 64 -> 16.

    The ResNet-34 encoder keeps its widths. Baselines read none of these options.
    """
    c.model.num_filters = 8
    c.model.backbone_width = 16
    c.model.num_feature_blocks = 2


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a config to a CPU run of minutes (the README's main job).

    XLA's CPU backend runs the full-size FERAtt train step at ~18 images/s on
    2 cores (docs/performance.md), and a network needs ~10-20k composites
    before it leaves chance on this data (docs/training.md). So the quick run
    narrows the networks (U-Net decoder 32 -> 8 filters, feature branch 8 ->
    2 residual blocks, PreActResNet18 64 -> 16 channels; the ResNet-34
    encoder is unchanged), standardizes each input image (the single change
    that made training leave chance within the budget), uses the milder
    renderer preset (+-10 degrees instead of +-30, 5% translation instead of
    20%, less warp and scale), a larger learning rate (1e-3), and
    re-estimates BatchNorm statistics before each evaluation. Baseline
    configs keep their own architecture; only the FERAtt options shrink.
    The full configs keep every reference setting.
    """
    narrow_feratt(c)
    c.model.input_standardization = True
    c.data.num_subjects = 200
    c.data.subjects_per_fold = 20
    c.data.val_size = 256
    c.data.test_size = 512
    c.data.render_preset = "mild"
    c.data.eval_render_preset = "mild"
    c.train.batch_size = 32
    # 400 steps (12,800 composites) keep the main job near 5 minutes on a
    # normal day; 800 gave ~10 (docs/training.md, the main job).
    set_num_steps(c, 400)
    c.train.log_every = 25
    # One evaluation, at the end: a mid-run one re-estimated BN statistics,
    # ran the validation set and saved a best checkpoint (about 8 s of the
    # job), and the best checkpoint of every seed measured was the last.
    c.train.eval_every = 400
    c.train.checkpoint_every = 200
    c.train.image_log_every = 400
    c.train.eval_batch_size = 128
    # At lr 1e-3 over hundreds of steps the running averages trail the weights enough
    # to put a learning network at chance in eval mode (docs/training.md).
    c.train.precise_bn_batches = 16
    # The main job shows what the model learned without a second command.
    c.train.final_figures = True
    c.optimizer.learning_rate = 1e-3
    # No ReLU after the reconstruction's last BN (the main job's seeds 0-2: 73.4 / 68.0 / 58.2 %
    # test without it, 63.7 / 68.9 / 40.8 % with it; docs/training.md section 9). Only here:
    # the benchmark size and the full configs keep the reference's ReLU.
    if c.model.name in FERATT_VARIANTS:
        c.model.reconstruction_relu = False
    return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config for tests: a handful of steps on a few subjects, FERAtt at the quick size's widths.

    The narrow widths keep the tests' FERAtt runs cheap to compile and run;
    the full widths are covered by the model and PyTorch-parity tests.
    """
    narrow_feratt(c)
    c.data.num_subjects = 16
    c.data.subjects_per_fold = 4
    c.data.val_size = 16
    c.data.test_size = 16
    c.train.batch_size = 8
    set_num_steps(c, 2)
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.checkpoint_every = 1
    c.train.image_log_every = 0
    c.train.eval_batch_size = 8
    return c


def benchmark(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The synthetic benchmark at the paper's dataset size, with the quick size's widths.

    The quick size's networks, optimizer and evaluation, on the data of the
    benchmark calibration (docs/training.md section 0): 100 subjects with 10
    per fold (BU-3DFE's size), the ``train`` preset (the reference's +-30
    degrees and 20 % translation, so the attention has to find the face) for
    training and evaluation, and 6,000 steps of 32 (192k composites, where
    the baseline's gains have slowed to a few points). On the default faces
    the baseline ends above the calibration's 65-85 % target, so the
    calibration is not finished; the size is what its next candidates run
    at. Over an hour per run on a 2-core CPU; the run for an accelerator.
    """
    c = quick(c)
    # The reference's ReLU: without it, FERAtt+Cls at this size (fold 0, seed 0, CPU) stalled at
    # chance for 1,000 steps where the ReLU'd run left it (docs/training.md section 9).
    c.model.reconstruction_relu = True
    c.data.num_subjects = 100
    c.data.subjects_per_fold = 10
    c.data.render_preset = c.data.eval_render_preset = "train"
    set_num_steps(c, 6000)
    c.train.eval_every = c.train.checkpoint_every = 500
    c.train.log_every = 100
    c.train.image_log_every = 0
    return c


# The calibrated size's schedule: the constant rate to this step, then a tenfold cut, as the
# calibration run and its fork were trained (docs/training.md section 0).
CALIBRATED_CUT_STEP = 19_000
CALIBRATED_STEPS = 21_000


def calibrated(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The benchmark size on the calibrated data: its converged baseline lands in the paper's range.

    The ``benchmark`` size with the ``degraded16`` renderer preset (the
    ``train`` geometry, every composite resampled through 16 px and given
    noise and blur) for training and evaluation, validation on 1,024
    composites, and the schedule the calibration measured: 1e-3 to step
    19,000, then 1e-4 to 21,000 (where its baseline converged inside the
    paper's baseline range: docs/training.md section 0). A straight run of
    this schedule differs from that measurement in one way: Adam's moments
    and the composite stream carry on across the cut instead of restarting.
    Hours per fold on a 2-core CPU; the size for an accelerator.
    Overriding ``train.num_steps`` (``paper_table.py --steps``) moves the
    end, not the cut: set ``optimizer.step_size`` with it.
    """
    c = benchmark(c)
    c.data.render_preset = c.data.eval_render_preset = "degraded16"
    c.data.val_size = 1024
    c.optimizer.schedule = "step"
    c.optimizer.step_size = CALIBRATED_CUT_STEP
    c.optimizer.step_gamma = 0.1
    c.train.num_steps = CALIBRATED_STEPS
    return c


SIZES = {"": lambda c: c, "full": lambda c: c, "quick": quick, "tiny": tiny, "benchmark": benchmark, "calibrated": calibrated}

# The paper's table settings (docs/reference.md 6): dataset -> (classes, subjects).
PAPER_DATASETS = {"ckplus": (8, 123), "bu3dfe": (7, 100)}


def paper_table_config(dataset: str, mode: str, arg: str = "") -> ml_collections.ConfigDict:
    """One setting of the paper's tables: CK+ (8 classes) or BU-3DFE (7), "synthetic" or "real" rows.

    The data come from ``feratt data prepare --dataset DATASET`` (see
    ``feratt_jax.data.pipeline.DataConfig.source``). Folds hold out 10
    subjects for test and the next 10 for validation, the reference's
    ``nactor=10``. Rows "real" train and test on the aligned faces as they
    are (no pose augmentation: ``render_preset="identity"``; "mild" adds some).

    Args:
      dataset: "ckplus" or "bu3dfe".
      mode: "synthetic" or "real".
      arg: comma-separated model name (default ferattention; the paper's
        methods are ferattention, ferattentiongmm and preactresnet18) and size
        (quick, tiny), e.g. "ferattentiongmm,quick".
    """
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"dataset must be one of {sorted(PAPER_DATASETS)}, got {dataset!r}")
    model_name, size = "ferattention", ""
    for token in filter(None, (t.strip() for t in arg.split(","))):
        if token in SIZES:
            size = token
        elif token in LOSS_VARIANT:
            model_name = token
        else:
            raise ValueError(
                f"unknown config argument {token!r}; use a model {sorted(LOSS_VARIANT)} "
                f"and/or a size {sorted(k for k in SIZES if k)}"
            )
    c = sized(base_config(model_name), size)
    c.model.input_size = DEFAULT_IMAGE_SIZE.get(model_name, 0)
    c.model.num_classes, subjects = PAPER_DATASETS[dataset]
    c.data.source = dataset
    c.data.num_subjects = subjects  # not used to load real data; `feratt kfold` counts folds with it
    c.data.mode = mode
    c.data.subjects_per_fold = 10
    c.data.val_subjects = 10
    if mode == "real":
        c.data.render_preset = "identity"
        c.data.eval_render_preset = "identity"
    return c


def sized(c: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
    """Apply the size named by a config argument ("" / full, quick, tiny)."""
    if arg not in SIZES:
        raise ValueError(f"unknown config argument {arg!r}; use one of {sorted(k for k in SIZES if k)}")
    return SIZES[arg](c)


def _model_config(model_name: str, input_size: int | None = None, narrow_baseline: bool = False):
    def get(arg: str = "") -> ml_collections.ConfigDict:
        c = base_config(model_name)
        if input_size is not None:
            c.model.input_size = input_size
        c = sized(c, arg)
        if narrow_baseline:
            c.model.baseline_width = c.model.backbone_width  # FERAtt's classifier width at this size
        return c

    return get


def _paper_table(dataset: str, mode: str):
    return lambda arg="": paper_table_config(dataset, mode, arg)


# The configs a user can name without a clone (``--config NAME[:ARG]``); each
# experiments/configs/NAME.py is a documented file that returns the same.
NAMED_CONFIGS = {
    **{name: _model_config(name) for name in ("ferattention", "ferattentiongmm", "ferattentionstn", "ferattentiongmmstn", "ferattention_2019")},
    "cvgg13": _model_config("cvgg13", input_size=0),
    "preactresnet18": _model_config("preactresnet18", input_size=32),  # the paper's 32x32 baseline
    "preactresnet18_narrow": _model_config("preactresnet18", input_size=32, narrow_baseline=True),
    "resnet18": _model_config("resnet18", input_size=224),
    **{f"{d}_{m}": _paper_table(d, m) for d in PAPER_DATASETS for m in ("synthetic", "real")},
}


def named_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
    """The packaged config ``name`` (a key of :data:`NAMED_CONFIGS`) with its argument, e.g. ("ferattention", "quick")."""
    if name not in NAMED_CONFIGS:
        close = difflib.get_close_matches(name, list(NAMED_CONFIGS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown config name {name!r}{hint}; use one of {sorted(NAMED_CONFIGS)} or a FILE.py")
    return NAMED_CONFIGS[name](arg)


# --------------------------------------------------------------------------
# Loading "NAME[:ARG]" / "FILE[:ARG]" and "--config.a.b=value" overrides
# --------------------------------------------------------------------------


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load a config and apply ``--config.key=value`` overrides.

    ``spec`` is ``NAME[:ARG]`` (a packaged config, e.g. ``ferattention:quick``;
    works after a plain ``pip install``) or ``FILE.py[:ARG]`` (a file with a
    ``get_config(arg)``, e.g. ``experiments/configs/ferattention.py:quick``).

    Raises:
      FileNotFoundError: the config file does not exist.
      ValueError: unknown config name, the file has no ``get_config``, or an
        override names an unknown field or has a value of the wrong type.
    """
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if path.suffix != ".py" and len(path.parts) == 1 and not path.is_file():
        config = named_config(path_str, arg)
        apply_overrides(config, overrides)
        return config
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"feratt_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides)
    return config


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; ``data.render``/``data.generator`` (override mappings) stay leaves."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, (Mapping, ml_collections.ConfigDict)) and k not in ("render", "generator"):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def unknown_field_message(key: str, known: Sequence[str]) -> str:
    """``unknown config field 'x'``, with difflib's closest known names."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config field {key!r}{hint}"


# Mappings of overrides whose keys are RenderConfig / GeneratorConfig fields:
# absent from the base config, any key may be set, and the data config checks
# it (``DataConfig.validate``) before any work is done.
OVERRIDE_MAPPINGS = ("render", "generator")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply ``--config.a.b=value`` (or ``a.b=value``) strings in place.

    ``--config.data.generator.FIELD=VALUE`` and ``--config.data.render.FIELD=VALUE``
    add one entry to those override mappings.
    """
    for item in overrides:
        key, sep, raw = item.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form --config.key=value (or --config.key value)")
        mapping, _, field = key.removeprefix("data.").partition(".")
        if key.startswith("data.") and mapping in OVERRIDE_MAPPINGS and field and "." not in field:
            entries = dict(config.data.get(mapping) or {})
            try:
                entries[field] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                entries[field] = raw  # a bare word: a string field (e.g. a preset name)
            config.data[mapping] = entries
            continue
        parent = config
        *path, leaf = key.split(".")
        for part in path:
            if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
                raise ValueError(unknown_field_message(key, list(flatten(config.to_dict()))))
            parent = parent[part]
        if leaf not in parent:
            raise ValueError(unknown_field_message(key, list(flatten(config.to_dict()))))
        parent[leaf] = _coerce(raw, parent[leaf], key)


def _coerce(raw: str, current: Any, key: str) -> Any:
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"config field {key!r}: cannot parse {raw!r}") from err
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"config field {key!r} expects a bool, got {raw!r}")
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"config field {key!r} expects {type(current).__name__}, got {raw!r}")
    return value
