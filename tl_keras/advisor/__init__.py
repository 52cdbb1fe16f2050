"""The advisor: measure the data with the base, estimate what scratch,
transfer and finetune (from each candidate layer) reach, pick the best
(and rank candidate backbones)."""

from tl_keras.advisor.advise import advise, advise_run, write_record
from tl_keras.advisor.decision import decide, layer_estimates, scratch_estimate
from tl_keras.advisor.measurement import candidate_blocks, check_sample, measure
from tl_keras.advisor.rank import rank
from tl_keras.advisor.report import summary_lines
from tl_keras.advisor.scores import knn_accuracy, linear_probe, logme
from tl_keras.advisor.scratch_run import scratch_epochs, scratch_run
from tl_keras.advisor.statistics import (
    accuracy_variance,
    difference_se,
    projection_se,
    scratch_projection,
    standard_error,
)

__all__ = [
    "accuracy_variance",
    "advise",
    "advise_run",
    "candidate_blocks",
    "check_sample",
    "decide",
    "difference_se",
    "knn_accuracy",
    "layer_estimates",
    "linear_probe",
    "logme",
    "measure",
    "projection_se",
    "rank",
    "scratch_epochs",
    "scratch_estimate",
    "scratch_projection",
    "scratch_run",
    "standard_error",
    "summary_lines",
    "write_record",
]
