"""The decision: an estimate of each candidate's accuracy, the best wins.

Every candidate is estimated on the same validation images, with a
standard error (`statistics`):

  transfer, from the last layer or from an earlier block: the best
    validation accuracy of the run's own head trained on that layer's
    pooled features of the sample, with the run's optimizer, rate, batch
    and epochs (`head_run`; a logistic probe fit to convergence says what
    a linear head can reach, not what the run's reaches in its budget);
  finetune from a layer: at least transfer's estimate there, since the
    fine-tune stage holds the head's kept epoch as its epoch 0 (it trains
    on from the head's last epoch) and keeps an epoch of its own only
    when the best-epoch rule prefers it on the validation set (a
    lower loss within a standard error of the highest accuracy, or a lead
    beyond one: `training.checkpoints.StageCheckpoint`), so it ends
    within a standard error of the head there or above;
  scratch: the short scratch run's best validation accuracy, or where its
    climb is headed (`scratch_projection`, with the climb's own error):
    a lower bound of what the full budget reaches.

Finetune trains from the base's last layer unless an earlier block's
transfer estimate beats the last layer's by more than `EARLIER_MARGIN_SE`
standard errors of the difference; then from the best such block. Its
estimate is at least transfer's there, and a probe that is perfect on the
validation images still leaves the trained head below it (HED-VGG16, 8
gratings per class: probe 1.0 on 40 images, head 0.90, finetune 0.975).
Scratch wins only when its estimate beats the
pretrained one by more than `SCRATCH_MARGIN_SE` standard errors of the
difference: a tie is no evidence that the architecture trains from random
init, and scratch throws the pretrained weights away. docs/advisor.md
walks through it with measured cases.
"""

import math

from tl_keras.advisor.statistics import (
    difference_se,
    projection_se,
    scratch_projection,
    standard_error,
)
from tl_keras.config.fields import LARGE_PER_CLASS  # printed only

# Scratch must beat the pretrained estimate by this many standard errors
# of the difference (`statistics.difference_se`, which errs wide). One: a
# smaller lead is within the noise of the validation set (on 25 images,
# two accuracies near 0.85 need ~0.10), and the demo's scratch pick that
# tied the probe ended 4.3 points below finetune.
SCRATCH_MARGIN_SE = 1.0

# An earlier block must beat the last layer's estimate by this many
# standard errors of the difference to be trained from: the same test as
# scratch's, for the same reason. A cut throws the deeper pretrained layers
# away, which fine-tuning from the last layer would adapt, so a lead
# within the noise is no evidence for it (the advisor bench's toy base,
# seed 7, 25 validation images: block3 probed 0.84 against the last
# layer's 0.80, half a standard error apart; finetune from block3 ended
# 5.3 points below finetune from the last layer).
EARLIER_MARGIN_SE = 1.0


def decide(m, unfreeze="all", pretrained=True):
    """Estimates each candidate from the measurements and picks the best.

    Args:
      m: measurements from `measure` (plus 'scratch', the short scratch
        run, if it ran).
      unfreeze: the run's --unfreeze, kept for a fine-tune.
      pretrained: whether the base has pretrained weights (without them
        there is nothing to transfer: scratch).

    Returns:
      {'situation', 'approach', 'unfreeze', 'feature_block' ('' = the
      base's last layer), 'rule', 'reason', 'estimates' (a list of
      {'candidate', 'approach', 'feature_block', 'estimate', 'se',
      'basis'}: the transfer estimates best first, with the finetune row
      of the chosen layer second, then scratch's)}.
    """
    record = {"unfreeze": unfreeze, "feature_block": "", "estimates": []}
    size = _size(m)
    if not pretrained:
        return {**record, "situation": f"{size}, no pretrained weights",
                "approach": "scratch", "rule": "no pretrained weights",
                "reason": "The base has no pretrained weights (weights="
                          "none), so there is nothing to transfer: every "
                          "layer trains from random init."}
    layers = layer_estimates(m)
    if not layers:
        problems = "; ".join(m["problems"])
        return {**record, "situation": f"{size}, no score",
                "approach": "finetune", "rule": "no score",
                "reason": f"No layer could be scored ({problems}), so "
                          f"nothing favours scratch: finetune from the last "
                          f"layer, whose stage is kept only if it beats the "
                          f"head on the validation set."}
    # Ties go to the deeper layer, the last one first (the estimates list
    # it first, then the blocks bottom to top).
    def rank(e):
        return e["estimate"], layers.index(e) or len(layers)

    best = max(layers, key=rank)
    chosen, layer_text = chosen_layer(layers, best)
    record["estimates"] = sorted(layers, key=rank, reverse=True)
    pretrained_pick = _pretrained_pick(chosen, best)
    record["estimates"].insert(1, pretrained_pick["estimate_row"])
    scratch = scratch_estimate(m)
    domain = "different" if chosen["feature_block"] else "similar"
    situation = f"{size}, {domain} domain"
    if scratch:
        record["estimates"].append(scratch)
    wins, scratch_text = _scratch_verdict(scratch, best, m)
    if wins:
        return {**record, "situation": situation, "approach": "scratch",
                "rule": "scratch beats the pretrained features",
                "reason": f"{layer_text}; {scratch_text}."}
    return {**record, "situation": situation,
            "approach": pretrained_pick["approach"],
            "feature_block": chosen["feature_block"],
            "rule": pretrained_pick["rule"],
            "reason": f"{layer_text}; {pretrained_pick['why']}; "
                      f"{scratch_text}."}


