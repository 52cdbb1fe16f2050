"""Loading an export back for prediction: `load_exported(path)`."""

import json
import numbers
import os

import numpy as np
import tensorflow as tf

from tl_keras import io
from tl_keras.data.arrays import images_as_rgb
from tl_keras.data.images import READABLE_FORMATS, find_unreadable
from tl_keras.errors import InputError
from tl_keras.export.saved_model import MANIFEST_FORMAT


class ExportedClassifier:
    """A loaded export: `predict(images or paths)` -> dict of numpy arrays.

    Use `load_exported(path)` to make one.
    """

    def __init__(self, path):
        self.path = path
        self.manifest = _read_manifest(path)
        try:
            self._model = tf.saved_model.load(path)
        except (OSError, ValueError, IndexError, tf.errors.OpError) as e:
            raise InputError(
                f"Invalid export_dir {path!r}: its SavedModel cannot be "
                f"loaded (half copied, or its files cut short: "
                f"{str(e).splitlines()[0][:300]}). Allowed: a whole export "
                f"(export it again: --mode=export). Received: export_dir="
                f"{path!r}") from None
        self.class_names = self.manifest["class_names"]
        self.image_size = self.manifest["input"]["size"]
        _check_names(self._model, self.class_names, path, self.image_size)

    def predict(self, inputs, batch_size=64, check_files=True):
        """Scores a batch of images or a list of image file paths.

        Args:
          inputs: an array [batch, height, width, 3] (or 1: gray, or 4:
            RGBA) of uint8 or numbers in [0, 255], as `from_arrays` takes
            (or a list of [height, width, channels] arrays of one size),
            or a list of paths to JPEG / PNG / GIF / BMP / WebP files.
          batch_size: how many images go to the model at once.
          check_files: refuse unreadable paths first (`find_unreadable`);
            False when the caller has just checked them.

        Returns:
          {'scores', 'logits', 'class_ids', 'labels'} as numpy arrays
          (labels as Python strings).
        """
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(
                batch_size, numbers.Integral) or batch_size < 1:
            raise InputError(f"Invalid batch_size. Allowed: a positive "
                             f"integer. Received: batch_size={batch_size!r}")
        inputs = _paths_or_batch(inputs)
        if isinstance(inputs, list) and check_files:
            _check_files(inputs)
        if isinstance(inputs, (list, tuple)):
            fn = self._model.signatures["serve_bytes"]
            chunks = [fn(image_bytes=tf.constant(
                [_read_bytes(p) for p in inputs[i:i + batch_size]]))
                for i in range(0, len(inputs), batch_size)]
        else:
            # As training takes arrays (`from_arrays`): uint8 or numbers
            # in [0, 255], gray or RGBA too.
            images = images_as_rgb(np.asarray(inputs), "images")
            fn = self._model.signatures["serving_default"]
            chunks = [fn(images=tf.constant(images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)]
        if not chunks:
            raise InputError("Invalid inputs: empty. Allowed: at least one "
                             "image. Received: 0 images")
        out = {k: np.concatenate([c[k].numpy() for c in chunks])
               for k in chunks[0]}
        out["labels"] = [s.decode() for s in out["labels"]]
        return out


def load_exported(path):
    """Loads a tl_keras export for prediction.

    Raises:
      InputError: `path` (a leading `~` is the home folder) is not a
        tl_keras SavedModel export.
    """
    if isinstance(path, (str, os.PathLike)):
        path = os.path.expanduser(path)
    if not isinstance(path, (str, os.PathLike)) or not (
            os.path.isfile(os.path.join(path, "saved_model.pb"))
            and os.path.isfile(os.path.join(path, "manifest.json"))):
        raise InputError(
            f"Invalid export_dir: {path!r} is not a tl_keras export (no "
            f"saved_model.pb and manifest.json). Allowed: <workdir>/export "
            f"or a folder written by --mode=export. Received: export_dir="
            f"{path!r}")
    return ExportedClassifier(path)


def _read_manifest(path):
    """manifest.json of the export in `path`, with the fields loading
    reads; InputError naming the file for anything else (a torn or
    foreign manifest was a raw JSONDecodeError or KeyError)."""
    file = os.path.join(path, "manifest.json")
    manifest = io.read_json(file)
    names, inputs = manifest.get("class_names"), manifest.get("input")
    size = inputs.get("size") if isinstance(inputs, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not (
            isinstance(names, list) and names
            and all(isinstance(n, str) for n in names)) or not (
            isinstance(size, int) and size > 0):
        raise InputError(
            f"Invalid export_dir {path!r}: {file} is not a tl_keras export "
            f"manifest (format {MANIFEST_FORMAT!r}, class_names, input "
            f"size). Allowed: an export tl_keras wrote, unedited. Received: "
            f"{json.dumps(manifest)[:200]}")
    return manifest


def _check_names(model, names, path, size):
    """Refuses an export whose manifest's class names are not the ones
    its model gives (edited, or the manifest of another export): predict
    and evaluate named classes by the manifest, the SavedModel's own
    `labels` output by its own names, and they disagreed silently; fewer
    names than outputs was an IndexError. Exports from before tl_keras
    kept the names in the SavedModel are checked on their output count."""
    if hasattr(model, "class_names"):
        own = [n.decode() for n in model.class_names().numpy().tolist()]
    else:
        scores = model.signatures["serve_float"](
            images=tf.zeros([1, size, size, 3]))["scores"]
        own = names if scores.shape[-1] == len(names) else [
            f"{scores.shape[-1]} classes"]
    listed = own
    labels = os.path.join(path, "assets", "labels.txt")
    if os.path.isfile(labels):
        with open(labels, encoding="utf-8") as f:
            listed = f.read().splitlines()
    if own != names or listed != own:
        raise InputError(
            f"Invalid export_dir {path!r}: its manifest.json names the "
            f"classes {names[:10]}, assets/labels.txt {listed[:10]}, and "
            f"its model gives {own[:10]}; they must be the same (a "
            f"manifest or labels.txt edited or copied from another "
            f"export). Allowed: the export as written (export it again: "
            f"--mode=export). Received: export_dir={path!r}")


def _paths_or_batch(inputs):
    """`predict`'s inputs as a list of paths (`~` expanded, as
    `load_exported` does) or as one array (a list of same-sized arrays
    stacked); InputError for anything else."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if hasattr(inputs, "__array__") and not isinstance(inputs, np.ndarray):
        inputs = np.asarray(inputs)  # a tf.Tensor, a PIL image ...
    if not isinstance(inputs, (list, tuple, np.ndarray)):
        # A generator became a 0-d object array ("len() of unsized
        # object").
        raise InputError(
            f"Invalid inputs: a {type(inputs).__name__}. Allowed: a "
            f"path, a list or tuple of paths or of [height, width, 3] "
            f"arrays, or a [batch, height, width, 3] array (list(...) a "
            f"generator). Received: {type(inputs).__name__}")
    if isinstance(inputs, np.ndarray):
        return inputs
    if inputs and all(isinstance(x, np.ndarray) for x in inputs):
        return _stack(inputs)  # a list of images: one batch
    kinds = sorted({type(p).__name__ for p in inputs
                    if not isinstance(p, (str, os.PathLike))})
    if kinds:  # PIL images, bytes, tensors: not paths
        raise InputError(
            f"Invalid inputs: a list holding {', '.join(kinds)}. "
            f"Allowed: a list of file paths, a list of [height, "
            f"width, 3] uint8 arrays, or one [batch, height, width, "
            f"3] uint8 array. Received: {len(inputs)} item(s)")
    return [os.path.expanduser(p) for p in inputs]


def _stack(arrays):
    """A list of same-sized images as one batch."""
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise InputError(
            f"Invalid images: a list of arrays of {len(shapes)} shapes "
            f"({shapes[0]}, {shapes[1]} ...). Allowed: [height, width, 3] "
            f"uint8 arrays of one size (or a [batch, height, width, 3] "
            f"array). Received: {len(arrays)} arrays")
    return np.stack(arrays)


def _check_files(paths):
    """Refuses paths that are not files TensorFlow decodes as PIL does
    (`find_unreadable`: truncated, not an image, a palette BMP ...),
    naming them; --mode=predict gives each an error row instead."""
    folders = [str(p) for p in paths if os.path.isdir(p)]
    if folders:  # it said "do not exist"
        raise InputError(
            f"Invalid inputs: {len(folders)} of {len(paths)} path(s) are "
            f"folders: {', '.join(map(repr, folders[:5]))}"
            f"{' ...' if len(folders) > 5 else ''}. Allowed: image files "
            f"(a folder's images: list them, e.g. with glob; --mode=predict "
            f"--inputs=FOLDER searches folders). Received: {len(paths)} "
            f"path(s)")
    missing = [str(p) for p in paths if not os.path.isfile(p)]
    bad = missing or find_unreadable([str(p) for p in paths])
    if bad:
        shown = ", ".join(repr(p) for p in bad[:5])
        raise InputError(
            f"Invalid inputs: {len(bad)} of {len(paths)} file(s) "
            f"{'do not exist' if missing else 'are not readable images'}: "
            f"{shown}{' ...' if len(bad) > 5 else ''}. Allowed: "
            f"{READABLE_FORMATS} files. Received: {len(paths)} path(s)")


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"Invalid input {path!r}: {e.strerror}. Allowed: "
                         f"readable image files. Received: {path!r}") from None
