"""Which run should `--mode=compare` export? Two rules, on the compares an
advisor bench already ran (`bench/advisor_situations.py --root=ROOT`).

  val_first   the best validation accuracy, ties to the lower validation
              loss (what compare did until session 37)
  advisor_tie the same, unless the advisor's pick is within one standard
              error of the best validation accuracy (Agresti-Coull on the
              validation count, as the best-epoch rule): then the pick

On a few dozen validation images, runs of different approaches often tie,
and a tie broken by validation loss compares losses of differently
calibrated models. The advisor's pick rests on other evidence (every
layer's head, the scratch run), so it is the better tie-break, if ties are
where the two rules differ. Each compare's rows hold validation and test
accuracy, so both rules are scored on test accuracy without training:

    python bench/compare_pick.py --root=/tmp/bench/s21
"""

import argparse
import glob
import json
import os

from tl_keras.training.checkpoints import accuracy_noise


def val_first(results, pick, num_val):
    return max(results, key=lambda k: (results[k]["val_accuracy"],
                                       -results[k]["val_loss"]))


def advisor_tie(results, pick, num_val):
    best = val_first(results, pick, num_val)
    top = results[best]["val_accuracy"]
    if pick in results and results[pick]["val_accuracy"] >= (
            top - accuracy_noise(top, num_val) - 1e-9):
        return pick
    return best


RULES = {"val_first": val_first, "advisor_tie": advisor_tie}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, action="append",
                        help="an advisor bench root (repeatable)")
    args = parser.parse_args()
    below = {name: [] for name in RULES}
    print(f"{'situation':32s}" + "".join(f"{n:>14s}" for n in RULES)
          + "   (test points below the best row)")
    for root in args.root:
        for path in sorted(glob.glob(os.path.join(root, "*",
                                                  "results.json"))):
            folder = os.path.dirname(path)
            summary = json.load(open(path))
            decision = json.load(open(os.path.join(folder,
                                                   "decision.json")))
            results, pick = summary["results"], summary["advisor_pick"]
            num_val = decision["measurements"]["num_val"]
            top = max(r["test_accuracy"] for r in results.values())
            name = f"{os.path.basename(root)}/{os.path.basename(folder)}"
            row = f"{name:32s}"
            for name, rule in RULES.items():
                chosen = rule(results, pick, num_val)
                gap = 100 * (top - results[chosen]["test_accuracy"])
                below[name].append(gap)
                row += f"{chosen:>9s} {gap:4.1f}"
            print(row)
    for name, gaps in below.items():
        print(f"{name:12s} mean {sum(gaps) / len(gaps):.2f} points below the "
              f"best, worst {max(gaps):.1f}, within 2 points "
              f"{sum(g <= 2 for g in gaps)} of {len(gaps)}")


if __name__ == "__main__":
    main()
