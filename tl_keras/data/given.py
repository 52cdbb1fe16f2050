"""Data a caller gives a run (`train(config, data=...)`, compare,
advise, rank): of the kind a run takes, and built for the run's config.
"""

import logging
import os

from tl_keras.config import Config
from tl_keras.data.arrays import check_given_data
from tl_keras.data.pipelines import ImageData, make_datasets
from tl_keras.errors import fail

log = logging.getLogger("tl_keras")


def data_for_run(config, image_size, data=None, keep_copies=False):
    """A run's data: `data` as given (`train(config, data=...)`), checked
    against `config` (`check_given_data`), or else read from
    config.data.data_dir at the backbone's `image_size` (`keep_copies`:
    see `make_datasets`)."""
    if data is None:
        return make_datasets(config.data, image_size,
                             keep_copies=keep_copies)
    _check_kind(data)
    check_given_data(data, config, image_size)
    return data


def _check_kind(data):
    if not isinstance(data, ImageData):
        fail("data", "an ImageData (from tl_keras.from_arrays), or None to "
             "read config.data_dir", type(data).__name__)


def given_data_config(config, data):
    """`config` for a run on arrays given in memory (`train(config,
    data=from_arrays(...))`, compare): its data_dir is not read, so it is
    recorded as '' (a flags.cfg naming the folder would train another
    run), with a warning. Data read from a folder (`make_datasets`;
    compare passes its own to each run) must be from config's data_dir
    when that is set (else the run recorded a folder it never read, and
    a rerun was refused as changed images)."""
    if not isinstance(config, Config):  # an AttributeError, later
        fail("config", "a tl_keras.Config", type(config).__name__)
    if data is None:
        return config
    _check_kind(data)
    read = data.data_config and data.data_config.data_dir
    given = config.data.data_dir
    if data.files is not None and read and given and (
            os.path.realpath(given) != os.path.realpath(read)):
        fail("data_dir", f"{read!r}, the folder the data passed in was "
             f"read from (or '')", given)
    if data.files is not None or not given:
        return config
    log.warning("data_dir=%r is not read: the run trains on the data "
                "given in memory; recorded as ''.", config.data.data_dir)
    return config.replace(data_dir="")
