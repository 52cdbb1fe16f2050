"""The command line: the only module that defines or reads absl flags
(`flagfiles` checks the command line and its flagfiles before absl
parses them).

    python run.py --flagfile=configs/X.cfg [--overrides]

Every `Config` field is a flag of the same name. A bad value, a stray
positional argument or an invalid combination ends with one clear message
on stderr and a non-zero exit code.
"""

import logging
import sys

from absl import app, flags
from absl.logging import converter

from tl_keras import flagfiles
from tl_keras.config import Config, config_fields
from tl_keras.config.config import REMOVED_FIELDS
from tl_keras.config.reads import warn_unread
from tl_keras.errors import InputError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
# The modes whose runs resume: each epoch ends with a backup in --workdir.
RESUMING_MODES = ("train", "compare", "demo")

def define_flags(flag_values=flags.FLAGS):
    """Defines one flag per Config field, with the field's help text."""
    for field in config_fields():
        name, default = field.name, field.default
        help_text = field.metadata["help"]
        choices = field.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(name, default, choices, help_text,
                              flag_values=flag_values)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text,
                              flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text,
                                 flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text,
                               flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text,
                                flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS):
    """Reads the parsed flags once into a Config (not yet validated)."""
    # Config expands a leading `~` of the path flags (fields.home_expanded).
    return Config(**{f.name: flag_values[f.name].value
                     for f in config_fields()})


