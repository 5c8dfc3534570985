"""Test-only entry point: ``feratt ARGS`` that stops at one chosen moment, so a test can kill it there.

``FERATT_TEST_PAUSE=PHASE@STEP`` makes the child print ``PAUSED PHASE@STEP``
on stdout and block until a line arrives on its stdin (a SIGKILL test never
sends one). Phases:

  step        after train step STEP is logged: between saves
  save        inside orbax's asynchronous commit of ``checkpoints/STEP``,
              after its files are written and before the rename that
              commits it (the finalize thread blocks; training goes on)
  eval        at the validation pass after step STEP
  precise_bn  at the BatchNorm re-estimation after step STEP

Before pausing at any phase but ``save``, the child waits for its checkpoint
saves in flight to commit, so the kill finds the same checkpoints every time.
The hooks wrap library functions from here, so the library carries no test
code. Run as ``python tests/pause_points.py train --config ... --workdir ...``.
"""

from __future__ import annotations

import os
import sys


def _install(phase: str, at_step: int) -> None:
    import orbax.checkpoint as ocp

    from feratt_jax import precise_bn
    from feratt_jax import train as train_lib
    from feratt_jax.checkpointing import Checkpointer
    from feratt_jax.metric_writer import MetricWriter

    current = {"step": 0, "paused": False, "checkpointers": []}

    def pause() -> None:
        if current["paused"]:
            return
        current["paused"] = True
        if phase != "save":
            # Let saves in flight commit first, so the moment is the same in every run.
            for checkpointer in current["checkpointers"]:
                checkpointer.wait()
        print(f"PAUSED {phase}@{at_step}", flush=True)
        sys.stdin.readline()

    init = Checkpointer.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        current["checkpointers"].append(self)

    Checkpointer.__init__ = recording_init

    scalars = MetricWriter.scalars

    def logged(self, step, values, *, prefix=""):
        scalars(self, step, values, prefix=prefix)
        if prefix == "train/":
            current["step"] = int(step)
            if phase == "step" and step == at_step:
                pause()

    MetricWriter.scalars = logged

    def pausing_at(name, fn):
        def wrapper(*args, **kwargs):
            if phase == name and current["step"] == at_step:
                pause()
            return fn(*args, **kwargs)

        return wrapper

    train_lib.evaluate_split = pausing_at("eval", train_lib.evaluate_split)
    precise_bn.average_batch_stats = pausing_at("precise_bn", precise_bn.average_batch_stats)

    temporary_path = ocp.path.atomicity.AtomicRenameTemporaryPath
    finalize = temporary_path.finalize

    async def finalize_pausing(self):
        final = self.get_final()
        if phase == "save" and final.parent.name == "checkpoints" and final.name == str(at_step):
            pause()
        return await finalize(self)

    temporary_path.finalize = finalize_pausing


def main() -> int:
    spec = os.environ.get("FERATT_TEST_PAUSE", "")
    if spec:
        phase, _, step = spec.partition("@")
        if phase not in ("step", "save", "eval", "precise_bn") or not step.isdigit():
            raise SystemExit(f"FERATT_TEST_PAUSE={spec!r}: expected PHASE@STEP with PHASE step|save|eval|precise_bn")
        _install(phase, int(step))
    from feratt_jax.cli import main as feratt_main

    return feratt_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
