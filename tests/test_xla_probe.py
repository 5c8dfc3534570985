"""The XLA-flag probe runs one child process per jaxlib version, not one per command."""

import json
import subprocess

import pytest

from feratt_jax import xla_cpu

(FLAG,) = xla_cpu.FAST_CPU_FLAGS


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """An unverified jaxlib version, a private cache dir, and a count of the children started."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: "9.9.9")
    children = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        children.append(kwargs.get("env", {}).get("XLA_FLAGS"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(xla_cpu.subprocess, "run", counting_run)
    xla_cpu.flag_is_accepted.cache_clear()
    yield children
    xla_cpu.flag_is_accepted.cache_clear()


def _new_process():
    xla_cpu.flag_is_accepted.cache_clear()  # what a new `feratt` command starts with


def _fake_children(monkeypatch, children):
    """A child that accepts any flag at once (for the cache logic; the real child is tested above)."""

    def accepts(*args, **kwargs):
        children.append(kwargs["env"]["XLA_FLAGS"])
        return subprocess.CompletedProcess(args, 0, b"", b"")

    monkeypatch.setattr(xla_cpu.subprocess, "run", accepts)


def test_verdicts_are_cached_per_jaxlib_version(probe, tmp_path, monkeypatch):
    unknown = "--xla_feratt_no_such_flag=1"
    assert xla_cpu.flag_is_accepted(FLAG) is True  # the installed jaxlib knows it
    assert xla_cpu.flag_is_accepted(unknown) is False  # XLA refuses it by name
    assert probe == [FLAG, unknown]
    path = tmp_path / "cache" / "feratt_jax" / "xla_flags.json"
    assert xla_cpu.probe_cache_file() == path
    assert json.loads(path.read_text()) == {"jaxlib 9.9.9": {FLAG: True, unknown: False}}
    _new_process()
    assert xla_cpu.flag_is_accepted(FLAG) is True and xla_cpu.flag_is_accepted(unknown) is False
    assert len(probe) == 2, "a cached verdict started a child process"
    monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: "9.9.10")  # another install: probe again
    _fake_children(monkeypatch, probe)
    _new_process()
    assert xla_cpu.flag_is_accepted(FLAG) is True and len(probe) == 3


def test_unwritable_or_garbled_cache_only_costs_a_probe(probe, tmp_path, monkeypatch):
    _fake_children(monkeypatch, probe)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir under a file fails
    assert xla_cpu.flag_is_accepted(FLAG) is True
    _new_process()
    assert xla_cpu.flag_is_accepted(FLAG) is True and len(probe) == 2
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "garbled"))
    xla_cpu.probe_cache_file().parent.mkdir(parents=True)
    xla_cpu.probe_cache_file().write_text("{not json")
    _new_process()
    assert xla_cpu.flag_is_accepted(FLAG) is True and len(probe) == 3
    assert json.loads(xla_cpu.probe_cache_file().read_text()) == {"jaxlib 9.9.9": {FLAG: True}}


def test_a_failed_child_is_not_a_verdict(probe, monkeypatch):
    def broken(*args, **kwargs):
        probe.append("broken")
        return subprocess.CompletedProcess(args, 1, b"", b"ImportError: no jax here")

    monkeypatch.setattr(xla_cpu.subprocess, "run", broken)
    assert xla_cpu.flag_is_accepted(FLAG) is False  # not added this time...
    assert not xla_cpu.probe_cache_file().exists()  # ...but not remembered as rejected
