"""Installs without a clone: named configs inside the package, accelerator extras, the tested version set."""

import pathlib
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

from feratt_jax import configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT_CONFIGS = sorted((ROOT / "experiments" / "configs").glob("*.py"))


def test_every_experiment_config_file_is_a_packaged_name_giving_the_same_config():
    assert sorted(f.stem for f in EXPERIMENT_CONFIGS) == sorted(configs.NAMED_CONFIGS)
    for path in EXPERIMENT_CONFIGS:
        args = ["", ":quick", ":tiny"]
        if path.stem.startswith(tuple(configs.PAPER_DATASETS)):
            args.append(":ferattentiongmm,quick")
        for arg in args:
            from_file = configs.load_config(f"{path}{arg}").to_dict()
            assert from_file == configs.load_config(f"{path.stem}{arg}").to_dict(), f"{path.name}{arg} differs from {path.stem}{arg}"


def test_named_config_reads_model_then_size_and_overrides():
    c = configs.load_config("ferattentiongmm:quick", ["--config.train.num_steps=7"])
    assert (c.model.name, c.model.backbone_width, c.train.num_steps) == ("ferattentiongmm", 16, 7)
    assert configs.load_config("preactresnet18").model.input_size == 32


def test_unknown_config_name_is_one_clear_line():
    with pytest.raises(ValueError, match=r"unknown config name 'feratention' \(did you mean 'ferattention'\?\)"):
        configs.load_config("feratention:quick")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        configs.load_config("experiments/configs/nope.py")


def test_built_wheel_loads_named_configs_outside_the_repo(tmp_path):
    # Build from a copy so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "feratt_jax"), str(src)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(tmp_path / "dist")],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("feratt_jax-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "feratt_jax/configs.py" in names and not any(n.startswith("experiments/") for n in names)
        zf.extractall(tmp_path / "site")  # a pure-Python wheel: unpacking it is installing it
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    code = (
        "import feratt_jax, sys; from feratt_jax import configs; "
        "c = configs.load_config('ferattention:quick'); "
        "print(feratt_jax.__file__); print(c.model.name, c.train.num_steps); "
        "print(any('experiments' in p for p in sys.path))"
    )
    # -P: the cwd is not put on sys.path; PYTHONPATH holds only the unpacked wheel.
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=run_dir, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    module_file, config_line, experiments_on_path = proc.stdout.split("\n")[:3]
    assert pathlib.Path(module_file).is_relative_to(tmp_path / "site"), module_file
    assert config_line == f"ferattention {configs.load_config('ferattention:quick').train.num_steps}"
    assert experiments_on_path == "False"


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_accelerator_extras_pull_jax_own_extras():
    extras = _pyproject()["optional-dependencies"]
    assert [r.split(">=")[0] for r in extras["cuda12"]] == ["jax[cuda12]"]
    assert [r.split(">=")[0] for r in extras["tpu"]] == ["jax[tpu]"]


def test_constraints_pin_every_dependency_ci_installs():
    project = _pyproject()
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["torch"]}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^;]*(; python_version == \"3\.\d+\")?", line), f"constraints.txt: {line!r} is not NAME==VERSION[; marker]"
            pins[_name(line)] = line
    missing = wanted - set(pins)
    assert not missing, f"constraints.txt pins no version for {sorted(missing)}"
    # The README's accelerator lines and the GPU check script install through the extra and the pins.
    readme = (ROOT / "README.md").read_text()
    for extra in ("cuda12", "tpu"):
        assert re.search(rf'pip install [^\n]*"\.\[{extra}\]" -c constraints\.txt', readme), f"README has no [{extra}] install line"
    assert '".[cuda12]" -c constraints.txt' in (ROOT / "experiments" / "gpu_check.sh").read_text()
