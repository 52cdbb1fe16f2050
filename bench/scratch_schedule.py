"""Experiment: the advisor's short scratch run at the schedule of the run
it previews (today's) against a schedule of its own, linear decay to 0
over the short run ("budget-aware", Li et al., ICLR 2020: at small
budgets it reached more than a constant rate, and kept models' order).

For each toy situation of bench/advisor_situations.py (the same data and
toy base for a seed), `--mode=advise` runs twice, once per schedule, with
the scratch run's early stop off (its whole curve is printed; the
decision is the same, a stopped run has already won). No compare is run:
read the picks against that seed's compare rows in bench/RESULTS.md.

    python bench/scratch_schedule.py --seed=22    # ~6 min, 2 cores
"""

import argparse
import importlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import tl_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import advisor_situations  # noqa: E402

_ADVISE = importlib.import_module("tl_keras.advisor.advise")
_SCRATCH = importlib.import_module("tl_keras.advisor.scratch_run")
_RECIPE = _SCRATCH.recipe


class _OwnSchedule:
    """Stands in for the recipe module in the scratch run: its optimizer
    decays linearly to 0 over the run's own `epochs`."""

    def __init__(self, epochs):
        self.epochs = epochs

    def __getattr__(self, name):
        return getattr(_RECIPE, name)

    def make_optimizer(self, training, lr, epochs, steps, **kwargs):
        return keras.optimizers.Adam(
            keras.optimizers.schedules.PolynomialDecay(
                lr, self.epochs * steps, end_learning_rate=0.0, power=1.0))


def advise(name, folder, augment, backbone, root, seed, schedule):
    original = _SCRATCH.scratch_run

    def run(model, data, config, epochs, stop=None):
        _SCRATCH.recipe = _OwnSchedule(epochs) if schedule == "own" else (
            _RECIPE)
        try:
            return original(model, data, config, epochs)
        finally:
            _SCRATCH.recipe = _RECIPE

    _ADVISE.scratch_run = run
    try:
        decision = tl_keras.advise(tl_keras.Config(
            mode="advise", data_dir=folder, backbone=backbone,
            workdir=os.path.join(root, f"advise_{schedule}_" + name.replace(
                " + ", "_").replace(" ", "_")),
            weights="none", image_size=32, epochs=40, finetune_epochs=15,
            finetune_learning_rate=1e-4, learning_rate=0.003, batch_size=16,
            augment=augment, seed=42 + seed))
    finally:
        _ADVISE.scratch_run = original
    estimates = {e["candidate"]: e["estimate"]
                 for e in decision["estimates"]}
    scratch = decision["measurements"].get("scratch", {})
    pretrained = max(v for k, v in estimates.items() if k != "scratch")
    print(f"{name:<22} {schedule:<4} pick {decision['approach']:<8} "
          f"pretrained {pretrained:.3f}  scratch "
          f"{estimates.get('scratch', float('nan')):.3f}  curve "
          f"{scratch.get('val_accuracy_curve') or scratch.get('skipped')}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--root", default="")
    args = parser.parse_args()
    logging.getLogger("tl_keras").setLevel(logging.WARNING)
    root = args.root or f"/tmp/scratch_schedule_s{args.seed}"
    for name, (folder, augment, backbone, _) in (
            advisor_situations.toy_situations(root, args.seed).items()):
        for schedule in ("run", "own"):
            advise(name, folder, augment, backbone, root, args.seed,
                   schedule)


if __name__ == "__main__":
    main()
