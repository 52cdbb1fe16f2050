"""Backbone registry: names, contracts, blocks, weights files, and a user's
own saved model as the base. All offline (weights=None or local files)."""

import json

import keras
import numpy as np
import pytest

import tl_keras
from tl_keras import models

COMPACT_BLOCKS = ["block1", "block2", "block3", "block4"]
REQUIRED = [
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *[f"efficientnet_b{i}" for i in range(8)],
    "efficientnet_v2_b0", "efficientnet_v2_b1", "efficientnet_v2_b2",
    "efficientnet_v2_b3", "efficientnet_v2_s", "resnet50", "resnet50_v2",
    "resnet101_v2", "convnext_tiny", "densenet121", "xception",
    "inception_v3", "vgg16", "vgg19",
]


def test_registry_has_required_families():
    assert set(REQUIRED) <= set(tl_keras.list_backbones())


@pytest.mark.parametrize("alias, name", [
    ("EfficientNetV2B0", "efficientnet_v2_b0"),
    ("MobileNetV3Large", "mobilenet_v3_large"),
    ("ResNet50V2", "resnet50_v2"),
    ("convnext-tiny", "convnext_tiny"),
])
def test_keras_application_names_resolve(alias, name):
    assert tl_keras.get_backbone_spec(alias).name == name


def test_unknown_backbone_lists_known_names():
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.get_backbone_spec("resnet5")
    message = str(e.value)
    assert "Unknown backbone 'resnet5'" in message
    assert "resnet50, resnet50_v2" in message
    assert "Received: backbone='resnet5'" in message
    assert "Did you mean resnet50" in message  # the closest names first


def test_unknown_backbone_far_from_any_name_gets_no_guess():
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.get_backbone_spec("qqqqqq")
    assert "Did you mean" not in str(e.value)


# One registered name per keras.applications module. Random weights can
# never show a family wired to the wrong normalisation; this can: tl_keras's
# ImageNormalization(spec.preprocessing) must compute what the module's own
# preprocess_input computes on the same images.
MODULES = sorted({(spec.module, spec.name) for spec in (
    tl_keras.get_backbone_spec(n) for n in tl_keras.list_backbones())
    if spec.module}, key=lambda pair: pair[0])
# Families whose preprocess_input passes images through normalise inside
# the base: building it must put that normalisation there.
INSIDE = {"efficientnet", "efficientnet_v2", "mobilenet_v3", "convnext"}


def test_every_application_family_names_its_module():
    modules = {m for m, _ in MODULES}
    assert len(modules) == 12, modules
    for module in modules:
        assert hasattr(getattr(keras.applications, module),
                       "preprocess_input"), module


@pytest.mark.parametrize("module, name", MODULES,
                         ids=[m for m, _ in MODULES])
