"""Data a caller gives a run (`train(config, data=...)`, compare,
advise, rank): of the kind a run takes, and built for the run's config.
"""

import logging
import os

import tensorflow as tf

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
    _check_pipelines(data)


def _check_pipelines(data):
    """An `ImageData` built by hand (the class is public) holds what a run
    reads, from its datasets' element specs (nothing is iterated): it
    failed inside Keras after the workdir was written (unbatched images,
    one-hot or uint8 ones, grey images, no val), or hung (an infinite
    train)."""
    if data.shuffle is None:
        fail("data.shuffle", "an EpochShuffle, as the ImageData of "
             "tl_keras.from_arrays and make_datasets hold", "None")
    for name in ("train", "val") + ("test",) * (data.test is not None):
        ds, field = getattr(data, name), f"data.{name}"
        spec = getattr(ds, "element_spec", None)
        if not isinstance(ds, tf.data.Dataset) or not (
                isinstance(spec, tuple) and len(spec) == 2):
            fail(field, "a batched tf.data.Dataset of (images, labels)",
                 type(ds).__name__ if spec is None else repr(spec)[:200])
        images, labels = spec  # only what is known and wrong is refused
        rank = images.shape.rank
        if rank not in (None, 4) or (rank and images.shape[-1] not in (
                None, 3)) or images.dtype != tf.float32:
            fail(field, "batches of float32 RGB images, (batch, height, "
                 "width, 3), in [0, 255]", f"images {images.dtype.name} "
                 f"{images.shape}")
        mixed = name == "train" and labels.dtype.is_floating
        if labels.shape.rank not in (None, 1 + mixed) or not (
                mixed or labels.dtype.is_integer):
            fail(field, "integer class indices, (batch,) (the training "
                 "set's per-class weights, (batch, classes), with mixup or "
                 "cutmix)", f"labels {labels.dtype.name} {labels.shape}")
        if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
            fail(field, "a finite dataset (one pass is one epoch)",
                 "an infinite one (repeat())")


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
