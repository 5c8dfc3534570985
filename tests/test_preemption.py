"""SIGKILL at chosen moments, resume with the same command, land bit for bit on the uninterrupted run.

Every run here is a child process on one CPU device (``tests/child_runs.py``)
started through ``tests/pause_points.py``, which stops it at a named moment
so the kill lands there deterministically. One uninterrupted run of the same
command is trained once per session and shared by every scenario.

The run: PreActResNet18 at width 8 on the tiny data, 8 steps, checkpoints at
3 and 6 (and 8), validation with precise BN at 4 and 8. A kill before step 8
resumes from checkpoint 3 or 6, so every scenario depends on what a periodic
(not final) checkpoint recorded.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from child_runs import run_on_one_cpu_device, shared_basetemp, start_on_one_cpu_device, trained_once

NUM_STEPS = 8


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(child environment, face-bank cache dir) shared by this session's children."""
    root = shared_basetemp(tmp_path_factory)
    env = {
        # Children compile the same programs; a shared persistent cache turns repeats into loads.
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache_one_cpu_device"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    return env, str(root / "facebank_cache")


def config_args(cache_dir: str) -> list[str]:
    return [
        "--config", "experiments/configs/preactresnet18.py:tiny",
        "--config.model.baseline_width=8",
        f"--config.train.num_steps={NUM_STEPS}",
        "--config.train.checkpoint_every=3",
        "--config.train.eval_every=4",
        "--config.train.precise_bn_batches=1",
        f"--config.data.cache_dir={cache_dir}",
    ]  # fmt: skip


def train_command(workdir: pathlib.Path, cache_dir: str) -> list[str]:
    return ["train", "--workdir", str(workdir), *config_args(cache_dir)]


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """The uninterrupted run (trained once per session, this module's own copy)."""
    env, cache_dir = shared
    return trained_once(tmp_path_factory, "preemption_reference", config_args(cache_dir), tmp_path_factory.mktemp("reference") / "run", env=env)


def kill_at(pause: str, workdir: pathlib.Path, shared, timeout: float = 180) -> str:
    """Run the training command until it reports ``PAUSED pause``, then SIGKILL it; returns its output."""
    env, cache_dir = shared
    proc = start_on_one_cpu_device(["tests/pause_points.py", *train_command(workdir, cache_dir)], env={**env, "FERATT_TEST_PAUSE": pause})
    lines: queue.Queue[str | None] = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"the run exited ({proc.wait()}) before pausing at {pause}:\n{''.join(seen)[-3000:]}")
            seen.append(line)
            if line.rstrip().endswith(f"PAUSED {pause}"):  # tqdm's progress line may precede it
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return "".join(seen)


def restore_numpy(step_dir: pathlib.Path) -> tuple[dict, dict]:
    """(train state as numpy, data position) of one checkpoint, read without building the model."""
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(step_dir / "state").item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args))
    data = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "data")
    return state, data


def assert_same_run(resumed: pathlib.Path, reference: pathlib.Path) -> None:
    """Final checkpoint (every leaf of params, BN statistics, optimizer state), data position, best step and eval identical."""
    state_a, data_a = restore_numpy(reference / "checkpoints" / str(NUM_STEPS))
    state_b, data_b = restore_numpy(resumed / "checkpoints" / str(NUM_STEPS))
    flat_a = jax.tree_util.tree_flatten_with_path(state_a)[0]
    flat_b = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(state_b)[0])
    assert len(flat_a) == len(flat_b)
    differ = [jax.tree_util.keystr(p) for p, a in flat_a if not np.array_equal(a, flat_b[jax.tree_util.keystr(p)])]
    assert not differ, f"{len(differ)} of {len(flat_a)} leaves differ from the uninterrupted run, e.g. {differ[:3]}"
    assert data_a == data_b == {"next_index": NUM_STEPS}
    assert sorted(os.listdir(reference / "best")) == sorted(os.listdir(resumed / "best"))
    summary_a = json.loads((reference / "eval" / "metrics.json").read_text())
    summary_b = json.loads((resumed / "eval" / "metrics.json").read_text())
    for key in ("step", "best_val_accuracy", "val", "test"):
        assert summary_a[key] == summary_b[key], key


def tmp_checkpoints(workdir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name)


# (pause point, the checkpoint the resumed run starts from)
SCENARIOS = {
    "between saves": ("step@5", 3),
    "during an async save": ("save@6", 3),
    "during evaluation": ("eval@4", 3),
    "during precise-BN re-estimation": ("precise_bn@8", 6),
}


@pytest.mark.parametrize("moment", list(SCENARIOS))
def test_sigkill_then_resume_matches_the_uninterrupted_run(moment, reference, shared, tmp_path):
    pause, resumes_from = SCENARIOS[moment]
    workdir = tmp_path / "run"
    kill_at(pause, workdir, shared)
    assert not (workdir / "eval" / "metrics.json").exists()
    half_written = tmp_checkpoints(workdir)
    if pause.startswith("save@"):
        # The kill left the uncommitted checkpoint behind; the resume must clean it up.
        assert half_written and half_written[0].startswith(pause.removeprefix("save@") + "."), half_written

    env, cache_dir = shared
    out = run_on_one_cpu_device(["-m", "feratt_jax.cli", *train_command(workdir, cache_dir)], env=env)
    assert f"at step {resumes_from}" in out, out[-2000:]
    assert tmp_checkpoints(workdir) == []
    assert_same_run(workdir, reference)


def test_eval_reads_a_workdir_while_a_trainer_holds_it(reference):
    """The lock keeps out a second trainer only: evaluation reads the held workdir and matches the run's own summary."""
    from feratt_jax.evaluate import evaluate_run
    from feratt_jax.workdir_lock import exclusive_writer

    summary = json.loads((reference / "eval" / "metrics.json").read_text())  # evaluate_run rewrites it
    with exclusive_writer(reference):
        report = evaluate_run(reference, split="test")
    assert report["accuracy"] == summary["test"]["accuracy"]
    assert report["confusion_matrix"] == summary["test"]["confusion_matrix"]
