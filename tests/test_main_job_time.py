"""experiments/main_job_time.py: the README's main job and the yardstick arithmetic (the runs themselves are not run here)."""

from __future__ import annotations

import json
import pathlib

import pytest

import experiment_scripts

REPO = pathlib.Path(__file__).resolve().parents[1]


def _module():
    return experiment_scripts.load("main_job_time")


def test_times_the_readme_main_job_command():
    mjt = _module()
    first_commands = [line for line in (REPO / "README.md").read_text().splitlines()[:12] if "feratt train" in line]
    assert first_commands, "README's first lines lost the main-job command"
    assert "feratt " + " ".join(mjt.MAIN_JOB) + " --workdir runs/ferattention_quick" in first_commands[0], (
        "the README's main job changed: update MAIN_JOB in experiments/main_job_time.py"
    )


def test_yardstick_is_the_torch_eager_step_of_a_bench_report():
    mjt = _module()
    # The committed bench report of the 2026-12-03 main-job measurement: 3.98 s (a slow day).
    report = json.loads((REPO / "experiments" / "results" / "main_job" / "yardstick_bench.json").read_text())
    assert mjt.yardstick_seconds(report) == pytest.approx(3.9832274860018515)
    with pytest.raises(ValueError, match="no PyTorch eager FERAtt record"):
        mjt.yardstick_seconds({"results": [r for r in report["results"] if r["framework"] == "jax"]})


def test_scaling_to_a_normal_day():
    mjt = _module()
    # 12 minutes beside a 4.0 s yardstick is 6 minutes at 2.0 s.
    assert mjt.at_normal_day(720.0, 4.0) == pytest.approx(6.0)
    runs = [{"wall_s": 600.0, "test_accuracy": 0.6}, {"wall_s": 720.0, "test_accuracy": 0.8}, {"wall_s": 660.0, "test_accuracy": 0.7}]
    s = mjt.summarise(runs, 4.4)
    assert (s["test_accuracy_median"], s["test_accuracy_min"], s["test_accuracy_max"]) == (0.7, 0.6, 0.8)
    assert s["wall_minutes_median"] == pytest.approx(11.0) and s["minutes_at_2s_yardstick"] == pytest.approx(5.0)


def test_refuses_a_non_json_out_before_running_anything(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _module().main(["--out", str(tmp_path / "timing.txt")])
    assert "expected a .json path" in capsys.readouterr().err


def test_refuses_an_existing_workdir_of_any_seed_before_running_anything(tmp_path, capsys, monkeypatch):
    mjt = _module()
    (tmp_path / "main_job_seed2").mkdir()
    ran = []
    monkeypatch.setattr(mjt.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(SystemExit):
        mjt.main(["--seeds", "0", "2", "--workdir", str(tmp_path), "--out", str(tmp_path / "t.json")])
    assert "main_job_seed2: exists" in capsys.readouterr().err and ran == []


@pytest.mark.parametrize("bad, message", [("model.reconstruction_reluu=False", "reconstruction_reluu"), ("loss.reconstruction_form", "--config.key=value")])
def test_refuses_a_bad_override_before_running_anything(tmp_path, capsys, monkeypatch, bad, message):
    mjt = _module()
    ran = []
    monkeypatch.setattr(mjt.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(SystemExit):
        mjt.main(["--set", bad, "--out", str(tmp_path / "t.json")])
    assert message in capsys.readouterr().err and ran == []


def _fake_runs(mjt, monkeypatch, calls):
    """Replace the child processes: a train run writes a metrics.json, the bench a yardstick report."""

    def run(cmd, cwd=None, check=False, env=None):
        calls.append((cmd, env))
        if "train" in cmd:
            workdir = pathlib.Path(cmd[cmd.index("--workdir") + 1])
            (workdir / "eval").mkdir(parents=True)
            metrics = {"test": {"accuracy": 0.5}, "best_val_accuracy": 0.5, "data_seconds": {"bank": 18.0}}
            (workdir / "eval" / "metrics.json").write_text(json.dumps(metrics))
        else:
            bench = {"meta": {}, "results": [{"framework": "torch", "mode": "eager", "model": "ferattention", "train": {"median_s": 2.0}}]}
            pathlib.Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(bench))

    monkeypatch.setattr(mjt.subprocess, "run", run)


@pytest.mark.parametrize("warm", [False, True])
def test_each_run_draws_its_face_bank_as_a_fresh_machine_does(tmp_path, monkeypatch, warm):
    mjt = _module()
    monkeypatch.setenv("FERATT_CACHE_DIR", str(tmp_path / "users_cache"))
    calls = []
    _fake_runs(mjt, monkeypatch, calls)
    out = tmp_path / "t.json"
    mjt.main(["--seeds", "0", "1", "--workdir", str(tmp_path / "w"), "--out", str(out), *(["--warm-cache"] if warm else [])])
    train_caches = [env["FERATT_CACHE_DIR"] for cmd, env in calls if "train" in cmd]
    if warm:
        assert train_caches == [str(tmp_path / "users_cache")] * 2
    else:  # one new folder per run, none of them the user's
        assert len(set(train_caches)) == 2 and str(tmp_path / "users_cache") not in train_caches
    result = json.loads(out.read_text())
    assert result["face_bank"].startswith("the user's cache" if warm else "drawn by each run")
    assert result["runs"][0]["data_seconds"] == {"bank": 18.0}
