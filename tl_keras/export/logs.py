"""Keeping TensorFlow's INFO lines about saving out of the log."""

import contextlib
import logging


@contextlib.contextmanager
def quiet_absl():
    """Drops absl records below WARNING while the block runs.

    TensorFlow logs at INFO, through absl, the internal names of every
    captured variable (hundreds of numbers per signature), each
    checkpoint shard's timing and the fingerprint's path whenever it saves
    a SavedModel (the export, and the temporary one TFLite converts). A
    filter, not the logger's level: while saving, TensorFlow sets absl's
    verbosity and back, which resets that level (the CLI printed the lines
    although the level had been raised).
    """
    logger = logging.getLogger("absl")
    quiet = _BelowWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _BelowWarning(logging.Filter):
    """Drops records below WARNING."""

    def filter(self, record):
        return record.levelno >= logging.WARNING
