"""Import a script of experiments/ (not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import pathlib
import types

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def load(name: str) -> types.ModuleType:
    """``experiments/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