def config_from_args(args):
    """Parses command-line style arguments (['--name=value', ...]) into a
    Config, with the same flag definitions and defaults as run.py."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    flag_values(["tl_keras", *args])
    return config_from_flags(flag_values)


def setup_logging():
    """Sends the tl_keras log, every level, to stderr: stdout carries only
    results (predict's rows, evaluate's line, the compare, rank and demo
    tables), so `run.py --mode=predict ... > preds.tsv` holds rows alone.
    Keras's per-epoch lines (model.fit) still go to stdout, by Keras's
    design."""
    logger = logging.getLogger("tl_keras")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # TensorFlow's own INFO lines (SavedModel internals) drown the progress.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def set_log_level(flag_values=flags.FLAGS):
    """Sets the tl_keras log's level from absl's --verbosity (-2 errors,
    -1 warnings, 0 info, the default, 1 debug), which absl applies only to
    its own logger; --logger_levels=tl_keras:LEVEL, which absl applies as
    it parses, names this log and wins."""
    if "tl_keras" in flag_values["logger_levels"].value:
        return
    verbosity = flag_values["verbosity"]
    # absl raises an unset --verbosity from -1 to 0 only after parsing.
    logging.getLogger("tl_keras").setLevel(
        logging.INFO if verbosity.using_default_value
        else converter.absl_to_standard(verbosity.value))


def main(argv, flag_values=flags.FLAGS):
    """absl's main (`flag_values` parsed already); ends with one line on
    stderr for bad input (EXIT_USAGE) and for Ctrl-C (EXIT_INTERRUPTED),
    not a traceback."""
    try:
        config = checked_config(argv, flag_values)
        _mode(config.runtime.mode)(config)
    except InputError as e:
        _exit_usage(e)
    except KeyboardInterrupt:
        kept = _interrupted(flag_values.mode, flag_values.workdir)
        print(f"tl_keras: interrupted; {kept}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        # TensorFlow's OOM (not imported here: --help stays light).
        if type(e).__name__ != "ResourceExhaustedError":
            raise
        _exit_usage(_out_of_memory(e, flag_values))


def _exit_usage(message):
    """Ends the process with one line on stderr and EXIT_USAGE."""
    print(f"tl_keras: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _out_of_memory(error, flag_values):
    """The one line for TensorFlow's ResourceExhaustedError: it was a
    traceback of dozens of lines ending in 'OOM when allocating tensor'
    (in a fit, TensorFlow's message begins "Graph execution error:")."""
    said = next((line.strip() for line in str(getattr(
        error, "message", error)).splitlines() if "OOM" in line), "")
    what = f" ({said[:200]})" if said else ""
    if flag_values.mode in ("predict", "evaluate", "export"):
        return (f"Out of memory{what}. Allowed: more free memory (the "
                f"image size and batch are the export's, not flags). "
                f"Received: --mode={flag_values.mode}")
    size = flag_values.image_size or "the backbone's default"
    return (f"Out of memory{what}. "
            f"Allowed: a smaller --batch_size or --image_size (other "
            f"settings for a run: a new --workdir, or --overwrite), or a "
            f"smaller --cache_budget_mb (the same run resumes with it). "
            f"Received: batch_size={flag_values.batch_size}, image_size="
            f"{size}, cache_budget_mb={flag_values.cache_budget_mb}")


def checked_config(argv, flag_values=flags.FLAGS):
    """The validated Config of the parsed flags, its unread flags said.

    Raises:
      InputError: a positional argument, or a bad value or combination.
    """
    if len(argv) > 1:  # one line, not absl's usage text before it
        raise InputError(
            f"Unexpected positional argument(s): {' '.join(argv[1:])}. "
            f"Allowed: --name=value flags only (in a flagfile, a line "
            f"without a leading '--' or an indented '#' line also becomes "
            f"a positional argument). Received: {' '.join(argv[1:])}")
    # Checked before the mode is imported: `--help`, flag errors and a
    # bad value answer without loading TensorFlow.
    config = config_from_flags(flag_values).validate()
    _warn_unused(config)
    # absl's --log_dir is for absl's own log files.
    if "log_dir" in flag_values and flag_values["log_dir"].present:
        logging.getLogger("tl_keras").warning(
            "--log_dir=%s is not used: tl_keras logs to stderr (keep it "
            "with 2> FILE); a run's records are in its --workdir.",
            flag_values["log_dir"].value)
    return config


def _interrupted(mode, workdir):
    """What an interrupted --mode=`mode` kept. A run's files are written
    whole or not at all (a temporary name, then a rename), so train,
    compare and the demo keep each finished epoch's backup and resume
    after it; the other modes write their results only at the end."""
    if mode in RESUMING_MODES:
        return (f"{workdir} keeps what finished (up to the last completed "
                f"epoch); the same command resumes from there")
    return (f"--mode={mode} writes its results only when it ends, so none "
            f"were kept; the same command starts it over")


def _warn_unused(config):
    """Logs each flag set away from its default that this mode (or a
    scratch / transfer run) does not read; `train` says so itself (for
    Python callers too)."""
    if config.runtime.mode != "train":
        warn_unread(config)
    _warn_random_base(config)


def _warn_random_base(config):
    """Logs a warning when --weights=none leaves a registered base or a
    hub preset (one that rank ranks, or one that transfer or finetune
    freezes) with random weights (a preset is then built without its
    weights: it was not said); a .keras base keeps its own."""
    mode, approach = config.runtime.mode, config.training.approach
    if mode == "rank":
        names = [name.strip() for name in config.advisor.backbones.split(",")]
    elif mode == "train" and approach in ("transfer", "finetune"):
        names = [config.model.backbone]
    else:
        return
    random = [name for name in names if name and not name.endswith(
        ".keras")]
    if config.model.weights == "none" and random:
        logging.getLogger("tl_keras").warning(
            "--weights=none: %s's frozen base has random weights, so %s "
            "works on random features (a .keras base or --weights=PATH "
            "brings pretrained ones; --approach=scratch trains every "
            "layer).", ", ".join(random), f"--mode={mode}" if mode == "rank"
            else f"--approach={approach}")


def _mode(name):
    """The function that runs --mode=name (imported on demand)."""
    if name in ("advise", "rank"):
        from tl_keras import advisor

        return getattr(advisor, name)
    if name == "compare":
        from tl_keras.modes.compare import compare

        return compare
    if name == "demo":
        from tl_keras.modes.demo import run_demo

        return run_demo
    if name in ("export", "predict", "evaluate"):
        from tl_keras.modes import predict

        return {"export": predict.export_run, "predict": predict.predict_files,
                "evaluate": predict.evaluate_export}[name]
    from tl_keras.training import train

    return train


def parse_flags(argv):
    """Parses the command line into flags.FLAGS (absl's `flags_parser`); a
    bad flag exits with EXIT_USAGE (absl's own parser exits with 1) and
    one line that names the flag, what is allowed and what was received.
    absl keeps the last of a repeated flag silently: within one flagfile
    a repeat is refused (a config states each value once); on the command
    line, where scripts append overrides, the last wins and the log says
    so, at the level --verbosity then sets (the warnings wait for it; a
    flag absl refuses ends the parse before that level is known, and they
    show with its error)."""
    logger, held = logging.getLogger("tl_keras"), []
    logger.addFilter(held.append)  # None: each record is held back
    try:
        flagfiles.check_repeats(argv[1:], None)
        rest = flags.FLAGS(argv)
        set_log_level()
    except flags.Error as e:
        _release(logger, held)
        message = " ".join(str(e).split())
        message += "".join(f" (--{name}: {why})"
                           for name, why in REMOVED_FIELDS.items()
                           if f"'{name}'" in message)
        _exit_usage(f"Invalid flag: {message}. Allowed: the flags "
                    f"`python run.py --help` lists, with their values. "
                    f"Received: {' '.join(argv[1:])}")
    finally:  # whatever else is raised
        _release(logger, held)
    if flags.FLAGS.only_check_args:  # absl exits next, before main
        _only_check(rest)
    return rest


def _only_check(argv):
    """absl's --only_check_args exits right after parsing, so every value
    and combination passed (--epochs=0, a missing --data_dir): checks
    them as a run would before any work, and says the result."""
    try:
        config = checked_config(argv)
    except InputError as e:
        _exit_usage(e)
    logging.getLogger("tl_keras").info(
        "--only_check_args: the flags are valid for --mode=%s (nothing was "
        "run or written).", config.runtime.mode)


def _release(logger, held):
    """Logs the `held` records that the log's level now lets through."""
    logger.removeFilter(held.append)
    while held:
        record = held.pop(0)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def run(argv=None):
    """Entry point of run.py; call `define_flags()` first."""
    setup_logging()
    app.run(main, argv, flags_parser=parse_flags)
