"""The statistics behind the advisor's estimates: accuracies as binomial
proportions, their standard errors, and a learning curve's projection.

An accuracy measured on n validation images is uncertain by about
sqrt(p (1 - p) / n); two measurements closer than that are a tie, not a
ranking. Each function says which images its error is over.
"""

import math

# How far ahead the short scratch run's curve is continued, in run lengths
# (`scratch_projection`): half a run adds one measured rise, no further
# than the rise was measured over (linear extrapolation overshoots a curve
# that is bending over), and well inside the budget scratch trains with.
PROJECTION_HORIZON = 0.5


def accuracy_variance(accuracy, n):
    """The variance of an accuracy measured on n images, as a binomial
    proportion with the Agresti-Coull adjustment (two more right and two
    more wrong: an accuracy of 0 or 1 on 25 images is not certain, which
    the plain p(1 - p) / n would say); 0 without images."""
    if n <= 0:
        return 0.0
    adjusted = (accuracy * n + 2) / (n + 4)
    return adjusted * (1 - adjusted) / (n + 4)


def standard_error(accuracy, n):
    """The standard error of an accuracy measured on n images
    (`accuracy_variance`), rounded to 4 decimals."""
    return round(math.sqrt(accuracy_variance(accuracy, n)), 4)


def difference_se(a, b, n):
    """The standard error of the difference of two accuracies, each
    measured on the same n images (`accuracy_variance`). Independence is
    assumed: two models' errors on the same images are positively
    correlated, so the true error of the difference is smaller and this
    errs wide (a difference must be clearer to count). Rounded to 4
    decimals; 0 without images."""
    return round(math.sqrt(accuracy_variance(a, n)
                           + accuracy_variance(b, n)), 4)


def scratch_projection(curve, n, horizon=PROJECTION_HORIZON):
    """Where the scratch run's validation accuracy is headed: its best,
    plus its rise continued linearly for `horizon` times the run's length.

    The rise is the best of the curve's second half over the best of its
    first half (half a run apart), less one standard error of the second
    half's best on the n validation images (`accuracy_variance`), so a few
    images' noise on a flat run is not a climb. Capped at 1; never below
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


def projection_se(curve, n, horizon=PROJECTION_HORIZON):
    """The standard error of `scratch_projection(curve, n, horizon)`: the
    best's, plus, when the projection climbs above it, the extrapolated
    rise's (the difference of the two halves' bests, each over n images,
    times the 2 x horizon rises it is continued for). A climb measured on
    a few images is uncertain, and its extrapolation more so. Rounded to
    4 decimals."""
    best = max(curve)
    variance = accuracy_variance(best, n)
    if scratch_projection(curve, n, horizon) > best:
        half = len(curve) // 2
        rise_variance = (accuracy_variance(max(curve[:half]), n)
                         + accuracy_variance(max(curve[half:]), n))
        variance += (2 * horizon) ** 2 * rise_variance
    return round(math.sqrt(variance), 4)