def test_preprocessing_equals_the_familys_own(module, name):
    spec = tl_keras.get_backbone_spec(name)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    ours = np.asarray(models.ImageNormalization(spec.preprocessing)(images))
    theirs = np.asarray(getattr(keras.applications, module)
                        .preprocess_input(images.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    assert (spec.preprocessing == "none") == (module in INSIDE)


# Each family at a small input with weights=None: a real keras.applications
# build, checked for the contract and the block grouping fine-tuning uses.
FAMILIES = [
    ("mobilenet_v2", 32, "tf", "block_16"),
    ("mobilenet_v3_small", 32, "none", "expanded_conv_10"),
    ("efficientnet_b0", 32, "none", "block7a"),
    ("efficientnet_v2_b0", 32, "none", "block6h"),
    ("resnet50", 32, "caffe", "conv5_block3"),
    ("resnet50_v2", 32, "tf", "conv5_block3"),
    ("densenet121", 32, "torch", "conv5_block16"),
    ("convnext_tiny", 32, "none", "stage_3_block_2"),
    ("xception", 71, "tf", "block14"),
    ("inception_v3", 75, "tf", "mixed10"),
]


@pytest.mark.parametrize("name, size, mode, last_block", FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_family_builds_with_contract_and_blocks(name, size, mode,
                                                last_block):
    built = tl_keras.build_backbone(name, "none", size)
    assert built.preprocessing == mode
    assert built.base.output.shape[-1] > 0
    assert len(built.base.output.shape) == 4
    blocks = built.blocks()
    names = [b for b, _ in blocks]
    assert len(blocks) >= 8, names
    assert last_block in names, names[-4:]
    # Every layer is in exactly one block, in order.
    flat = [layer for _, layers in blocks for layer in layers]
    expected = [layer for layer in built.base.layers
                if not isinstance(layer, keras.layers.InputLayer)]
    assert flat == expected
    if mode == "none":  # the base normalises inside, near its input
        first = [type(layer).__name__ for layer in built.base.layers[:6]]
        assert {"Rescaling", "Normalization"} & set(first), first


def test_vgg16_blocks_and_contract():
    built = tl_keras.build_backbone("vgg16", "none", 32)
    assert built.preprocessing == "caffe"
    blocks = built.blocks()
    assert [b for b, _ in blocks] == [f"block{i}" for i in range(1, 6)]
    assert [layer.name for layer in blocks[3][1]] == [
        "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool"]


def test_feature_block_cuts_the_base_and_lists_blocks_on_a_miss():
    built = tl_keras.build_backbone("compact_cnn", "none", 32,
                                    feature_block="block2")
    assert built.base.output.shape == (None, 8, 8, 32)
    assert [b for b, _ in built.blocks()] == COMPACT_BLOCKS[:2]
    assert "cut after block2" in built.source
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone("compact_cnn", "none", 32,
                                feature_block="block9")
    assert "block1, block2, block3, block4" in str(e.value)
    assert "Received: feature_block='block9'" in str(e.value)


def test_feature_block_keeps_convnexts_skip_connection():
    # A ConvNeXt block ends in `x + residual` (an operation, not a layer):
    # the cut must give what the next block receives, skip included.
    built = tl_keras.build_backbone("convnext_tiny", "none", 32)
    cut = models.cut_at_block(built, "stage_1_block_0")
    names = [b for b, _ in built.blocks()]
    following = dict(built.blocks())[names[names.index(
        "stage_1_block_0") + 1]][0]
    last = dict(built.blocks())["stage_1_block_0"][-1]
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3))
    received = keras.Model(built.base.input, following.input)(x)
    branch = keras.Model(built.base.input, last.output)(x)
    np.testing.assert_allclose(cut.base(x), received, atol=1e-5)
    assert not np.allclose(cut.base(x), branch, atol=1e-3)


def test_image_size_below_minimum_is_rejected():
    with pytest.raises(tl_keras.InputError, match="image_size.*>= 75"):
        tl_keras.build_backbone("inception_v3", "none", 64)


def test_compact_cnn_shape_params_and_blocks():
    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    assert built.base.output.shape == (None, 2, 2, 128)
    assert built.base.count_params() == 294_960
    assert [b for b, _ in built.blocks()] == COMPACT_BLOCKS
    with pytest.raises(tl_keras.InputError, match="no ImageNet weights"):
        tl_keras.build_backbone("compact_cnn", "imagenet", 32)


def test_weights_file_loads_and_mismatch_is_clear(tmp_path):
    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    path = str(tmp_path / "base.weights.h5")
    built.base.save_weights(path)
    again = tl_keras.build_backbone("compact_cnn", path, 32)
    for a, b in zip(built.base.weights, again.base.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = tl_keras.build_backbone("mobilenet_v2", "none", 32)
    bad = str(tmp_path / "mobilenet.weights.h5")
    other.base.save_weights(bad)
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone("compact_cnn", bad, 32)
    assert "does not match backbone 'compact_cnn'" in str(e.value)
    assert "Received: weights=" in str(e.value)


def test_classifier_file_serves_as_weights_and_as_backbone(tmp_path):
    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    model = models.build_classifier(built, 4)
    path = str(tmp_path / "model.keras")
    model.save(path)
    # As --weights: the base's weights come from the saved classifier.
    loaded = tl_keras.build_backbone("compact_cnn", path, 32)
    np.testing.assert_array_equal(loaded.base.weights[0].numpy(),
                                  built.base.weights[0].numpy())
    # As --backbone: base, preprocessing, size and block names come along.
    reused = tl_keras.build_backbone(path)
    assert reused.preprocessing == "unit"
    assert reused.image_size == 32
    assert [b for b, _ in reused.blocks()] == COMPACT_BLOCKS


def test_user_model_is_cut_at_spatial_features(tmp_path, caplog):
    inputs = keras.Input((40, 40, 3))
    x = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, name="c2")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    path = str(tmp_path / "user.keras")
    keras.Model(inputs, outputs).save(path)
    built = tl_keras.build_backbone(path)
    # Its input range is unknown: the log says what it is fed.
    assert "gets the pixels as they are, in [0, 255]" in caplog.text
    assert built.base.output.shape == (None, 18, 18, 16)
    assert built.image_size == 40
    assert [b for b, _ in built.blocks()] == ["c1", "c2"]
    with pytest.raises(tl_keras.InputError, match="takes 40 px"):
        tl_keras.build_backbone(path, image_size=64)


def test_missing_backbone_file_is_clear():
    with pytest.raises(tl_keras.InputError, match="no such file"):
        tl_keras.build_backbone("nowhere/model.keras")


def test_a_keras_file_keras_cannot_load_is_named(tmp_path):
    # Keras said "File not found" for a cut-short file, an UnboundLocalError
    # for a folder, and a TypeError for an unregistered custom layer.
    cut = tmp_path / "cut.keras"
    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    models.build_classifier(built, 2).save(str(tmp_path / "whole.keras"))
    cut.write_bytes((tmp_path / "whole.keras").read_bytes()[:500])

    class Unregistered(keras.layers.Layer):
        def call(self, x):
            return x

    custom = str(tmp_path / "custom.keras")
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                      Unregistered()]).save(custom)
    cases = [(str(cut), "not a .keras archive"),
             (str(tmp_path), "a folder .*load_exported"),
             (custom, "Keras could not load it \\(TypeError")]
    for path, problem in cases:
        with pytest.raises(tl_keras.InputError,
                           match=f"Invalid path: {problem}"):
            tl_keras.load_model(path)
        if path != str(tmp_path):  # as a base, and as its weights
            with pytest.raises(tl_keras.InputError,
                               match=f"Invalid backbone: {problem}"):
                tl_keras.build_backbone(path)
            with pytest.raises(tl_keras.InputError,
                               match=f"Invalid weights: {problem}"):
                tl_keras.build_backbone("compact_cnn", path, 32)


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch"])
def test_normalization_matches_keras_applications(mode):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = models.ImageNormalization(mode)(x)
    theirs = keras.applications.imagenet_utils.preprocess_input(
        x.copy(), mode=mode)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_classifier_round_trips_through_keras_file(tmp_path):
    built = tl_keras.build_backbone("mobilenet_v2", "none", 32)
    model = models.build_classifier(built, 3)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3))
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               again.predict(x, verbose=0), atol=1e-6)
    assert isinstance(again.get_layer("backbone"), tl_keras.Backbone)


