"""Loading a .keras file: KerasHub layers registered first, and every
file Keras cannot load an InputError naming the field it came from; and a
base's weights from a file (`load_weights_file`)."""

import logging
import os
import warnings
import zipfile

import keras
import numpy as np

from tl_keras.errors import InputError
from tl_keras.models import hub
from tl_keras.models.base_checks import check_weights_file_used
from tl_keras.models.layers import Backbone

log = logging.getLogger("tl_keras")

# Keras's ImageNet file for EfficientNet B0-B7 holds, in the input
# Normalization layer, the ImageNet mean and, as its variance, the
# standard deviations (tensorflow/tensorflow#49930); Keras divides by
# their square roots once more in a Rescaling layer that it adds for
# weights="imagenet" only.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_model_file(path, field="path", **kwargs):
    """keras.saving.load_model, with keras_hub imported first when the
    file holds KerasHub layers (a classifier on a hub backbone).

    Raises:
      InputError naming `field`: a missing file, a folder, a .keras file
        cut short, or a file Keras cannot load (another format, a custom
        layer that is not registered; legacy .h5 models and remote paths
        go to Keras as they are). Keras said "File not found"
        for a corrupt file and raised an UnboundLocalError for a folder.
    """
    problem = None
    if not isinstance(path, (str, os.PathLike)):
        problem = f"not a path ({type(path).__name__})"
    elif os.path.isdir(path):
        problem = ("a folder (a run's model is <workdir>/model.keras; an "
                   "export loads with tl_keras.load_exported)")
    elif "://" in str(path):  # gs://, s3://: Keras reads them itself
        pass
    elif not os.path.isfile(path):
        problem = "no such file"
    elif str(path).endswith(".keras") and not zipfile.is_zipfile(path):
        problem = "not a .keras archive (cut short, or another format)"
    if problem is None:
        hub.import_if_saved_with_hub(path)
        try:
            return keras.saving.load_model(path, **kwargs)
        except (ValueError, TypeError, KeyError, OSError,
                zipfile.BadZipFile) as e:
            problem = (f"Keras could not load it ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''})")
    raise InputError(
        f"Invalid {field}: {problem}. Allowed: a .keras file saved by Keras "
        f"3 (custom layers registered and imported). Received: "
        f"{field}={path!r}")


def load_weights_file(base, path, name, cut=None):
    """Loads a `.weights.h5` file, or the base (or whole model) of a
    `.keras` file, into `base`.

    Args:
      base: the base model (registry name, hub preset or .keras file).
      path: the --weights file.
      name: the backbone, for messages.
      cut: for a --feature_block, a function returning the base cut
        there: a `.keras` file with the cut base's weights (a run cut at
        that block) loads into it (the layers are `base`'s).

    Raises:
      InputError naming `weights`: a file that does not match (Keras only
        warns, "Skipping ...", where parts do not fit, and ignores a
        .weights.h5 file's entries no layer takes).
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*[Ss]kipping.*")
            if path.endswith(".keras"):
                model = load_model_file(path, "weights", compile=False)
                values = (find_base(model) or model).get_weights()
                target = base
                if cut is not None and len(values) != len(base.weights):
                    target = cut()
                set_weights(target, values)
            else:
                base.load_weights(path)
                check_weights_file_used(base, path, name)
    except InputError:  # a .keras file Keras cannot load, named
        raise
    except (ValueError, KeyError, OSError, UserWarning) as e:
        detail = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise InputError(
            f"Invalid weights: the file does not match backbone {name!r} "
            f"({detail}). Allowed: weights saved from the same architecture."
            f" Received: weights={path!r}") from None


def find_base(model):
    """The base inside a tl_keras classifier; None for another model."""
    for layer in model.layers:
        if isinstance(layer, Backbone):
            return layer.base
    return None


def set_weights(model, values):
    """`model.set_weights(values)`, then each Keras Normalization layer
    (EfficientNet B0-B7's input layer) made to use its new statistics: it
    divides by tensors copied from its variables when a file loads them,
    and set_weights assigns the variables alone (a model.keras of an
    ImageNet EfficientNet run went on normalising with mean 0, variance
    1)."""
    model.set_weights(values)
    for layer in model._flatten_layers():  # nested models too
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()


def fold_imagenet_scaling(base, name):
    """For EfficientNet B0-B7 built without Keras's download (weights from
    a file): where the loaded input Normalization holds Keras's ImageNet
    statistics, folds the missing Rescaling into its variance (the std
    squared), so the inputs are scaled as in ImageNet training. Without
    it they were divided by sqrt(std), about 0.48, instead of std,
    silently. A file whose statistics are anything else is left as is."""
    norm = next((layer for layer in base.layers
                 if isinstance(layer, keras.layers.Normalization)), None)
    if norm is None or norm.input_mean is not None:
        return
    mean = np.asarray(norm.adapt_mean)
    variance = np.asarray(norm.adapt_variance)
    if not (np.allclose(mean, _IMAGENET_MEAN, atol=1e-4)
            and np.allclose(variance, _IMAGENET_STD, atol=1e-4)):
        return
    norm.adapt_variance.assign(variance * np.asarray(_IMAGENET_STD))
    norm.finalize_state()
    log.info("%s: the weights hold Keras's ImageNet input statistics; its "
             "extra 1/sqrt(std) scaling for weights='imagenet' is folded "
             "into the Normalization layer's variance", name)
