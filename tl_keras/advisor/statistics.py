"""The statistics behind the advisor's ties: accuracies as binomial
proportions, their standard errors, and a learning curve's projection.

An accuracy measured on n validation images is uncertain by about
sqrt(p (1 - p) / n); two measurements closer than that are a tie, not a
ranking. Each function says which images its error is over.
"""

import math


def scratch_matches(scratch_accuracy, probe_accuracy, n, se=1.0):
    """Whether a scratch run's validation accuracy reaches the probe's,
    less `scratch_tie` (both over the same n validation images): then it
    has caught up, whatever its later epochs do (`decide` takes its best,
    or where it is headed, which is never lower)."""
    return scratch_accuracy >= probe_accuracy - scratch_tie(
        scratch_accuracy, probe_accuracy, n, se)


def accuracy_variance(accuracy, n):
    """The variance of an accuracy measured on n images, as a binomial
    proportion with the Agresti-Coull adjustment (two more right and two
    more wrong: an accuracy of 0 or 1 on 25 images is not certain, which
    the plain p(1 - p) / n would say); 0 without images."""
    if n <= 0:
        return 0.0
    adjusted = (accuracy * n + 2) / (n + 4)
    return adjusted * (1 - adjusted) / (n + 4)


def scratch_tie(scratch_accuracy, probe_accuracy, n, se=1.0):
    """How far below the probe the scratch run may be and still tie: `se`
    standard errors of the difference of two accuracies, each over the
    same n validation images (`accuracy_variance`; independence assumed,
    so this errs wide), rounded to 4 decimals; 0 without images."""
    if n <= 0 or se <= 0:
        return 0.0
    variance = (accuracy_variance(scratch_accuracy, n)
                + accuracy_variance(probe_accuracy, n))
    return round(se * math.sqrt(variance), 4)


def scratch_projection(curve, n, horizon=0.5):
    """Where the scratch run's validation accuracy is headed: its best,
    plus its rise continued linearly for `horizon` times the run's length.

    The rise is the best of the curve's second half over the best of its
    first half (half a run apart), less one standard error of the second
    half's best on the n validation images (`accuracy_variance`), so a few
    images' noise on a flat run is not a climb. Linear extrapolation
    overshoots a learning curve that is bending over, so it goes no
    further than the rise was measured over: the default horizon 0.5 (of
    the run's length) adds one rise, e.g. 4 epochs ahead of an 8-epoch run,
    well inside the budget scratch trains with. Capped at 1; never below
    the best; the best itself when horizon is 0 or the curve has fewer
    than 2 points.
    """
    best = max(curve)
    if horizon <= 0 or len(curve) < 2:
        return best
    half = len(curve) // 2
    second = max(curve[half:])
    noise = math.sqrt(accuracy_variance(second, n))
    rise = max(0.0, second - max(curve[:half]) - noise)
    # The halves' midpoints are half a run apart: 2 rises per run length.
    return round(min(1.0, best + 2 * horizon * rise), 4)


def gain_se(accuracy, chance, n):
    """The standard error of `gain(accuracy, chance)` for an accuracy
    measured on n images (`accuracy_variance`), rounded to 4 decimals; 0
    without images."""
    return round(math.sqrt(accuracy_variance(accuracy, n)) / (1 - chance), 4)


def gain(accuracy, chance):
    """Accuracy above chance, scaled so 0 = chance and 1 = perfect.

    Rounded to 6 decimals: accuracies are counts over a few images, and
    e.g. (0.6 - 0.2) / 0.8 is 0.49999999999999994 in floating point, which
    must not fall below a threshold of 0.5.
    """
    return round((accuracy - chance) / (1 - chance), 6)
