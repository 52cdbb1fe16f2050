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
KerasHub's classes, except where said.
"""

import keras
from keras import ops
from keras_hub.src.models.vit.vit_layers import (
    ViTEncoderBlock,
    ViTPatchingAndEmbedding,
)


@keras.saving.register_keras_serializable("tl_keras")
class HubViTPatchingAndEmbedding(ViTPatchingAndEmbedding):
    """ViTPatchingAndEmbedding that loads from its own config, and whose
    position embeddings train the same on one device and on several.

    KerasHub looks the position embeddings up by `position_ids`, which
    are always 0 .. num_positions - 1, so the lookup is the whole table.
    Its gradient is then sparse (IndexedSlices); under MirroredStrategy
    the replicas' slices are concatenated, each position twice, and Keras
    3.15's Adam squares the slices one by one (`ops.square` of
    IndexedSlices), so its second moment held g1^2 + g2^2 where one device
    has (g1 + g2)^2: the position embeddings moved by up to 2.4 x the
    learning rate more or less than on one device (tests/
    test_distribute.py, hub_vit). Reading the table itself gives the same
    values and a dense gradient.
    """

    def call(self, inputs):
        patches = self.patch_embedding(inputs)
        if self.data_format == "channels_first":
            patches = ops.transpose(patches, axes=(0, 2, 3, 1))
        shape = ops.shape(patches)
        patches = ops.reshape(patches, [shape[0], -1, shape[-1]])
        if self.use_class_token:
            patches = ops.concatenate(
                [ops.tile(self.class_token, (shape[0], 1, 1)), patches],
                axis=1)
        table = ops.convert_to_tensor(self.position_embedding.embeddings)
        return ops.add(patches, ops.cast(table, patches.dtype)[None])

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
