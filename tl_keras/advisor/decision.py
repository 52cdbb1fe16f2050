"""The decision: measurements -> one of four situations -> an approach.

The situations are the transfer-learning rule of thumb (small / large
data x similar / different domain); the rules that place the data in one,
and the scratch rules that override it, are written out in `decide` and
in docs/advisor.md. Each threshold is a flag (`--advisor_*`).
"""

import dataclasses
import math

from tl_keras.advisor.statistics import (
    gain,
    gain_se,
    scratch_projection,
    scratch_tie,
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Decision thresholds (flags --advisor_*; defaults documented there)."""

    large_per_class: int = 100
    similar_gain: float = 0.5
    scratch_gain: float = 0.1
    scratch_per_class: int = 1000
    earlier_margin: float = 0.05
    reference_margin: float = 0.1
    tie_se: float = 1.0
    random_gain: float = 0.75
    scratch_horizon: float = 0.5

    @classmethod
    def from_config(cls, advisor):
        """From the config's `AdvisorConfig` (or a whole `Config`)."""
        advisor = getattr(advisor, "advisor", advisor)
        return cls(**{f.name: getattr(advisor, f"advisor_{f.name}")
                      for f in dataclasses.fields(cls)})


def decide(m, thresholds, num_blocks):
    """Maps measurements to the seed's four situations and an approach.

    Rules (thresholds from `Thresholds`):
      size: large when the median images per class >= large_per_class.
      knowledge: the frozen features' quality is the linear probe's gain
        over chance (kNN's when no probe). When it beats the gain of the
        same architecture with random weights by less than
        reference_margin, the pretraining brings nothing to this data ->
        scratch, whatever the size.
      random features: when the same architecture with random weights
        already gains at least random_gain (1: never), the task is easy
        for the architecture itself -> scratch, whatever the size.
      scratch run: when a short from-scratch run (measurements'
        'scratch') reaches the probe's validation accuracy, less
        tie_se standard errors of the difference of the two (both
        measured on the measurements' num_val validation images; a
        smaller gap is a tie, and the run is a lower bound of scratch with
        the full budget), or is headed there (`scratch_projection`,
        scratch_horizon run lengths ahead), scratch catches up -> scratch,
        whatever the size.
      similarity: similar when the quality is >= similar_gain, less
        tie_se standard errors of the quality (`gain_se`: a gain that
        close to the threshold is a tie, and on small data the tie goes to
        finetune, whose stage is kept only when it beats the head on the
        validation set). An earlier
        layer scoring better by > earlier_margin marks the data as far
        from the pretraining domain (different).
      small + similar -> finetune every block, after the head (the
        fine-tune stage keeps its result only if it beats the head on the
        validation set); small + different -> transfer;
      large + similar -> finetune the top third of the blocks;
      large + different -> finetune all blocks, or scratch when the
        features are near chance (gain < scratch_gain) and there are at
        least scratch_per_class images per class.
      No usable score: the size rule alone (small -> transfer, large ->
        finetune all).

    Returns:
      {'situation', 'approach', 'unfreeze', 'rule', 'reason'}.
    """
    s = _signals(m, thresholds)
    if s.quality_key is None:
        approach = "finetune" if s.large else "transfer"
        return {"situation": f"{s.size}, similarity unknown",
                "approach": approach, "unfreeze": "all", "rule": "size only",
                "reason": f"No transferability score could be computed "
                          f"({'; '.join(m['problems'])}), so only the data "
                          f"size decides: {s.size_text} -> {approach}."}
    approach, unfreeze, rule, why = _rule(s, thresholds, num_blocks)
    situation = (f"{s.size} data, "
                 f"{'similar' if s.similar else 'different'} domain")
    return {"situation": situation, "approach": approach,
            "unfreeze": unfreeze, "rule": rule,
            "reason": f"{s.size_text}; {_evidence(s, thresholds)}. "
                      f"Situation: {situation} -> {approach}: {why}."}


@dataclasses.dataclass
class _Signals:
    """What `decide` reads off the measurements (see its docstring)."""

    median: float
    large: bool
    size: str
    size_text: str
    chance: float
    quality_key: str | None
    probe: float = 0.0  # the last layer's score under quality_key
    quality: float = 0.0
    earlier_quality: float | None = None
    reference_quality: float | None = None
    far: bool = False
    nothing: bool = False
    n_quality: int = 0
    similar_tie: float = 0.0
    similar: bool = False
    easy: bool = False
    scratch: dict = dataclasses.field(default_factory=dict)
    ran: bool = False
    num_val: int = 0
    tie: float = 0.0
    projected: float = 0.0
    catches_up: bool = False


def _signals(m, thresholds):
    median = m["images_per_class"]["median"]
    large = median >= thresholds.large_per_class
    last, earlier = m.get("last", {}), m.get("earlier") or {}
    reference = m.get("reference") or {}
    key = ("probe_accuracy" if "probe_accuracy" in last
           else "knn_accuracy" if "knn_accuracy" in last else None)
    s = _Signals(median=median, large=large,
                 size="large" if large else "small",
                 size_text=(f"{median:g} images per class (median; large "
                            f"from {thresholds.large_per_class})"),
                 chance=m["chance"], quality_key=key)
    if key is None:
        return s
    s.probe = last[key]
    s.quality = gain(s.probe, s.chance)
    s.earlier_quality = (gain(earlier[key], s.chance)
                         if key in earlier else None)
    s.reference_quality = (gain(reference[key], s.chance)
                           if key in reference else None)
    s.far = (s.earlier_quality is not None and
             s.earlier_quality > s.quality + thresholds.earlier_margin)
    s.nothing = (s.reference_quality is not None and s.quality
                 < s.reference_quality + thresholds.reference_margin)
    s.n_quality = (m.get("num_val", 0) if key == "probe_accuracy"
                   else m.get("sample", 0))
    s.similar_tie = thresholds.tie_se * gain_se(s.probe, s.chance,
                                                s.n_quality)
    s.similar = (s.quality >= thresholds.similar_gain - s.similar_tie
                 and not s.far and not s.nothing)
    s.easy = (not s.nothing and s.reference_quality is not None
              and thresholds.random_gain < 1  # 1: off
              and s.reference_quality >= thresholds.random_gain)
    _scratch_signals(s, m, thresholds)
    return s


def _scratch_signals(s, m, thresholds):
    """The short scratch run's part of the signals (if it ran)."""
    s.scratch = m.get("scratch") or {}
    s.ran = "val_accuracy" in s.scratch
    s.num_val = m.get("num_val", 0)
    if not s.ran:
        return
    s.tie = scratch_tie(s.scratch["val_accuracy"], s.probe, s.num_val,
                        thresholds.tie_se)
    s.projected = scratch_projection(
        s.scratch.get("val_accuracy_curve") or [s.scratch["val_accuracy"]],
        s.num_val, thresholds.scratch_horizon)
    s.catches_up = (not s.nothing and not s.easy
                    and s.quality_key == "probe_accuracy"
                    and s.projected >= s.probe - s.tie)


def _evidence(s, thresholds):
    """The measurements behind the decision, as one sentence."""
    name = s.quality_key.replace("_", " ")
    evidence = (f"the frozen features' {name} is {s.probe:.3f} "
                f"(chance {s.chance:.3f}; gain {s.quality:.2f}, similar from "
                f"{thresholds.similar_gain}"
                + (f" less {s.similar_tie:.2f} ({thresholds.tie_se:g} "
                   f"standard error on {s.n_quality} images)"
                   if s.similar_tie else "")
                + ")")
    if s.reference_quality is not None:
        evidence += (f"; random-init features of the same architecture "
                     f"gain {s.reference_quality:.2f}"
                     + (f" — the pretrained ones beat that by less than "
                        f"{thresholds.reference_margin}, so the pretraining "
                        f"brings nothing to this data" if s.nothing else "")
                     + (f" — at least {thresholds.random_gain}: the "
                        f"untrained architecture already separates these "
                        f"classes" if s.easy else ""))
    if s.earlier_quality is not None:
        evidence += (f"; the earlier layer's gain is {s.earlier_quality:.2f}"
                     + (" — better than the last layer's, so the data is "
                        "far from the pretraining domain" if s.far else ""))
    if s.ran:
        evidence += _scratch_evidence(s, thresholds)
    return evidence


def _scratch_evidence(s, thresholds):
    run = s.scratch
    climbs = s.projected > run["val_accuracy"]
    ahead = math.ceil(thresholds.scratch_horizon * run["epochs"])
    return (f"; a {run['epochs']}-epoch scratch run on "
            f"{run['images']} images reaches validation "
            f"accuracy {run['val_accuracy']:.3f}"
            + (f" and, at the rate it climbed over its second "
               f"half, {s.projected:.3f} within {ahead} more epochs"
               if climbs else "")
            + (f", at least the frozen features' "
               f"{s.probe:.3f}" + (
                   f" less {s.tie:.3f} ({thresholds.tie_se:g} "
                   f"standard error of the difference on "
                   f"{s.num_val} validation images)"
                   if s.tie else "") if s.catches_up else ""))


def _rule(s, thresholds, num_blocks):
    """The first rule that applies: (approach, unfreeze, rule, why)."""
    if s.nothing:
        return ("scratch", "all", "pretraining adds nothing",
                "the pretrained weights are no better a start than random "
                "ones, so the whole network trains at the full learning "
                "rate")
    if s.easy:
        return ("scratch", "all", "random features suffice",
                "the task is easy for the architecture itself, so every "
                "layer trains from random init at the full learning rate "
                "for the whole budget instead of adapting features learned "
                "for another task")
    if s.catches_up:
        headed = s.scratch["val_accuracy"] < s.probe - s.tie
        return ("scratch", "all", "scratch catches up",
                f"training every layer from random init "
                f"{'is headed to match' if headed else 'already matches'} "
                f"what the pretrained features give a linear classifier, "
                f"after {s.scratch['epochs']} epochs (the run gets more), "
                f"so the pretrained start has no lead to keep")
    if not s.large and s.similar:
        return ("finetune", "all", "small + similar",
                "the head trains on the frozen features first, then every "
                "block at the small fine-tune learning rate; the fine-tuned "
                "weights are kept only if they beat the head on the "
                "validation set, so this ends no worse than transfer there")
    if not s.large:
        return ("transfer", "all", "small + different",
                "the pretrained features beat random ones but separate "
                "these classes poorly, and there are too few labels to "
                "re-learn them safely")
    if s.similar:
        unfreeze = str(max(1, math.ceil(num_blocks / 3)))
        return ("finetune", unfreeze, "large + similar",
                f"enough labels to adapt the top blocks (top {unfreeze} of "
                f"{num_blocks}); the lower, generic features stay frozen")
    if (s.quality < thresholds.scratch_gain
            and s.median >= thresholds.scratch_per_class):
        return ("scratch", "all", "large + different, features near chance",
                "the pretrained features barely beat chance and there are "
                f"at least {thresholds.scratch_per_class} images per class")
    return ("finetune", "all", "large + different",
            "enough labels to adapt every block from the pretrained start")
