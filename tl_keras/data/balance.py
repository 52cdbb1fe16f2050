"""Class balance: said when the training classes are far apart in size
(nothing reweights them)."""

import logging

log = logging.getLogger("tl_keras")

# A largest class this many times the smallest is said: answering it
# alone then scores 10 / 11 = 0.91 or more on two such classes.
IMBALANCE = 10


def say_imbalance(counts):
    """Warns when the training classes are imbalanced (`IMBALANCE`):
    nothing reweights them, and accuracy, the best epoch, compare's pick
    and the advisor go by plain accuracy."""
    low, high = min(counts, key=counts.get), max(counts, key=counts.get)
    if counts[low] and counts[high] >= IMBALANCE * counts[low]:
        log.warning(
            "Imbalanced classes: %s has %d training images, %s %d. Nothing "
            "reweights them; accuracy (and the best epoch, compare's pick, "
            "the advisor) can be high by answering the large classes: "
            "read balanced_accuracy and per_class in metrics.json.",
            high, counts[high], low, counts[low])