def chosen_layer(layers, best):
    """(the layer finetune trains from, the sentence about the layers).

    The last layer, unless the best earlier block's estimate beats it by
    more than `EARLIER_MARGIN_SE` standard errors of their difference on
    the same validation images; the best layer when the last one has no
    estimate."""
    text = _layer_text(layers, best)
    last = next((e for e in layers if not e["feature_block"]), None)
    if last is None or best is last:
        return best, text
    needed = round(last["estimate"] + EARLIER_MARGIN_SE * difference_se(
        best["estimate"], last["estimate"], last["images"]), 4)
    if best["estimate"] > needed:
        return best, (f"{text}, above the last layer by more than "
                      f"{EARLIER_MARGIN_SE:g} standard error of the "
                      f"difference (needed {needed:.3f})")
    return last, (f"{text}, but not above the last layer's "
                  f"{last['estimate']:.3f} by {EARLIER_MARGIN_SE:g} standard "
                  f"error of the difference (needed {min(needed, 1):.3f}): "
                  f"a lead within the noise keeps the deeper pretrained "
                  f"layers, which fine-tuning adapts")


# How each score estimates transfer from a layer, the first one that every
# scored layer has: the run's own head (`head_run`), the linear probe
# (measurements made before the head was trained, or by hand), kNN on the
# sample where no validation image could score a probe.
BASIS = {"head_accuracy": "the run's head on {}",
         "probe_accuracy": "linear probe on {}",
         "knn_accuracy": "kNN on {} (no probe)"}


def layer_estimates(m):
    """Transfer's estimate from each scored layer: the validation accuracy
    of the run's head trained on its features (`head_run`; the probe's
    where no head was trained, kNN's on the sample where no probe could
    be computed), the last layer first, then the earlier blocks bottom to
    top."""
    scored = {"": m.get("last") or {}, **(m.get("layers") or {})}
    key = next((k for k in ("head_accuracy", "probe_accuracy")
                if all(k in s for s in scored.values() if s)),
               "knn_accuracy")
    n = m.get("sample", 0) if key == "knn_accuracy" else m.get("num_val", 0)
    out = []
    for block, scores in scored.items():
        if key in scores:
            name = block or "last layer"
            out.append({"candidate": f"transfer ({name})",
                        "approach": "transfer", "feature_block": block,
                        "estimate": scores[key],
                        "se": standard_error(scores[key], n),
                        "basis": BASIS[key].format(name),
                        "images": n})
    return out


def scratch_estimate(m):
    """Scratch's estimate from the short scratch run (None if it did not
    run): the best of its curve or where it is headed, over the validation
    images."""
    run = m.get("scratch") or {}
    if "val_accuracy" not in run:
        return None
    n = m.get("num_val", 0)
    curve = run.get("val_accuracy_curve") or [run["val_accuracy"]]
    projected = scratch_projection(curve, n)
    headed = projected > run["val_accuracy"]
    return {"candidate": "scratch", "approach": "scratch",
            "feature_block": "", "estimate": projected,
            "se": projection_se(curve, n), "projected": headed,
            "basis": (f"scratch run of {run['epochs']} epochs on "
                      f"{run['images']} images: best {run['val_accuracy']:.3f}"
                      + (", headed higher at the rate it climbed over its "
                         "second half" if headed else "")),
            "images": n}


def scratch_needed(estimate, n):
    """The validation accuracy the scratch run must beat to win against a
    pretrained estimate measured on the same n images: the estimate plus
    `SCRATCH_MARGIN_SE` standard errors of their difference. Above 1 when
    no scratch run could win (then it need not run)."""
    # The margin at the scratch accuracy that would just win; solved by
    # a few fixed-point steps from the estimate (the SE changes slowly).
    needed = estimate
    for _ in range(5):
        needed = estimate + SCRATCH_MARGIN_SE * difference_se(
            min(needed, 1.0), estimate, n)
    return round(needed, 4)


def needed_to_win(scratch, best):
    """What scratch's estimate must exceed to win against the pretrained
    `best` (estimate rows on the same validation images): `scratch_needed`
    for a measured best; for a projected one, the pretrained estimate plus
    SCRATCH_MARGIN_SE standard errors of the difference with the
    projection's own, wider, error (`statistics.projection_se`)."""
    if not scratch.get("projected"):
        return scratch_needed(best["estimate"], scratch["images"])
    return round(best["estimate"] + SCRATCH_MARGIN_SE * _projected_gap_se(
        scratch, best), 4)


