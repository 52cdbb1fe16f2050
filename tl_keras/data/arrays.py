"""In-memory arrays as a data source: checked, and split per class."""

import numpy as np

from tl_keras.data.folders import carve_missing_splits
from tl_keras.errors import InputError


def carve_arrays(arrays, config, class_names):
    """Carves the splits not given as arrays from the training arrays."""
    if "val" in arrays and "test" in arrays:
        return arrays
    # The given splits are named (empty) so that only the others are
    # carved from the training arrays.
    index = {k: [(i, int(label)) for i, label in enumerate(v[1])]
             if k == "train" else [] for k, v in arrays.items()}
    split = carve_missing_splits(index, config, class_names)
    images = arrays["train"][0]
    arrays = dict(arrays)
    for k, pairs in split.items():
        if k not in arrays or k == "train":
            ids = np.array([i for i, _ in pairs], dtype=np.int64)
            arrays[k] = (images[ids], np.array([lab for _, lab in pairs],
                                               dtype=np.int32))
    return arrays


def check_arrays(x, y, x_name, y_name):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"Invalid {x_name}. Allowed: images shaped (n, height, width, "
            f"1|3|4). Received: {x_name}.shape={x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(
            f"Invalid {y_name}. Allowed: integer labels shaped ({len(x)},). "
            f"Received: {y_name}.shape={y.shape}, dtype={y.dtype}")
    if y.min() < 0:
        raise InputError(f"Invalid {y_name}. Allowed: labels >= 0. "
                         f"Received: min {y_name}={y.min()}")
    if x.dtype != np.uint8:
        finite = np.isfinite(x)
        if not finite.all():
            raise InputError(
                f"Invalid {x_name}: it holds NaN or Inf. Allowed: finite "
                f"values in [0, 255]. Received: {int((~finite).sum())} "
                f"value(s) NaN or Inf")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InputError(
                f"Invalid {x_name}. Allowed: values in [0, 255]. Received: "
                f"[{x.min()}, {x.max()}]")
        if x.size and x.max() <= 1.0:
            raise InputError(
                f"Invalid {x_name}: values are in [0, 1]; tl_keras expects "
                f"[0, 255] (multiply by 255). Received: max {x_name}="
                f"{x.max()}")
        x = np.round(x).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    return x, y.astype(np.int32)


def check_given_data(data, config, image_size):
    """Checks that an `ImageData` passed to `train(config, data=...)` (or
    the advisor's, compare's) was built for this config: its images at the
    backbone's input size, its batch size, and its training labels in the
    form the loss is chosen for (class indices, or per-class weights with
    mixup / cutmix). Raises InputError naming the config field that
    disagrees; sizes an `ImageData` built by hand does not record are not
    checked."""
    data_config = config.data
    built = data.image_size or data.val.element_spec[0].shape[1]
    if built is not None and built != image_size:
        raise InputError(
            f"Invalid image_size. Allowed: {image_size}, the backbone's "
            f"input (build the data at it). Received: image_size="
            f"{config.model.image_size!r}, with data built at {built}")
    if data.batch_size and data.batch_size != data_config.batch_size:
        raise InputError(
            f"Invalid batch_size. Allowed: {data.batch_size}, the batch size "
            f"the data was built with. Received: batch_size="
            f"{data_config.batch_size}")
    mixed = data.train.element_spec[1].dtype.is_floating
    if mixed != bool(data_config.label_mixes()):
        raise InputError(
            "Invalid augment. Allowed: the label mixing the data was built "
            f"with ({'mixup or cutmix' if mixed else 'none'}: its training "
            f"labels are {'per-class weights' if mixed else 'class indices'}"
            f"). Received: augment={data_config.augment!r}")
