"""Import a script of experiments/ (not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def load(name: str) -> types.ModuleType:
    """``experiments/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered as the import system does: dataclasses (flax modules) defined in a
    # script look their module up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