def test_imagenet_download_failure_is_clear(monkeypatch):
    """The real weights='imagenet' path runs up to the download, which is
    replaced here by the failure Keras raises offline (no network here)."""
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com"
                        "/x.h5: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone("mobilenet_v2", "imagenet", 96)
    assert "Could not download ImageNet weights for mobilenet_v2" in str(
        e.value)
    assert "--weights=none" in str(e.value)


def test_the_log_says_where_a_bases_weights_come_from(tmp_path, caplog):
    # A .keras base keeps its own weights; weights=none does not change
    # that (said, not silently dropped); a weights file is named.
    import logging

    from tl_keras.training.trainer import _build_backbone

    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    path = str(tmp_path / "base.keras")
    models.build_classifier(built, 2).save(path)
    weights = str(tmp_path / "w.weights.h5")
    built.base.save_weights(weights)
    caplog.set_level(logging.INFO, logger="tl_keras")
    expected = {
        ("imagenet", "transfer"): "(its own weights)",
        ("none", "transfer"): "(its own weights; weights=none applies to "
                              "registered bases: --approach=scratch",
        (weights, "transfer"): f"(its architecture, weights from {weights}",
        ("none", "scratch"): "from random init (its weights are not used)",
    }
    for (given, approach), text in expected.items():
        caplog.clear()
        _build_backbone(tl_keras.Config(backbone=path, weights=given,
                                        approach=approach))
        assert text in caplog.text, (given, approach, caplog.text)


