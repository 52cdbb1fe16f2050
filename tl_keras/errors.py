"""The one error type for bad user input, and the helpers that word it.

Every message names the field, what is allowed and what was received:
`Invalid batch_size. Allowed: an integer in [1, 1048576]. Received:
batch_size=0`. The command line turns an `InputError` into that one line
on stderr and exit status 2, never a traceback.
"""

import numbers


class InputError(ValueError):
    """A user-controlled input is invalid; the message says which, what is
    allowed and what was received."""


def fail(field, allowed, received):
    """Raises InputError for `field` in the standard wording."""
    raise InputError(
        f"Invalid {field}. Allowed: {allowed}. Received: {field}={received!r}"
    )


def check_range(name, value, low, high):
    """Raises InputError unless `value` is an int in [low, high]."""
    if not isinstance(value, numbers.Integral) or isinstance(
            value, bool) or not low <= value <= high:
        fail(name, f"an integer in [{low}, {high}]", value)


def check_fraction(name, value, low=0.0, high=1.0, open_low=False,
                   open_high=False):
    """Raises InputError unless `value` lies in the interval; the bounds
    are closed unless `open_low` / `open_high`."""
    interval = (("(" if open_low else "[") + f"{low:g}, {high:g}"
                + (")" if open_high else "]"))
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        fail(name, f"a float in {interval}", repr(value))
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):
        fail(name, f"a float in {interval}", value)
