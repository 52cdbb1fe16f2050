"""Loading a .keras file: KerasHub layers registered first, and every
file Keras cannot load an InputError naming the field it came from."""

import os
import zipfile

import keras

from tl_keras.errors import InputError
from tl_keras.models import hub


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
