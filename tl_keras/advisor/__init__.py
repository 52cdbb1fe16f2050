"""The advisor: measure the data with the base, then decide among
scratch, transfer and finetune (and rank candidate backbones)."""

from tl_keras.advisor.advise import advise, advise_run, write_record
from tl_keras.advisor.decision import Thresholds, decide
from tl_keras.advisor.measurement import measure
from tl_keras.advisor.rank import rank
from tl_keras.advisor.report import summary_lines
from tl_keras.advisor.scores import knn_accuracy, linear_probe, logme
from tl_keras.advisor.scratch_run import scratch_epochs, scratch_run
from tl_keras.advisor.statistics import (
    accuracy_variance,
    gain,
    gain_se,
    scratch_matches,
    scratch_projection,
    scratch_tie,
)

__all__ = [
    "Thresholds",
    "accuracy_variance",
    "advise",
    "advise_run",
    "decide",
    "gain",
    "gain_se",
    "knn_accuracy",
    "linear_probe",
    "logme",
    "measure",
    "rank",
    "scratch_epochs",
    "scratch_matches",
    "scratch_projection",
    "scratch_run",
    "scratch_tie",
    "summary_lines",
    "write_record",
]
