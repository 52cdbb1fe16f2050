"""KerasHub's ViT layers, loadable on their own (imports keras_hub).

KerasHub 0.32 saves a ViT as one `ViTBackbone` and rebuilds it from the
backbone's arguments, so two of its layers never had to load from their
own configs, and cannot: `ViTPatchingAndEmbedding.get_config` adds
`num_patches` and `num_positions`, `ViTEncoderBlock.get_config` adds
`key_dim`, and neither constructor accepts them ("Unrecognized keyword
arguments"). All three follow from the other arguments (the grid from
image and patch size; hidden_dim // num_heads). tl_keras puts these
layers in its own graph (`hub.load_preset`), so a saved classifier needs
them to load: these subclasses drop the derived keys and are otherwise
KerasHub's classes.
"""

import keras
from keras_hub.src.models.vit.vit_layers import (
    ViTEncoderBlock,
    ViTPatchingAndEmbedding,
)


@keras.saving.register_keras_serializable("tl_keras")
class HubViTPatchingAndEmbedding(ViTPatchingAndEmbedding):
    """ViTPatchingAndEmbedding that loads from its own config."""

    @classmethod
    def from_config(cls, config):
        config = {k: v for k, v in config.items()
                  if k not in ("num_patches", "num_positions")}
        return super().from_config(config)


@keras.saving.register_keras_serializable("tl_keras")
class HubViTEncoderBlock(ViTEncoderBlock):
    """ViTEncoderBlock that loads from its own config."""

    @classmethod
    def from_config(cls, config):
        config = {k: v for k, v in config.items() if k != "key_dim"}
        return super().from_config(config)


def loadable(layer):
    """A copy of a KerasHub ViT layer as its loadable subclass (same
    config; its weights are copied once it is built, `copy_weights`)."""
    cls = {ViTPatchingAndEmbedding: HubViTPatchingAndEmbedding,
           ViTEncoderBlock: HubViTEncoderBlock}.get(type(layer))
    return cls.from_config(layer.get_config()) if cls else layer


def copy_weights(pairs):
    """Sets each (copy, original) pair's weights to the original's."""
    for copy, original in pairs:
        if copy is not original:
            copy.set_weights(original.get_weights())
