"""KerasHub's ViT, DeiT, DINOv2 and Swin rebuilt with each encoder layer
(Swin: stage) a graph node (`rebuilt`), from layers that load on their
own (imports keras_hub).

KerasHub 0.32 saves a ViT (or DeiT) as one backbone and rebuilds it from
the backbone's arguments, so some of its layers never had to load from
their own configs, and cannot: `ViTPatchingAndEmbedding.get_config` and
`DeiTEmbeddings.get_config` add `num_patches` and `num_positions`, the
encoder blocks' add `key_dim`, and no constructor accepts them
("Unrecognized keyword arguments"). All follow from the other arguments
(the grid from image and patch size; hidden_dim // num_heads). tl_keras
puts these layers in its own graph (`rebuilt`), so a saved classifier
needs them to load: these subclasses drop the derived keys (Swin's: see
`_ClassArgumentAsFlag`) and are otherwise KerasHub's classes, except
where said.
"""

import keras
from keras import ops
from keras_hub.src.models.deit.deit_layers import (
    DeiTEmbeddings,
    DeiTEncoderBlock,
)
from keras_hub.src.models.dinov2.dinov2_layers import DINOV2Embedding
from keras_hub.src.models.swin_transformer.swin_transformer_layers import (
    PatchEmbedding,
    PatchMerging,
    SwinTransformerStage,
)
from keras_hub.src.models.vit.vit_layers import (
    ViTEncoderBlock,
    ViTPatchingAndEmbedding,
)

from tl_keras.models.layers import TokenPooling


class _DropsDerivedKeys:
    """Loads from a config that holds keys the constructor derives."""

    DERIVED = ()

    @classmethod
    def from_config(cls, config):
        config = {k: v for k, v in config.items() if k not in cls.DERIVED}
        return super().from_config(config)


@keras.saving.register_keras_serializable("tl_keras")
class HubViTPatchingAndEmbedding(_DropsDerivedKeys, ViTPatchingAndEmbedding):
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

    DERIVED = ("num_patches", "num_positions")


@keras.saving.register_keras_serializable("tl_keras")
class HubViTEncoderBlock(_DropsDerivedKeys, ViTEncoderBlock):
    """ViTEncoderBlock that loads from its own config."""

    DERIVED = ("key_dim",)


@keras.saving.register_keras_serializable("tl_keras")
class HubDeiTEmbeddings(_DropsDerivedKeys, DeiTEmbeddings):
    """DeiTEmbeddings that loads from its own config."""

    DERIVED = ("num_patches", "num_positions")


@keras.saving.register_keras_serializable("tl_keras")
class HubDeiTEncoderBlock(_DropsDerivedKeys, DeiTEncoderBlock):
    """DeiTEncoderBlock that loads from its own config and gives its
    output alone (KerasHub's also returns attention scores, None unless
    asked for, which a graph node cannot output)."""

    DERIVED = ("key_dim",)

    def call(self, hidden_states):
        return super().call(hidden_states)[0]


