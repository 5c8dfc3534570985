"""Faults and bad input: checkpoint positions, one writer per workdir, validation before work, a full disk, corrupt inputs.

The SIGKILL scenarios live in test_preemption.py; docs/reliability.md lists
every fault with the test that shows it.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from feratt_jax import checkpointing, cli, configs, factory, validation
from feratt_jax import metric_writer as metric_writer_lib
from feratt_jax import train as train_lib
from feratt_jax.workdir_lock import LOCK_NAME, WorkdirBusyError, exclusive_writer

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "configs" / "preactresnet18.py") + ":tiny"


def small_config(cache_dir: str, **train):
    """PreActResNet18 at width 8 on the tiny data: a checkpoint is ~3 MB, a step well under a second."""
    c = configs.load_config(TINY)
    c.model.baseline_width = 8
    c.data.cache_dir = cache_dir
    c.data.loader = "numpy"
    c.train.eval_every = 1000
    for k, v in train.items():
        c.train[k] = v
    return c


def data_position(step_dir: pathlib.Path) -> dict:
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "data")


def saved_step(step_dir: pathlib.Path) -> int:
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(step_dir / "state").item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return int(checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=args))["step"])


# ------------------------------------------------------- checkpoint positions


def test_every_checkpoint_records_the_batch_the_next_step_consumes(cache_dir, tmp_path):
    """Periodic and best checkpoints: ``next_index`` equals the step (step k consumes batch k - 1).

    Then a resume with a changed learning rate is refused, naming the field,
    and the stored config is left as it was.
    """
    config = small_config(cache_dir, num_steps=3, checkpoint_every=1, eval_every=2)
    train_lib.train_and_evaluate(config, tmp_path)
    for step in (1, 2, 3):
        assert data_position(tmp_path / "checkpoints" / str(step)) == {"next_index": step}, f"checkpoint {step}"
    (best,) = [p for p in (tmp_path / "best").iterdir() if p.name.isdigit()]
    assert data_position(best) == {"next_index": int(best.name)}

    stored = (tmp_path / "config.json").read_text()
    changed = small_config(cache_dir, num_steps=5, checkpoint_every=1, eval_every=2, log_every=7)
    changed.optimizer.learning_rate = 3e-4
    with pytest.raises(ValueError, match=r"differ: optimizer\.learning_rate \(0\.0001 -> 0\.0003\)\. Use a new --workdir"):
        train_lib.train_and_evaluate(changed, tmp_path)
    assert (tmp_path / "config.json").read_text() == stored


def test_a_resume_on_faces_drawn_otherwise_is_refused_with_the_overrides_that_restore_them(cache_dir, tmp_path, capsys):
    """``config.json`` holds only overrides; ``data.json`` holds every generator and renderer field.

    A run recorded under another generator default (as the posing rule
    changed on 2026-12-03) must not silently resume on the new faces.
    """
    config = small_config(cache_dir, num_steps=1, checkpoint_every=1)
    train_lib.train_and_evaluate(config, tmp_path)
    path = tmp_path / validation.DATA_PROVENANCE_FILE
    recorded = json.loads(path.read_text())
    assert recorded == factory.data_config(config).provenance()
    assert recorded["generator"]["posing_variation"] == 0.0 and recorded["render"]["image_size"] == config.data.image_size

    recorded["generator"]["posing_variation"] = 0.5  # as the older default wrote it
    path.write_text(json.dumps(recorded))
    longer = small_config(cache_dir, num_steps=2, checkpoint_every=1)
    with pytest.raises(ValueError, match=r"generator\.posing_variation \(0\.5 -> 0\.0\)\. If a default changed, "
                       r"continue it with --config\.data\.generator\.posing_variation=0\.5; otherwise use a new --workdir"):
        train_lib.train_and_evaluate(longer, tmp_path)
    assert json.loads(path.read_text())["generator"]["posing_variation"] == 0.5  # the record is kept
    # The hinted override passes the check (the whole resume is not run here: the bank would be redrawn).
    configs.apply_overrides(longer, ["--config.data.generator.posing_variation=0.5"])
    validation.check_resume_data(recorded, factory.data_config(longer).provenance(), tmp_path)
    # A new drawing version cannot be restored by an override.
    with pytest.raises(ValueError, match="drawing changed since that run started") as err:
        validation.check_resume_data({**recorded, "generator_version": 2}, factory.data_config(longer).provenance(), tmp_path)
    assert "--config.data" not in str(err.value)

    # A damaged record is named, and left for the user to look at.
    path.write_text("{")
    with pytest.raises(ValueError, match=r"data\.json is not valid JSON .*delete it to resume without the check"):
        train_lib.train_and_evaluate(small_config(cache_dir, num_steps=2, checkpoint_every=1), tmp_path)
    assert path.read_text() == "{"
    # A workdir from before data.json resumes with a warning, and gets no record it could not vouch for.
    path.unlink()
    train_lib.train_and_evaluate(small_config(cache_dir, num_steps=2, checkpoint_every=1), tmp_path)
    assert "cannot be checked" in capsys.readouterr().out and not path.exists()


# ----------------------------------------------------------- one writer


_HOLD = """
import sys, time
from feratt_jax.workdir_lock import exclusive_writer
with exclusive_writer(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_trainer_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli.main(["train", "--config", TINY, "--workdir", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert rc == 2
        assert len(err.splitlines()) == 1
        assert f"already being trained by pid {holder.pid} on host {socket.gethostname()!r}" in err
        assert not (tmp_path / "config.json").exists(), "the refused trainer wrote into the workdir"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's flock; its note in the file is stale.
    with exclusive_writer(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"taking over the stale lock {tmp_path / LOCK_NAME} of pid {holder.pid}" in out


def test_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(WorkdirBusyError, match=rf"pid 1 on host 'elsewhere'.*delete {tmp_path / LOCK_NAME}"):
        with exclusive_writer(tmp_path):
            pass


# ------------------------------------------------------------- validation


def test_bad_value_stops_before_any_work_with_a_suggestion(tmp_path, capsys):
    workdir = tmp_path / "run"
    # The absl form "--config.a.b VALUE" reaches the config like "--config.a.b=VALUE".
    rc = cli.main(["train", "--config", TINY, "--workdir", str(workdir), "--config.optimizer.schedule", "cosin"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "optimizer.schedule must be one of ['constant', 'cosine', 'step', 'plateau'], got 'cosin' (did you mean 'cosine'?)" in err
    assert not workdir.exists(), "validation must run before anything is written"


def test_spaced_overrides_are_joined():
    argv = ["train", "--config", "x.py", "--config.train.num_steps", "12", "--config.loss.embedding_norm_weight", "-1.0", "--config.seed=3"]
    assert cli.join_config_overrides(argv) == [
        "train", "--config", "x.py", "--config.train.num_steps=12", "--config.loss.embedding_norm_weight=-1.0", "--config.seed=3",
    ]  # fmt: skip


def test_unknown_fields_get_a_suggestion():
    c = configs.load_config(TINY)
    with pytest.raises(ValueError, match=r"unknown config field 'train.bach_size'; did you mean 'train.batch_size'"):
        configs.apply_overrides(c, ["--config.train.bach_size=4"])
    c.optimizer.learnig_rate = 1e-3  # a typo in a config file creates a new field silently
    with pytest.raises(ValueError, match=r"unknown config field 'optimizer.learnig_rate'; did you mean 'optimizer.learning_rate'"):
        validation.validate(c)


def _with(c, key, value):
    """``c`` with ``key`` set to ``value``, built from a dict as a stored config.json is (ConfigDict refuses retyping a field)."""
    d = c.to_dict()
    *path, leaf = key.split(".")
    parent = d
    for part in path:
        parent = parent[part]
    parent[leaf] = value
    return ml_collections.ConfigDict(d)


@pytest.mark.parametrize(
    "model, key, value, message",
    [
        ("preactresnet18", "train.num_steps", "10", "train.num_steps must be int, got str '10'"),
        ("preactresnet18", "loss.mixup", 1, "loss.mixup must be bool, got int 1"),
        ("preactresnet18", "optimizer.learning_rate", 0.0, "optimizer.learning_rate must be > 0, got 0.0"),
        ("preactresnet18", "optimizer.b2", 1.0, "optimizer.b2 must be < 1, got 1.0"),
        ("preactresnet18", "model.compute_dtype", "float16", "model.compute_dtype must be one of ['float32', 'bfloat16']"),
        ("preactresnet18", "train.batch_size", 12, "train.batch_size=12 is not divisible by the 8 devices"),
        ("preactresnet18", "model.input_size", 48, "model.input_size=48 must divide data.image_size=64"),
        ("preactresnet18", "data.fold", 4, "data.fold=4 is out of range: data.num_subjects=16 with data.subjects_per_fold=4 gives folds 0..3"),
        ("preactresnet18", "model.backbone", "resnet18", "model.backbone='resnet18' applies only to ferattention"),
        ("ferattention", "model.baseline_width", 8, "model.baseline_width=8 applies only to preactresnet18"),
        ("ferattention", "loss.variant", "attention_gmm", "loss.variant='attention_gmm' needs outputs model.name='ferattention' does not produce"),
        ("ferattentiongmmstn", "loss.variant", "attention_gmm_stn_2019", "loss.variant='attention_gmm_stn_2019' needs outputs model.name='ferattentiongmmstn' does not produce"),
        ("preactresnet18", "optimizer.schedule", "step", "optimizer.step_size=0 must be >= 1 with optimizer.schedule='step'"),
        ("ferattention_2019", "optimizer.step_gamma", 1.5, "optimizer.step_gamma must be <= 1, got 1.5"),
        ("preactresnet18", "data.source", "nowhere", "DataConfig: source 'nowhere' is not supported"),
        ("preactresnet18", "data.render_preset", "wild", "data.render_preset must be one of"),
    ],
)
def test_type_range_choice_and_cross_field_rules(model, key, value, message):
    c = configs.load_config(str(REPO / "experiments" / "configs" / f"{model}.py") + ":tiny")
    validation.validate(c, device_count=8)  # valid as shipped
    c = _with(c, key, value)
    with pytest.raises(ValueError, match="config: .*" + re.escape(message)):
        validation.validate(c, device_count=8)


def test_every_shipped_config_validates():
    for path in sorted((REPO / "experiments" / "configs").glob("*.py")):
        for size in ("", ":quick", ":tiny"):
            validation.validate(configs.load_config(f"{path}{size}"), device_count=1)


# ---------------------------------------------------------------- full disk


def _mount_tmpfs(where: pathlib.Path, size: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0


def _fill_leaving(disk: pathlib.Path, free_bytes: int) -> pathlib.Path:
    """Allocate a ballast file on ``disk`` so that about ``free_bytes`` stay free; returns its path."""
    stat = os.statvfs(disk)
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(stat.f_bavail * stat.f_frsize - free_bytes, 0))
    return ballast


def test_full_disk_at_a_checkpoint_stops_keeps_the_previous_and_resumes(cache_dir, tmp_path, monkeypatch):
    """A real tmpfs filled up just before the step-4 save where the machine allows mounting one (root);
    otherwise ENOSPC injected at that save.

    A checkpoint of this run is about 3 MB. The disk is filled after the step-2 save has committed,
    leaving 256 KB, so the step-4 save fails whatever the exact checkpoint size or the timing of the
    asynchronous writes (a fixed-size disk made the outcome depend on both).
    """
    disk = tmp_path / "disk"
    real_disk = _mount_tmpfs(disk, "64m")
    workdir = disk / "run"
    config = small_config(cache_dir, num_steps=6, checkpoint_every=2)
    ballast = []
    try:
        if real_disk:
            save = checkpointing.Checkpointer.save

            def fill_disk_at_step_4(self, step, *args, **kwargs):
                if step != 4 or ballast:
                    return save(self, step, *args, **kwargs)
                self.manager.wait_until_finished()  # step 2 is committed before the disk fills
                ballast.append(_fill_leaving(disk, 256 * 1024))
                save(self, step, *args, **kwargs)
                # The write runs on orbax's thread: wait for its ENOSPC here, so that no metrics line
                # of step 5 meets the full disk first and the failure always names the checkpoint.
                self.wait()

            monkeypatch.setattr(checkpointing.Checkpointer, "save", fill_disk_at_step_4)
        else:
            save = ocp.CheckpointManager.save

            def full_at_step_4(self, step, *args, **kwargs):
                if step == 4:  # tensorstore's own words for a full disk
                    raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in {self.directory}: No space left on device [os_error_code='28']")
                return save(self, step, *args, **kwargs)

            monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_step_4)
        with pytest.raises(OSError) as raised:
            train_lib.train_and_evaluate(config, workdir)
        assert raised.value.errno == errno.ENOSPC
        message = raised.value.strerror
        assert f"no space left on device writing a checkpoint in {workdir / 'checkpoints'}" in message
        assert "the checkpoint at step 2 is intact" in message and "rerun the same command" in message
        assert saved_step(workdir / "checkpoints" / "2") == 2  # readable
        # Free space, same command: it resumes from step 2 and finishes.
        monkeypatch.undo()
        if ballast:
            ballast[0].unlink()
        summary = train_lib.train_and_evaluate(config, workdir)
        assert summary["step"] == 6 and saved_step(workdir / "checkpoints" / "6") == 6
    finally:
        if real_disk:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_at_the_metrics_file_names_it_and_resumes(cache_dir, tmp_path, monkeypatch):
    """ENOSPC injected at the write of the third line of metrics.jsonl (a file opened by MetricWriter)."""
    real_open = builtins.open

    class FullAfterTwoLines:
        def __init__(self, f):
            self._f, self._lines = f, 0

        def write(self, text):
            self._lines += 1
            if self._lines > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(text)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def open_full(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return FullAfterTwoLines(f) if str(path).endswith("metrics.jsonl") else f

    monkeypatch.setattr(metric_writer_lib, "open", open_full, raising=False)
    config = small_config(cache_dir, num_steps=3, checkpoint_every=1)
    with pytest.raises(OSError) as raised:
        train_lib.train_and_evaluate(config, tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert f"writing {tmp_path / 'metrics.jsonl'}" in raised.value.strerror
    assert "the checkpoint at step 1 is intact" in raised.value.strerror
    monkeypatch.undo()
    assert train_lib.train_and_evaluate(config, tmp_path)["step"] == 3


# ------------------------------------------------------------ corrupt inputs


def test_convert_says_not_a_torch_checkpoint_and_advises_trust_only_for_pickled_objects(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for path in (junk, text):
        assert cli.main(["convert", "--from-torch", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"{path} is not a PyTorch checkpoint (or corrupt)" in err and "trust-pickle" not in err
    # A real checkpoint holding an object safe loading refuses: then the advice is right.
    pickled = tmp_path / "objects.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": pathlib.PurePosixPath("x")}, pickled)
    assert cli.main(["convert", "--from-torch", str(pickled), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "safe (weights_only) loading refuses" in err and "--trust-pickle" in err


def test_predict_on_a_non_image_says_it_cannot_decode_it(tmp_path, capsys):
    fake = tmp_path / "photo.jpg"
    fake.write_text("not an image")
    assert cli.main(["predict", str(fake), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot decode {fake} as an image" in err and "pip install" not in err


def test_early_stopping_and_plateau_fields_are_checked_and_older_stored_configs_still_resume(tmp_path):
    config = configs.load_config(TINY)
    bad = ml_collections.ConfigDict(config.to_dict())
    bad.optimizer.schedule = "plateau"
    bad.optimizer.plateau_factor = 1.0
    bad.optimizer.plateau_patience = 0
    bad.train.early_stopping_patience = -1
    with pytest.raises(ValueError) as err:
        validation.validate(bad)
    for part in ("optimizer.plateau_factor must be < 1, got 1.0", "optimizer.plateau_patience must be >= 1, got 0",
                 "train.early_stopping_patience must be >= 0, got -1"):
        assert part in str(err.value)
    # A config stored before these fields existed resumes under their defaults ...
    stored = config.to_dict()
    del stored["train"]["early_stopping_patience"], stored["optimizer"]["plateau_factor"], stored["optimizer"]["plateau_patience"]
    validation.check_resume(stored, config, tmp_path)
    # ... and may lengthen or shorten its patience (like num_steps), but not change the plateau rule.
    longer = ml_collections.ConfigDict(config.to_dict())
    longer.train.early_stopping_patience = 4
    validation.check_resume(stored, longer, tmp_path)
    other = ml_collections.ConfigDict(config.to_dict())
    other.optimizer.plateau_factor = 0.5
    # (the stored config is read with the field's default filled in, validation.upgrade_stored_config)
    with pytest.raises(ValueError, match=r"optimizer.plateau_factor \(0.1 -> 0.5\)"):
        validation.check_resume(stored, other, tmp_path)


def test_the_reconstruction_form_is_checked_and_older_runs_read_as_the_reference_form(tmp_path):
    config = configs.load_config(TINY)
    bad = ml_collections.ConfigDict(config.to_dict())
    bad.loss.reconstruction_form = "l2"
    with pytest.raises(ValueError, match=r"loss.reconstruction_form"):
        validation.validate(bad)
    # A run stored before the field existed trained with the reference's tanh form: it resumes
    # under "tanh" and refuses "linear".
    stored = config.to_dict()
    del stored["loss"]["reconstruction_form"]
    validation.check_resume(stored, config, tmp_path)
    linear = ml_collections.ConfigDict(config.to_dict())
    linear.loss.reconstruction_form = "linear"
    with pytest.raises(ValueError, match=r"loss.reconstruction_form \('tanh' -> 'linear'\)"):
        validation.check_resume(stored, linear, tmp_path)


@pytest.mark.parametrize("field, newer", [("model.reconstruction_relu", False), ("data.face_scene_prob", 0.5)])
def test_runs_stored_before_a_field_existed_resume_only_under_its_old_behaviour(tmp_path, field, newer):
    """Fields added on 2026-12-04: an older config.json reads as the reference's ReLU and no face scenes."""
    config = configs.load_config(TINY)
    section, name = field.split(".")
    stored = config.to_dict()
    del stored[section][name]
    validation.check_resume(stored, config, tmp_path)
    changed = ml_collections.ConfigDict(config.to_dict())
    changed[section][name] = newer
    with pytest.raises(ValueError, match=rf"{field} \("):
        validation.check_resume(stored, changed, tmp_path)


def test_the_dgmm_mean_rule_is_checked_on_resume_only_where_a_dgmm_term_exists(tmp_path):
    """loss.class_mean_includes_self (2026-12-04): a GMM run stored before it trained with the
    reference's means, so it resumes only with them; in a run without a DGMM term the option does
    nothing, so such a run resumes under today's default."""
    gmm = configs.load_config("ferattentiongmm:tiny")
    stored = gmm.to_dict()
    del stored["loss"]["class_mean_includes_self"]
    with pytest.raises(ValueError, match=r"loss.class_mean_includes_self \(True -> False\)"):
        validation.check_resume(stored, gmm, tmp_path)
    reference_means = ml_collections.ConfigDict(gmm.to_dict())
    reference_means.loss.class_mean_includes_self = True
    validation.check_resume(stored, reference_means, tmp_path)
    for name in ("ferattention:tiny", "preactresnet18:tiny"):
        config = configs.load_config(name)
        stored = config.to_dict()
        del stored["loss"]["class_mean_includes_self"]
        validation.check_resume(stored, config, tmp_path)
        # ... and the DGMM's other options do not matter there either.
        other_sigma = ml_collections.ConfigDict(config.to_dict())
        other_sigma.loss.sigma = 2.0
        validation.check_resume(stored, other_sigma, tmp_path)
