"""KerasHub backbones (`--backbone=hub:PRESET`), offline.

Named presets download from Kaggle, which these machines cannot reach, so
every backbone here is built from an explicit config with random weights
and saved as a local preset (`save_to_preset`: config.json, the weights,
image_converter.json), which is the same loading path a downloaded preset
takes once it is on disk. The download itself is tested as the failure it
is here.
"""

import importlib
import json
import os
import signal

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    class_image,
    run_cli,
    run_fault_task,
    small_hub_preset,
    tflite_scores,
)

import tl_keras
from tl_keras import data as data_lib
from tl_keras.errors import InputError
from tl_keras.export import convert_to_tflite
from tl_keras.models import (
    build_backbone,
    build_classifier,
    configure_stage,
    recipe,
)

SIZE = 32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _vit(class_token=True):
    return keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=3,
        num_heads=2, hidden_dim=16, mlp_dim=32, use_class_token=class_token)


def _deit():
    return keras_hub.models.DeiTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2,
        num_heads=2, hidden_dim=16, intermediate_dim=32)


def _swin():
    return keras_hub.models.SwinTransformerBackbone(
        image_shape=(SIZE, SIZE, 3), embed_dim=8, depths=(1, 1),
        num_heads=(1, 2), window_size=4, patch_size=4)


