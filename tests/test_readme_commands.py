"""The README's first two commands stay true: CI runs the second, the first names a real config."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    main_job, tests = _indented_commands((ROOT / "README.md").read_text())[:2]
    assert "pytest" in tests and "feratt train" in main_job, "README must open with the main-job command, then the test command"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines, ".ci/run must call the README's test command verbatim (keep the two in sync)"


def test_main_job_command_is_self_contained_and_names_an_existing_config():
    main_job = _indented_commands((ROOT / "README.md").read_text())[0]
    assert main_job.startswith("python3.11 -m venv .venv && "), "the main-job command must set up its own venv"
    config = re.search(r"--config (\S+?)(?::\w+)?\s", main_job + " ").group(1)
    assert (ROOT / config).is_file(), f"the README's main job names {config}, which does not exist"
