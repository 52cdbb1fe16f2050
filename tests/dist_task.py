"""Runs the tl_keras command line as one task of a distribution test.

Used by tests/test_distribute.py as `python tests/dist_task.py FLAGS...`,
with TF_CONFIG set by the test. Setting TL_KERAS_TEST_KILL=<stage>:<epoch>
makes this process SIGKILL itself right after EpochBackup saved that
(1-based) epoch of that stage: a real, abrupt worker death at a known
point, so the restart test is deterministic. Setting
TL_KERAS_TEST_DECISION=<approach> makes this process's own advisor (if it
is ever asked) decide that approach without measuring: a worker that would
decide differently from the chief.
"""

import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install_kill_hook(spec):
    sys.path.insert(0, REPO)
    from tl_keras.training.backups import EpochBackup

    stage, epoch = spec.split(":")
    original = EpochBackup.on_epoch_end

    def on_epoch_end(self, index, logs=None):
        original(self, index, logs)
        in_stage = f"{os.sep}{stage}{os.sep}" in self.backup_dir + os.sep
        if in_stage and index + 1 == int(epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    EpochBackup.on_epoch_end = on_epoch_end


def install_decision_hook(approach):
    from tl_keras.advisor import advise  # where decide_once looks it up

    def advise_run(model, data, config, blocks):
        return {"approach": approach, "unfreeze": "all", "feature_block": "",
                "situation": "test",
                "rule": "test hook", "reason": "TL_KERAS_TEST_DECISION"}

    advise.advise_run = advise_run


if __name__ == "__main__":
    if os.environ.get("TL_KERAS_TEST_KILL"):
        install_kill_hook(os.environ["TL_KERAS_TEST_KILL"])
    if os.environ.get("TL_KERAS_TEST_DECISION"):
        install_decision_hook(os.environ["TL_KERAS_TEST_DECISION"])
    sys.argv[0] = os.path.join(REPO, "run.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