@keras.saving.register_keras_serializable("tl_keras")
class HubDINOV2Embedding(DINOV2Embedding):
    """DINOV2Embedding whose trained position embeddings survive saving.

    KerasHub trains `interpolated_position_embeddings` (the table for the
    input size) and saves `position_embeddings` (the pretraining size's),
    writing the trained table back into it only when the *signed sum* of
    the change exceeds epsilon, and re-interpolating on every load. So a
    fine-tuned DINOv2 saved with `model.save` or `save_weights` reloaded
    with its pretrained position embeddings about half the time
    (whichever sign training's change summed to; a trained test
    classifier reloaded with predictions up to 0.44 apart), and resuming
    from an epoch backup restored other weights than were trained.
    Re-interpolating also loses detail when the sizes differ. This layer
    saves and loads every variable as it is, like any Keras layer.

    Its mask token (masked-image pretraining only; never used without
    masks) is not trainable, so fine-tuning gives no "no gradient"
    warning for it.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._freeze_mask_token()

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # Unfreezing a layer sets each of its variables trainable again.
        keras.layers.Layer.trainable.fset(self, value)
        self._freeze_mask_token()

    def _freeze_mask_token(self):
        if getattr(self, "mask_token", None) is not None:
            self.mask_token.trainable = False

    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)


class _ClassArgumentAsFlag:
    """Saves a constructor argument that holds a layer class (or None) as
    a flag. KerasHub 0.32's Swin layers serialise the class itself, which
    fails ("LayerNormalization.get_config() missing 1 required positional
    argument: 'self'"). `config_of` also reads an instance of the KerasHub
    class (`loadable` copies one through it). Builds its sublayers from
    the input shape, which loading needs (KerasHub's build them on the
    first call)."""

    ARGUMENT, ATTRIBUTE, CLASS, BASE = "", "", None, None

    def get_config(self):
        return self.config_of(self)

    def build(self, input_shape):
        self.call(keras.KerasTensor(input_shape, dtype=self.compute_dtype))

    @classmethod
    def config_of(cls, layer):
        held = getattr(layer, cls.ATTRIBUTE)
        setattr(layer, cls.ATTRIBUTE, None)
        try:
            config = cls.BASE.get_config(layer)
        finally:
            setattr(layer, cls.ATTRIBUTE, held)
        return {**config, cls.ARGUMENT: held is not None}

    @classmethod
    def from_config(cls, config):
        config = {**config,
                  cls.ARGUMENT: cls.CLASS if config[cls.ARGUMENT] else None}
        return keras.layers.Layer.from_config.__func__(cls, config)


@keras.saving.register_keras_serializable("tl_keras")
class HubSwinPatchEmbedding(_ClassArgumentAsFlag, PatchEmbedding):
    """Swin's PatchEmbedding, its LayerNormalization saved as a flag."""

    ARGUMENT = ATTRIBUTE = "norm_layer"
    CLASS, BASE = keras.layers.LayerNormalization, PatchEmbedding


@keras.saving.register_keras_serializable("tl_keras")
class HubSwinTransformerStage(_ClassArgumentAsFlag, SwinTransformerStage):
    """A Swin stage, its PatchMerging saved as a flag."""

    ARGUMENT, ATTRIBUTE = "downsample", "_downsample_cls"
    CLASS, BASE = PatchMerging, SwinTransformerStage


def loadable(layer):
    """A copy of a KerasHub transformer layer as its loadable subclass
    (same config; its weights are copied once it is built,
    `copy_weights`); any other layer as it is."""
    cls = {ViTPatchingAndEmbedding: HubViTPatchingAndEmbedding,
           ViTEncoderBlock: HubViTEncoderBlock,
           DeiTEmbeddings: HubDeiTEmbeddings,
           DeiTEncoderBlock: HubDeiTEncoderBlock,
           DINOV2Embedding: HubDINOV2Embedding,
           PatchEmbedding: HubSwinPatchEmbedding,
           SwinTransformerStage: HubSwinTransformerStage}.get(type(layer))
    if cls is None:
        return layer
    config_of = getattr(cls, "config_of", type(layer).get_config)
    return cls.from_config(config_of(layer))


def copy_weights(pairs):
    """Sets each (copy, original) pair's weights to the original's."""
    for copy, original in pairs:
        if copy is not original:
            copy.set_weights(original.get_weights())


def _encoder_sequence(backbone):
    """(its layers in call order, token pooling) for a transformer
    tl_keras rebuilds, following each encoder's `call` in KerasHub 0.32
    (ViT: embedding, dropout, encoder layers, LayerNorm; DeiT and DINOv2:
    embedding, encoder layers, LayerNorm; Swin's graph is already that
    chain, its stages the encoder layers); None for any other backbone.
    Pooling by the class token, which their pretraining classifies from
    (DeiT's classifier takes token 0, DINOv2's linear probes the class
    token), else the mean (Swin, a ViT without one)."""
    kind = type(backbone).__name__
    if kind == "ViTBackbone":
        encoder = backbone.get_layer("vit_encoder")
        embedding = backbone.get_layer("vit_patching_and_embedding")
        return ([embedding, encoder.dropout, *encoder.encoder_layers,
                 encoder.layer_norm],
                "class_token" if embedding.use_class_token else "mean")
    if kind == "DeiTBackbone":
        encoder = backbone.get_layer("deit_encoder")
        return ([backbone.get_layer("deit_patching_and_embedding"),
                 *encoder.encoder_layers, encoder.layer_norm],
                "class_token")
    if kind == "DINOV2Backbone":
        return ([backbone.embeddings, *backbone.encoder.layers,
                 backbone.layernorm], "class_token")
    if kind == "SwinTransformerBackbone":  # no class token
        return ([layer for layer in backbone.layers
                 if not isinstance(layer, keras.layers.InputLayer)], "mean")
    return None


def rebuilt(backbone):
    """A ViT, DeiT, DINOv2 or Swin `backbone` with each encoder layer a
    node of the graph (the same weights, in loadable copies of its layers),
    pooled to a (batch, 1, 1, hidden) map; None for any other backbone."""
    sequence = _encoder_sequence(backbone)
    if not sequence:
        return None
    originals, pooling = sequence
    copies = [loadable(layer) for layer in originals]
    images = keras.Input(originals[0].input.shape[1:], name="images")
    x = images
    for layer in copies:
        x = layer(x)
    copy_weights(zip(copies, originals, strict=True))
    x = TokenPooling(pooling, name="token_pool")(x)
    return keras.Model(images, x, name=backbone.name)