def _projected_gap_se(scratch, best):
    """The standard error of the difference between a projected scratch
    estimate and the pretrained `best`, from their own errors."""
    return math.sqrt(scratch["se"] ** 2 + best["se"] ** 2)


def _pretrained_pick(chosen, best):
    """Finetune from the chosen layer, with its row of estimates."""
    name = chosen["feature_block"] or "the last layer"
    rule = (f"best estimate: finetune from {name}" if chosen is best else
            f"finetune from {name}: {best['feature_block']} leads within "
            f"{EARLIER_MARGIN_SE:g} standard error")
    row = {**chosen,
           "candidate": f"finetune ({chosen['feature_block'] or 'last layer'})",
           "approach": "finetune",
           "basis": "at least transfer's: the head's kept epoch is its "
                    "epoch 0, and it keeps its own only if the validation "
                    "set prefers it"}
    return {"approach": "finetune", "estimate_row": row,
            "rule": rule,
            "why": f"finetune from {name} (the head first, then the "
                   f"unfrozen blocks at the fine-tune learning rate; its "
                   f"own epochs are kept only if the validation set "
                   f"prefers them to the head's, so it ends no more than "
                   f"a standard error below transfer there)"}


def scratch_run_wins(curve, images, best, m):
    """The needed accuracy if a scratch run whose validation curve so far
    is `curve` (on `images` sampled images) would win against the
    pretrained `best` row under `decide`'s own test (chance first, then
    the margin, with a projection's wider error); None if it would not.
    The scratch run stops on it, so a run stopped for winning is the one
    the decision picks: a bar of its own had stopped a climbing run as a
    winner that the decision then called a tie (its projection carries a
    wider error), and one within a standard error of chance."""
    run = {"epochs": len(curve), "images": images,
           "val_accuracy": max(curve), "val_accuracy_curve": list(curve)}
    scratch = scratch_estimate({**m, "scratch": run})
    wins, _ = _scratch_verdict(scratch, best, m)
    return needed_to_win(scratch, best) if wins else None


def _scratch_verdict(scratch, best, m):
    """(scratch wins, the sentence about scratch)."""
    chance = m["chance"]
    if scratch is None:
        run = m.get("scratch") or {}
        return False, (f"scratch was not measured ({run['skipped']})"
                       if run.get("skipped") else
                       "scratch was not measured (no scratch run), and "
                       "frozen-feature scores cannot show that the "
                       "architecture trains from random init")
    needed = needed_to_win(scratch, best)
    text = (f"scratch's estimate is {scratch['estimate']:.3f} "
            f"({scratch['basis']})")
    if scratch["estimate"] <= chance + scratch["se"]:
        where = ("within a standard error of" if scratch["estimate"]
                 >= chance - scratch["se"] else "below")
        return False, (f"{text}, {where} chance ({chance:.3f}, the most "
                       f"frequent class's share of the validation images): "
                       f"evidence that this architecture does not train "
                       f"from random init on this data")
    if scratch["estimate"] > needed:
        return True, (f"{text}, above the pretrained {best['estimate']:.3f} "
                      f"by more than {SCRATCH_MARGIN_SE:g} standard error "
                      f"of the difference (needed {needed:.3f}), so every "
                      f"layer trains from random init for the whole budget")
    return False, (f"{text}, which does not beat the pretrained "
                   f"{best['estimate']:.3f} by {SCRATCH_MARGIN_SE:g} "
                   f"standard error of the difference (needed "
                   f"{min(needed, 1.0):.3f}): a tie keeps the pretrained "
                   f"start" + _still_climbing(scratch, best))


def _still_climbing(scratch, best):
    """For a tie: when the scratch run was still climbing and its
    estimate is within a standard error of the difference below the
    pretrained one, a sentence saying the tie is open. Its estimate is a
    lower bound of the full budget's (bench: toy many + similar, seeds 6,
    8 and 10, ties at 0.857-0.889 that scratch's full budget took to
    0.966-0.986), so the decision stays, and the reader is told how to
    settle it."""
    if not scratch.get("projected") or (scratch["estimate"] < best[
            "estimate"] - _projected_gap_se(scratch, best)):
        return ""
    return ("; but the scratch run was still climbing when it stopped, "
            "and a short run only bounds scratch from below: "
            "--mode=compare trains both with the full budget to settle it")


def _layer_text(layers, best):
    n = best["images"]
    parts = ", ".join(f"{e['feature_block'] or 'last layer'} "
                      f"{e['estimate']:.3f}" for e in layers)
    return (f"transfer estimates ({layers[0]['basis'].split(' on ')[0]}, "
            f"{n} images, SE {best['se']:.3f} at the best): {parts}; best "
            f"{best['feature_block'] or 'the last layer'}")


def _size(m):
    median = m["images_per_class"]["median"]
    size = "large" if median >= LARGE_PER_CLASS else "small"
    return f"{size} data ({median:g} images per class)"