def test_build_backbone_checks_its_arguments(tmp_path):
    # From Python, as Config checks its fields: weights=None was an
    # AttributeError, image_size='32' a TypeError, 'ImageNet' said "the
    # file does not match", a pathlib.Path name an AttributeError.
    import pathlib

    assert tl_keras.build_backbone("compact_cnn", None, 32).base  # random
    for args, field in ((("compact_cnn", "ImageNet", 32), "weights"),
                        (("compact_cnn", "imagenet", "32"), "image_size"),
                        ((None, "none", 32), "backbone"),
                        (("compact_cnn", "none", 32.5), "image_size")):
        with pytest.raises(tl_keras.InputError, match=f"Invalid {field}"):
            tl_keras.build_backbone(*args)
    path = tmp_path / "base.keras"
    tl_keras.build_classifier(tl_keras.build_backbone(
        "compact_cnn", "none", 32), 2).save(str(path))
    assert tl_keras.build_backbone(pathlib.Path(path), image_size=32).base
    # A numpy size (read from an array or a sweep) is kept as a plain int,
    # as Config keeps it: the built base's size goes into JSON records.
    size = tl_keras.build_backbone("compact_cnn", "none",
                                   np.int64(32)).image_size
    assert type(size) is int and json.dumps(size) == "32"


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _input_normalization(base, images):
    norm = next(layer for layer in base.layers
                if isinstance(layer, keras.layers.Normalization))
    return np.asarray(keras.Model(base.input, norm.output)(images))


