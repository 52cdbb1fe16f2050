"""Runs the tl_keras command line, killing itself with SIGKILL at one chosen
point: a real, abrupt death (no exception handler, no `finally`, no flush)
where the point is known, so tests/test_faults.py is deterministic.

Used as `python tests/fault_task.py FLAGS...` with TL_KERAS_TEST_FAULT set
to one of:

  write:<part of a path>:before|after   at the first file (or folder)
      whose path contains the part, just before tl_keras renames the
      finished temporary file onto it (`io.commit`: written and fsynced,
      not in place) or just after the rename; folders are swapped into
      place by `io.replace_dir` (the export), which counts as a write too
  batch:<stage>:<epoch>:<batch>   after that (1-based) training batch of
      that epoch of that stage, mid-epoch

Without the variable it is the plain command line.
"""

import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_write(part, when):
    from tl_keras import io

    def wrap(original):
        def write(src, dst, *args, **kwargs):
            hit = part in dst
            if hit and when == "before":
                die()
            result = original(src, dst, *args, **kwargs)
            if hit and when == "after":
                die()
            return result
        return write

    # io.write_text calls io.commit through the module's globals, so the
    # patched names are the ones every writer in tl_keras goes through.
    io.commit = wrap(io.commit)
    io.replace_dir = wrap(io.replace_dir)


def kill_at_batch(stage, epoch, batch):
    from tl_keras.training.checkpoints import StageCheckpoint

    original = StageCheckpoint.on_train_batch_end

    def on_train_batch_end(self, index, logs=None):
        original(self, index, logs)
        if (self.stage_name == stage and self.current_epoch + 1 == int(epoch)
                and index + 1 == int(batch)):
            die()

    StageCheckpoint.on_train_batch_end = on_train_batch_end


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    fault = os.environ.get("TL_KERAS_TEST_FAULT", "")
    kind, _, spec = fault.partition(":")
    if kind == "write":
        kill_at_write(*spec.rsplit(":", 1))
    elif kind == "batch":
        kill_at_batch(*spec.split(":"))
    elif fault:
        sys.exit(f"fault_task.py: unknown TL_KERAS_TEST_FAULT {fault!r}")
    sys.argv[0] = os.path.join(REPO, "run.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
