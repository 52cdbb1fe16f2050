"""The new head put on a base: pooling -> dropout -> Dense logits."""

import keras


def build_head(features, num_classes, dropout=0.2):
    """Applies the classification head to a rank-4 feature map.

    Logits are float32 even under a mixed-precision policy, so the softmax
    and the loss stay numerically sound.

    Args:
      features: a (batch, height, width, channels) Keras tensor.
      num_classes: number of output classes (>= 2).
      dropout: dropout rate before the Dense layer; 0 disables it.

    Returns:
      The logits tensor, (batch, num_classes), float32.
    """
    x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