@pytest.mark.slow
def test_efficientnet_weights_file_of_imagenet_scales_inputs_as_imagenet(
        tmp_path):
    # Keras's ImageNet EfficientNet file cannot be downloaded here; a base
    # holding its input statistics (the ImageNet mean, and the stds as
    # the variance: tensorflow/tensorflow#49930) stands in for it, as a
    # .weights.h5 file and as a .keras file (a run's model.keras loads
    # through set_weights, which left Keras's Normalization on mean 0,
    # variance 1). Keras scales such a base by 1/std for weights=
    # 'imagenet'; built from a file it divided by sqrt(std).
    source = models.build_backbone("efficientnet_b0", "none", 32).base
    norm = next(layer for layer in source.layers
                if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign(IMAGENET_MEAN)
    norm.adapt_variance.assign(IMAGENET_STD)
    source.save_weights(str(tmp_path / "b0.weights.h5"))
    source.save(str(tmp_path / "b0.keras"))
    images = np.random.default_rng(0).integers(
        0, 256, (2, 32, 32, 3)).astype("float32")
    imagenet = (images / 255 - np.asarray(IMAGENET_MEAN)) / np.asarray(
        IMAGENET_STD)
    for name in ("b0.weights.h5", "b0.keras"):
        base = models.build_backbone(
            "efficientnet_b0", str(tmp_path / name), 32).base
        np.testing.assert_allclose(_input_normalization(base, images),
                                   imagenet, rtol=1e-4, atol=1e-4)
    # Other statistics (a file of weights=none) are taken as they are.
    norm.adapt_mean.assign([0.5, 0.5, 0.5])
    norm.adapt_variance.assign([0.25, 0.25, 0.25])
    source.save(str(tmp_path / "other.keras"))
    base = models.build_backbone("efficientnet_b0",
                                 str(tmp_path / "other.keras"), 32).base
    np.testing.assert_allclose(_input_normalization(base, images),
                               (images / 255 - 0.5) / 0.5, rtol=1e-4,
                               atol=1e-4)


def _spec(**changes):
    fields = dict(name="my_net", application="", default_size=32,
                  min_size=16, preprocessing="unit",
                  block_pattern=r"^(block\d+)_")
    return tl_keras.BackboneSpec(**{**fields, **changes})


@pytest.mark.parametrize("changes, field", [
    (dict(name="resnet50"), "spec.name"),  # a built-in, replaced silently
    (dict(name="ResNet-50"), "spec.name"),  # the same name, spelt apart
    (dict(name="hub:my_net"), "spec.name"),
    (dict(application="ResNet51"), "spec.application"),
    (dict(preprocessing="imagenet"), "spec.preprocessing"),
    (dict(block_rule="prefix"), "spec.block_rule"),
    (dict(block_pattern=r"^block\d+_"), "spec.block_pattern"),  # no group
    (dict(block_pattern=r"^(block\d+_"), "spec.block_pattern"),
    (dict(min_size=64), "spec.min_size and spec.default_size"),
    (dict(min_size=True), "spec.min_size and spec.default_size"),  # 1
    # A misspelt argument was a TypeError from inside Keras when the base
    # was built; the compact CNN's were ignored without a word.
    (dict(application="MobileNetV2", builder_kwargs=(("alpah", 0.5),)),
     "spec.builder_kwargs"),
    (dict(application="MobileNetV2",
          builder_kwargs=(("input_shape", (64, 64, 3)),)),
     "spec.builder_kwargs"),  # set by tl_keras: "multiple values"
    (dict(application="MobileNetV2", builder_kwargs=("alpha", 0.5)),
     "spec.builder_kwargs"),  # not pairs
    (dict(builder_kwargs=(("widths", (8, 16)),)), "spec.builder_kwargs"),
])
def test_register_backbone_checks_the_spec_when_registered(changes, field):
    # It took anything: a duplicate replaced a built-in for the whole
    # process, and a bad pattern or preprocessing failed inside a run,
    # after its workdir had been written.
    before = tl_keras.get_backbone_spec("resnet50")
    with pytest.raises(tl_keras.InputError,
                       match=f"Invalid {field}\\. Allowed: .*Received: "):
        tl_keras.register_backbone(_spec(**changes))
    assert tl_keras.get_backbone_spec("resnet50") is before
    assert "my_net" not in tl_keras.list_backbones()


def test_register_backbone_adds_and_replaces_only_when_asked():
    from tl_keras.models import registry
    try:
        spec = tl_keras.register_backbone(_spec())
        assert tl_keras.get_backbone_spec("my-net") is spec
        tl_keras.register_backbone(_spec())  # the same spec again: kept
        with pytest.raises(tl_keras.InputError, match="replace=True"):
            tl_keras.register_backbone(_spec(default_size=64))
        wider = tl_keras.register_backbone(_spec(default_size=64),
                                           replace=True)
        assert tl_keras.get_backbone_spec("my_net") is wider
        thin = tl_keras.register_backbone(_spec(
            application="MobileNetV2", builder_kwargs=(("alpha", 0.35),),
            block_pattern=r"^(block_\d+)_"), replace=True)
        assert models.build_backbone("my_net", "none", 32).base.get_layer(
            "Conv1").filters == 16  # alpha=0.35: 32 * 0.35, rounded to 8s
        assert tl_keras.get_backbone_spec("my_net") is thin
    finally:
        registry._REGISTRY.pop("mynet", None)


@pytest.mark.parametrize("replace", ["no", "False", 0, 1, None])
def test_register_backbone_takes_only_a_bool_replace(replace):
    # replace="no" was true: a spec named like a built-in replaced it for
    # the whole process (compact_cnn with another min_size, silently).
    before = tl_keras.get_backbone_spec("resnet50")
    with pytest.raises(tl_keras.InputError, match=(
            r"Invalid replace\. Allowed: True or False\. Received: "
            r"replace=")):
        tl_keras.register_backbone(_spec(name="resnet50", default_size=64),
                                   replace=replace)
    assert tl_keras.get_backbone_spec("resnet50") is before


def test_build_backbone_refuses_a_block_pattern_that_names_no_layer():
    # The base was one block, 'all': --unfreeze=1 fine-tuned all of it.
    from tl_keras.models import registry
    try:
        tl_keras.register_backbone(_spec(block_pattern=r"^(conv\d)_"))
        with pytest.raises(tl_keras.InputError, match=(
                r"Invalid spec\.block_pattern\. Allowed: .* which are "
                r"block1_conv1, .*Received: spec\.block_pattern=")):
            models.build_backbone("my_net", "none", 32)
        tl_keras.register_backbone(_spec(
            block_pattern=r"_(conv\d)", block_rule="search"), replace=True)
        assert len(models.build_backbone("my_net", "none", 32).blocks()) > 1
    finally:
        registry._REGISTRY.pop("mynet", None)


def test_build_backbone_names_image_size_keras_cannot_build():
    # A spec's min_size below what its architecture takes let the size
    # through to Keras: a MaxPooling2D ValueError from inside the build.
    from tl_keras.models import registry
    try:
        tl_keras.register_backbone(_spec(min_size=2, default_size=8))
        with pytest.raises(tl_keras.InputError, match=(
                r"Invalid image_size, builder_kwargs or weights for my_net: "
                r"Keras cannot build the architecture at 4 px with "
                r"weights=None \(.*zero or negative.*\)\. Allowed: "
                r".*min_size, 2, .*Received: image_size=4$")):
            models.build_backbone("my_net", "none", 4)
    finally:
        registry._REGISTRY.pop("mynet", None)