def _resnet():
    # The smallest ResNet KerasHub builds (its first stage needs 64).
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """Local presets: a ViT with a class token ([-1, 1] converter), one
    without (mean pooling), a DeiT and a DINOv2 (class token), a Swin
    (mean), and a ResNet with ImageNet mean / std."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(0)
    made = {}
    vit_converter = keras_hub.layers.ViTImageConverter(
        image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1)
    resnet_converter = keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE), scale=list(1 / (255 * IMAGENET_STD)),
        offset=list(-IMAGENET_MEAN / IMAGENET_STD))
    for name, backbone, converter in (
            ("vit", _vit(), vit_converter),
            ("vit_mean", _vit(class_token=False), vit_converter),
            ("deit", _deit(), vit_converter),
            ("swin", _swin(), vit_converter),
            ("resnet", _resnet(), resnet_converter)):
        folder = str(root / name)
        backbone.save_to_preset(folder)
        converter.save_to_preset(folder)
        made[name] = folder
    made["dinov2"] = str(root / "dinov2")
    small_hub_preset(made["dinov2"], "DINOV2")
    return made


def images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(class_image(i % 3, rng, SIZE))
                     for i in range(n)]).astype("float32")


def pooled(model, x):
    return keras.Model(model.input, model.get_layer("pool").output)(x)


VIT_BLOCKS = ["transformer_block_1", "transformer_block_2",
              "transformer_block_3"]


@pytest.mark.parametrize("name, pool, blocks", [
    ("vit", "class token", VIT_BLOCKS),
    ("vit_mean", "mean of tokens", VIT_BLOCKS),
    ("deit", "class token", VIT_BLOCKS[:2]),
    ("dinov2", "class token", ["layers_0", "layers_1"]),
    ("swin", "mean of tokens", ["stage_0", "stage_1"])])
def test_transformer_features_are_keras_hubs_pooled_once_preprocessed(
        presets, name, pool, blocks):
    # The classifier's pooled features equal KerasHub's own backbone on
    # its own converter's output: the converter's scale / offset are in
    # the model exactly once, and the rebuilt graph (each encoder layer a
    # node) computes what KerasHub's encoder does.
    built = build_backbone(f"hub:{presets[name]}")
    assert built.image_size == SIZE
    model = build_classifier(built, 3)
    x = images()
    reference = keras_hub.models.Backbone.from_preset(presets[name])
    converter = keras_hub.layers.ImageConverter.from_preset(presets[name])
    inputs = converter(x)
    tokens = np.asarray(reference(
        {"images": inputs} if name == "dinov2" else inputs))
    expected = tokens[:, 0] if pool == "class token" else tokens.mean(1)
    got = np.asarray(pooled(model, x))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [n for n, _ in built.blocks()] == ["stem", *blocks, "top"]


@pytest.mark.parametrize("sign", [1, -1])
def test_trained_dinov2_position_embeddings_survive_saving(presets,
                                                           tmp_path, sign):
    # KerasHub's DINOv2 embedding saved its trained position table only
    # when the signed sum of the change was positive and re-interpolated
    # the pretrained one on load, so a fine-tuned model reloaded with
    # other predictions about half the time. Both signs, through
    # model.save and through save_weights (epoch backups, resume).
    built = build_backbone(f"hub:{presets['dinov2']}")
    model = build_classifier(built, 3)
    configure_stage(model, "finetune", built.blocks())
    table, = [v for v in model.weights
              if v.path.endswith("interpolated_position_embeddings")]
    table.assign(table + sign * np.random.default_rng(0).normal(
        size=table.shape).astype("float32"))
    x = images()
    scores = model.predict(x, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tl_keras.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), scores,
                               atol=1e-5)
    weights = str(tmp_path / "model.weights.h5")
    model.save_weights(weights)
    fresh = build_classifier(build_backbone(f"hub:{presets['dinov2']}"), 3)
    fresh.load_weights(weights)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), scores,
                               atol=1e-5)
    # Its mask token (masked-image pretraining only) takes no gradient,
    # so it does not train, even after the model is frozen and unfrozen.
    model.trainable = False
    model.trainable = True
    assert not [v for v in model.trainable_weights if "mask_token" in v.path]


def test_resnet_features_and_stages_as_blocks(presets):
    built = build_backbone(f"hub:{presets['resnet']}")
    model = build_classifier(built, 3)
    x = images()
    reference = keras_hub.models.Backbone.from_preset(presets["resnet"])
    converter = keras_hub.layers.ImageConverter.from_preset(
        presets["resnet"])
    expected = np.asarray(reference(converter(x))).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled(model, x), expected, atol=1e-4)
    assert [n for n, _ in built.blocks()] == ["stem", "stack0", "stack1"]


def test_finetune_trains_layernorm_and_freezes_batchnorm(presets):
    vit = build_backbone(f"hub:{presets['vit']}")
    model = build_classifier(vit, 3)
    configure_stage(model, "finetune", vit.blocks(), unfreeze=2)
    training = {id(w) for w in model.trainable_weights}
    base = model.get_layer("backbone").base

    def trains(layer_name):
        weights = base.get_layer(layer_name).weights
        assert weights
        return {id(w) in training for w in weights}

    # The top two blocks: the last encoder layer and the final LayerNorm
    # (a LayerNorm trains; only BatchNorm is frozen).
    assert trains("transformer_block_3") == {True}
    assert trains("ln") == {True}
    assert trains("transformer_block_2") == {False}
    assert trains("vit_patching_and_embedding") == {False}
    resnet = build_backbone(f"hub:{presets['resnet']}")
    model = build_classifier(resnet, 3)
    configure_stage(model, "finetune", resnet.blocks())
    bn = [layer for layer in model.get_layer("backbone").base.layers
          if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)


def test_layerwise_rates_count_encoder_layers(presets):
    vit = build_backbone(f"hub:{presets['vit']}")
    model = build_classifier(vit, 3)
    configure_stage(model, "finetune", vit.blocks())
    multipliers = recipe.layer_multipliers(model, vit.blocks(), 0.5)
    by_block = {name: {multipliers[w.path] for layer in layers
                       for w in layer.trainable_weights}
                for name, layers in vit.blocks()}
    # top (LayerNorm) at 1, then 0.5 per encoder layer down, stem last.
    assert by_block["top"] == {1.0}
    assert by_block["transformer_block_3"] == {0.5}
    assert by_block["transformer_block_1"] == {0.125}
    assert by_block["stem"] == {0.0625}


def test_cut_at_an_encoder_layer_pools_its_tokens(presets, tmp_path):
    built = build_backbone(f"hub:{presets['vit']}",
                           feature_block="transformer_block_2")
    model = build_classifier(built, 3)
    x = images()
    reference = build_backbone(f"hub:{presets['vit']}").base
    after_two = keras.Model(
        reference.input,
        reference.get_layer("transformer_block_2").output)(
        x / 127.5 - 1)
    np.testing.assert_allclose(pooled(model, x),
                               np.asarray(after_two)[:, 0], atol=1e-5)
    path = str(tmp_path / "cut.keras")
    model.save(path)
    loaded = tl_keras.models.backbones.load_model_file(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    # That run's model.keras as --weights with the same block (weights
    # moved off the preset's, as a fine-tune moves them): loaded into the
    # cut base (it was refused: fewer weights than the whole base).
    for weight in built.base.trainable_weights:
        weight.assign(weight + 0.01)
    model.save(path)
    again = build_backbone(f"hub:{presets['vit']}", weights=path,
                           feature_block="transformer_block_2")
    for got, want in zip(again.base.weights, built.base.weights,
                         strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want))


def _endpoint_scores(served, x):
    got = served.signatures["serve_float"](images=tf.constant(x))
    return got["scores"].numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name, augment", [("vit", "none"),
                                           ("resnet", "flip,zoom")])
def test_transfer_and_finetune_through_the_cli(presets, tmp_path, name,
                                               augment, image_folder):
    # compare runs scratch, transfer and finetune on the hub base (without
    # augmentation the frozen stages train on cached features, with it
    # through the base); every run's export (three endpoints, and TFLite:
    # both families convert with built-in ops) matches its model.keras.
    workdir = str(tmp_path / "cmp")
    result = run_cli(
        f"--data_dir={image_folder}", f"--workdir={workdir}",
        f"--backbone=hub:{presets[name]}", "--mode=compare",
        "--epochs=2", "--finetune_epochs=1", "--batch_size=8",
        "--validation_split=0.2", "--test_split=0.2", "--unfreeze=2",
        f"--augment={augment}", "--export_tflite")
    assert result.returncode == 0, result.stderr[-3000:]
    x = images(5, seed=3)
    for approach in ("transfer", "finetune"):
        run = os.path.join(workdir, approach)
        metrics = json.load(open(os.path.join(run, "metrics.json")))
        stages = list(metrics["stages"])
        assert stages == (["head"] if approach == "transfer"
                          else ["head", "finetune"])
        extraction = metrics["stages"]["head"]["feature_extraction_seconds"]
        assert bool(extraction) == (augment == "none"), extraction
        model = tl_keras.models.backbones.load_model_file(
            os.path.join(run, "model.keras"), compile=False)
        expected = tf.nn.softmax(model.predict(x, verbose=0)).numpy()
        assert expected.std(axis=0).max() > 1e-4  # not degenerate
        served = tf.saved_model.load(os.path.join(run, "export"))
        np.testing.assert_allclose(_endpoint_scores(served, x), expected,
                                   atol=1e-5)
        raw = x.astype(np.uint8)
        got = served.signatures["serving_default"](images=tf.constant(raw))
        resized = data_lib.resize_images(raw, SIZE).numpy().astype(
            "float32")
        np.testing.assert_allclose(
            got["scores"], tf.nn.softmax(model.predict(resized, verbose=0)),
            atol=1e-5)
        np.testing.assert_allclose(
            tflite_scores(os.path.join(run, "export", "model.tflite"), x),
            expected, atol=1e-4)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_a_saved_hub_classifier_is_a_backbone_with_the_same_blocks(
        presets, tmp_path, name):
    built = build_backbone(f"hub:{presets[name]}")
    path = str(tmp_path / "model.keras")
    build_classifier(built, 3).save(path)
    again = build_backbone(path)
    assert [n for n, _ in again.blocks()] == [n for n, _ in built.blocks()]
    assert again.image_size == SIZE and again.preprocessing == (
        built.preprocessing)


def test_rank_checks_every_hub_name_before_measuring(presets, tmp_path,
                                                     image_folder,
                                                     monkeypatch):
    measured = []
    module = importlib.import_module("tl_keras.advisor.rank")
    monkeypatch.setattr(module, "measure",
                        lambda *a, **k: measured.append(1))
    with pytest.raises(InputError, match="no such preset folder"):
        tl_keras.rank(tl_keras.Config(
            data_dir=image_folder, workdir=str(tmp_path / "rank"),
            mode="rank", backbones=f"compact_cnn,hub:{tmp_path}/missing",
            weights="none"))  # compact_cnn has no ImageNet weights
    # A size no preset takes, found once the preset was loaded, after
    # compact_cnn was measured.
    with pytest.raises(InputError, match="Invalid image_size for backbone "
                       "'hub:.*'. Allowed: >= 32"):
        tl_keras.rank(tl_keras.Config(
            data_dir=image_folder, workdir=str(tmp_path / "rank"),
            mode="rank", backbones=f"compact_cnn,hub:{presets['vit']}",
            weights="none", image_size=16))
    assert not measured


@pytest.mark.slow
def test_a_killed_hub_run_resumes_to_the_uninterrupted_weights(
        presets, tmp_path, image_folder):
    # tests/fault_task.py kills the process (SIGKILL) after the 2nd batch
    # of the fine-tune stage's 2nd epoch; the rerun resumes from the epoch
    # backup and ends where an uninterrupted run does.
    flags = [f"--backbone=hub:{presets['vit']}", "--approach=finetune",
             "--epochs=2", "--finetune_epochs=3", "--batch_size=8",
             "--validation_split=0.2", "--test_split=0.2", "--unfreeze=2"]

    def run(workdir, fault=None):
        return run_fault_task(image_folder, workdir, flags, fault)

    whole, workdir = str(tmp_path / "whole"), str(tmp_path / "run")
    assert run(whole).returncode == 0
    killed = run(workdir, "batch:finetune:2:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming the stage after epoch 1" in (resumed.stdout
                                                  + resumed.stderr)
    want, got = (tl_keras.load_model(os.path.join(w, "model.keras"),
                                     compile=False) for w in (whole, workdir))
    for a, b in zip(want.weights, got.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)


def test_rank_puts_hub_and_registered_bases_side_by_side(presets, tmp_path,
                                                        image_folder):
    rows = tl_keras.rank(tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "rank"),
        mode="rank", weights="none", image_size=0, batch_size=8,
        validation_split=0.2, test_split=0.2,
        backbones=f"hub:{presets['vit']},compact_cnn"))
    assert {r["backbone"] for r in rows} == {f"hub:{presets['vit']}",
                                             "compact_cnn"}
    assert all("probe_accuracy" in r for r in rows)


# Small models of KerasHub's other vision families, from explicit configs
# (the smallest each builds at 32 px), with the blocks tl_keras gives them:
# stages for CNNs, one block for transformers nested whole.
FAMILIES = {
    "DenseNet": (dict(stackwise_num_repeats=[1, 1], growth_rate=8),
                 ["stem", "stack1", "stack2", "top"]),
    "EfficientNet": (dict(
        stackwise_width_coefficients=[0.25] * 2,
        stackwise_depth_coefficients=[1.0] * 2,
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[32, 16], stackwise_output_filters=[16, 24],
        stackwise_expansion_ratios=[1, 6],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"]),
        ["stem", "block1", "block2", "top"]),
    "MobileNet": (dict(
        stackwise_expansion=[[16, 24], [32]], stackwise_num_blocks=[2, 1],
        stackwise_num_filters=[[8, 8], [16]],
        stackwise_kernel_size=[[3, 3], [3]],
        stackwise_num_strides=[[2, 1], [2]],
        stackwise_se_ratio=[[None, None], [0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish"]],
        stackwise_padding=[[1, 1], [1]], output_num_filters=32,
        depthwise_filters=8, depthwise_stride=1, depthwise_residual=False,
        last_layer_filter=32, squeeze_and_excite=None, input_num_filters=8),
        ["stem", "block_0", "block_1", "block_2", "block_3"]),
    "CSPNet": (dict(
        stem_filters=8, stem_kernel_size=3, stem_strides=1,
        stackwise_depth=[1, 1], stackwise_strides=[2, 2],
        stackwise_num_filters=[8, 16], block_type="dark_block",
        stage_type="csp", expand_ratio=[2.0], block_ratio=[1.0],
        bottle_ratio=[0.5]), ["stem", "stage_0", "stage_1"]),
    "VGG": (dict(stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16]),
            ["block1", "block2"]),
    "DeiT": (dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                  intermediate_dim=32),
             ["stem", "transformer_block_1", "transformer_block_2", "top"]),
    "DINOV2": (dict(patch_size=8, num_layers=2, hidden_dim=16, num_heads=2,
                    intermediate_dim=32,
                    position_embedding_shape=(SIZE, SIZE, 3)),
               ["stem", "layers_0", "layers_1", "top"]),
    "SwinTransformer": (dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                             window_size=4, patch_size=4),
                        ["stem", "stage_0", "stage_1", "top"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_other_families_train_reload_and_convert(family, tmp_path):
    kwargs, blocks = FAMILIES[family]
    shape = {"input_shape" if family == "EfficientNet" else "image_shape":
             (SIZE, SIZE, 3)}
    folder = str(tmp_path / family)
    getattr(keras_hub.models, f"{family}Backbone")(
        **kwargs, **shape).save_to_preset(folder)
    getattr(keras_hub.layers, f"{family}ImageConverter")(
        image_size=(SIZE, SIZE), scale=1 / 127.5,
        offset=-1).save_to_preset(folder)
    built = build_backbone(f"hub:{folder}")
    assert [name for name, _ in built.blocks()] == blocks
    model = build_classifier(built, 3)
    configure_stage(model, "finetune", built.blocks())
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = images()
    model.fit(x, np.arange(len(x)) % 3, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tl_keras.models.backbones.load_model_file(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    tflite = str(tmp_path / "model.tflite")
    with open(tflite, "wb") as f:
        f.write(convert_to_tflite(model))
    np.testing.assert_allclose(
        tflite_scores(tflite, x),
        tf.nn.softmax(model.predict(x, verbose=0)), atol=1e-5)


def _write_json(folder, name, content):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        json.dump(content, f)


def test_bad_presets_are_clear_errors(presets, tmp_path, monkeypatch):
    def error(name, **kwargs):
        with pytest.raises(InputError) as e:
            build_backbone(name, **kwargs)
        return str(e.value)

    # A named preset downloads from Kaggle; without network (as here, and
    # made sure of on a machine with network) it fails at the download.
    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    import kagglehub
    monkeypatch.setattr(kagglehub, "model_download", no_network)
    message = error("hub:vit_base_patch16_224_imagenet")
    assert "Could not download KerasHub preset" in message
    assert "local preset folder" in message
    # A Hugging Face preset offline: KerasHub retries, then says only
    # that it "has no config.json" (it said "could not load").
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_hub(*args, **kwargs):
        raise LocalEntryNotFoundError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    message = error("hub:hf://keras/resnet_18_imagenet")
    assert ("Could not download KerasHub preset 'hf://keras/resnet_18_"
            "imagenet' or it holds no KerasHub preset") in message
    assert "local preset folder" in message
    message = error("hub:vit_base_patch16_224_imagnet")
    assert "Unknown KerasHub preset" in message
    assert "vit_base_patch16_224_imagenet" in message  # the suggestion
    assert "no such preset folder" in error(f"hub:{tmp_path}/missing")
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    assert "not a KerasHub preset (no config.json)" in error(f"hub:{empty}")
    task = str(tmp_path / "task")
    _write_json(task, "config.json",
                {"registered_name": "keras_hub>ImageClassifier"})
    assert "keras_hub>ImageClassifier, not a backbone" in error(
        f"hub:{task}")
    text = str(tmp_path / "text")
    keras_hub.models.BertBackbone(
        vocabulary_size=20, num_layers=1, num_heads=1, hidden_dim=4,
        intermediate_dim=8, max_sequence_length=8).save_to_preset(text)
    assert "BertBackbone is not an image backbone" in error(f"hub:{text}")
    bare = str(tmp_path / "bare")
    _vit().save_to_preset(bare)
    assert "no image converter" in error(f"hub:{bare}")
    null = str(tmp_path / "null")
    _write_json(null, "config.json", {"registered_name": None})
    assert "no registered KerasHub class, not a backbone" in error(
        f"hub:{null}")
    # A KerasHub backbone saved on its own: no converter, so no
    # preprocessing to take.
    bare_file = str(tmp_path / "bare.keras")
    _vit().save(bare_file)
    assert "saved without its image converter" in error(bare_file)
    assert "before the first encoder layer" in error(
        f"hub:{presets['vit']}", feature_block="stem")
    message = error(f"hub:{presets['vit']}", image_size=64)
    assert "built for 32 px inputs only" in message
    assert "image_size=64" in message


def test_bad_preset_stops_before_anything_is_written(tmp_path,
                                                     image_folder):
    workdir = str(tmp_path / "run")
    with pytest.raises(InputError, match="no such preset folder"):
        tl_keras.train(tl_keras.Config(
            data_dir=image_folder, workdir=workdir,
            backbone=f"hub:{tmp_path}/missing", epochs=1))
    assert not os.path.exists(workdir)


def test_without_keras_hub_the_error_names_the_extra(monkeypatch, presets):
    monkeypatch.setitem(__import__("sys").modules, "keras_hub", None)
    with pytest.raises(InputError, match=r"tl_keras\[hub\]"):
        build_backbone(f"hub:{presets['vit']}")
