"""The flagfile and repeat checks that absl does not make, before it
parses the command line (`cli.parse_flags`): absl keeps the last of a
repeated flag without a word, keeps quotes and what reads like a comment
as part of a value, reads a relative --flagfile inside a flagfile from
the current folder, and recurses into a flagfile that includes itself.
"""

import logging
import os
import re

from absl import flags

from tl_keras import io


def check_repeats(args, where, opened=()):
    """Raises flags.Error for a flag repeated in one flagfile (`where`:
    its path; nested flagfiles are read the same way), for a flagfile
    that includes itself (`opened`: the flagfiles being read) and for an
    empty --flagfile; logs one repeated on the command line. A flag set
    before a --flagfile that sets it again is a repeat too (the
    flagfile's value wins: absl reads it in place). Reads the forms absl
    takes: --name=value, -name=value, and --name value.

    Returns:
      The names of the flags `args` set, nested flagfiles' included."""
    seen, nested = set(), {}  # nested: flag name -> the flagfile
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        name, equals, value = arg.lstrip("-").partition("=")
        if name.startswith("no") and name[2:] in flags.FLAGS and (
                name not in flags.FLAGS):
            name = name[2:]
        if name == "flagfile":
            if not equals:  # --flagfile PATH
                value = args[i + 1] if i + 1 < len(args) else ""
            value = os.path.expanduser(value.strip())
            if not value:
                raise flags.Error("--flagfile is empty (a path to a file of "
                                  "--name=value lines is needed)")
            if where is not None and not os.path.isabs(value):
                _check_nested_path(value, where)
            if os.path.isfile(value):
                names = _check_flagfile(value, opened) - {"flagfile"}
                _check_order(seen & names, value, where)
                _check_twice({n: nested[n] for n in names - seen
                              if n in nested}, value, where)  # once each
                nested.update(dict.fromkeys(names, value))
        elif name in seen:
            _refuse_or_warn(
                where, f"--{name} is given twice in {where} (each flag once "
                f"per flagfile; a command-line flag overrides a flagfile's)",
                f"--{name} is given more than once on the command line: "
                f"the last one is used.")
        seen.add(name)
    return seen | set(nested)


def _check_nested_path(path, where):
    """absl reads a relative --flagfile inside a flagfile from the current
    folder, not from the including file's (the configs name
    configs/_base.cfg for runs from the repository root): flags.Error
    when it is not there, naming both; a warning when the including file
    lies outside the current folder (another configs/ there was read
    without a word)."""
    here = os.getcwd()
    if not os.path.isfile(path):
        raise flags.Error(
            f"--flagfile={path} in {where} is not a file in the current "
            f"folder {here} (a relative path in a flagfile is read from "
            f"the folder run.py is started in, not from {where}'s); start "
            f"from the folder it was written for or give an absolute path")
    if not io.inside(os.path.realpath(where), os.path.realpath(here)):
        logging.getLogger("tl_keras").warning(
            "--flagfile=%s in %s is read from the current folder: %s.",
            path, where, os.path.realpath(path))


def _check_flagfile(path, opened):
    """`check_repeats` of the flagfile at `path`; flags.Error if it is
    one of the flagfiles being read (`opened`): absl skips a flagfile
    that includes itself spelled the same way, with a warning, but reads
    one spelled differently (a relative path, a link) until Python's
    recursion limit."""
    real = os.path.realpath(path)
    if real in opened:
        chain = " -> ".join([*opened, real])
        raise flags.Error(f"--flagfile={path} includes itself ({chain}); "
                          f"each flagfile may be read once per chain")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f]
    if lines and lines[0].startswith("\ufeff"):
        raise flags.Error(f"{path} starts with a byte-order mark (some "
                          f"editors write one), which absl reads as part of "
                          f"its first flag; save it as UTF-8 without one")
    for line in lines:
        _check_flagfile_value(line, path)
    return check_repeats(lines, path, (*opened, real))


def _check_flagfile_value(line, path):
    """For a flagfile line whose value holds what absl keeps as text: a
    warning for what reads like a comment after it (`--workdir=runs/a  #
    first run` trained into a folder of that name without a word; a
    folder named 'Photos #2', which a run's own flags.cfg holds as it
    is, is right), flags.Error for quotes around it (a shell would strip
    them; absl keeps them: `--workdir="runs/a"` made a folder named
    `"runs`)."""
    name, equals, value = line.partition("=")
    if not line.startswith("-") or not equals:
        return
    if re.search(r"\s#", value):
        logging.getLogger("tl_keras").warning(
            "%s in %s is %r, all of it: a flagfile has no comments after a "
            "value (only on lines of their own, starting with '#').", name,
            path, value)
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        raise flags.Error(f"{name} in {path} has its value in quotes "
                          f"({line!r}), which absl keeps as part of it; "
                          f"write {name}={value[1:-1]}")


def _check_order(names, path, where):
    """For flags set before --flagfile=path that the flagfile sets again
    (so its values win): a warning on the command line, flags.Error in
    a flagfile (`where`), as any repeat there."""
    if not names:
        return
    listed = ", ".join(f"--{name}" for name in sorted(names))
    _refuse_or_warn(
        where, f"{listed} in {where} come(s) before --flagfile={path}, "
        f"which sets it again (a flag after --flagfile overrides it)",
        f"{listed} on the command line come(s) before --flagfile={path}, "
        f"which sets it again: the flagfile's value is used (put overrides "
        f"after --flagfile).")


def _check_twice(earlier, path, where):
    """For flags that an earlier --flagfile (`earlier`: name -> its path)
    and --flagfile=path both set (absl keeps the later value without a
    word): a warning on the command line, flags.Error in a flagfile."""
    if not earlier:
        return
    listed = ", ".join(f"--{n} (in {f})" for n, f in sorted(earlier.items()))
    text = f"{listed} set again by --flagfile={path}"
    _refuse_or_warn(where, f"{text}, both read by {where} (each flag once)",
                    f"{text}: the later flagfile's value is used.")


def _refuse_or_warn(where, error, warning):
    """A repeat: flags.Error(error) in a flagfile (`where`: its path), as
    a config states each value once; a warning on the command line
    (`where` None), where scripts append overrides."""
    if where is not None:
        raise flags.Error(error)
    logging.getLogger("tl_keras").warning(warning)
