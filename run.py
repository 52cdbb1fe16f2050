"""tl_keras command line: python run.py --flagfile=configs/X.cfg [--flags]."""

import os

# Quiet TensorFlow's C++ start-up notices; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from tl_keras import cli  # noqa: E402

if __name__ == "__main__":
    cli.define_flags()
    flags.adopt_module_key_flags(cli)  # so --help lists them
    cli.run()
