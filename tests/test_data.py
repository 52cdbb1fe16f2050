"""Image folders and arrays -> tf.data pipelines: formats, splits,
augmentation in tf.data, and clear errors for bad data."""

import json
import logging
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import FORMATS, class_image, fake_probes, write_image_folder
from PIL import Image

import tl_keras
from tl_keras import data as data_lib
from tl_keras.data import pipelines

SIZE = 32


def labels_of(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_every_format_decodes_to_rgb(image_folder, tiny_config):
    data = tl_keras.make_datasets(tiny_config, SIZE)
    assert data.class_names == ["class_0", "class_1", "class_2"]
    assert sum(data.counts.values()) == 36
    for x, y in data.train.concatenate(data.val).concatenate(data.test):
        assert x.dtype == tf.float32 and y.dtype == tf.int32
        assert x.shape[1:] == (SIZE, SIZE, 3)
        assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255
    # Grayscale becomes three equal channels; RGBA drops alpha.
    path = next(p for p, _ in data.files["train"] if p.endswith("gray.png"))
    image = data_lib.decode_image(tf.io.read_file(path)).numpy()
    assert image.shape[-1] == 3
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    path = next(p for p, _ in data.files["train"] if p.endswith("rgba.png"))
    rgba = np.asarray(Image.open(path))
    np.testing.assert_array_equal(
        data_lib.decode_image(tf.io.read_file(path)).numpy(), rgba[..., :3])


def test_split_is_stratified_disjoint_and_seeded(tiny_config):
    data = tl_keras.make_datasets(tiny_config, SIZE)
    splits = {k: {p for p, _ in v} for k, v in data.files.items()}
    assert not splits["train"] & splits["val"]
    assert not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
    # 12 per class: round(2.4) = 2 for val and test, 8 for train.
    assert data.class_counts["val"] == {f"class_{i}": 2 for i in range(3)}
    assert data.class_counts["train"] == {f"class_{i}": 8 for i in range(3)}
    again = tl_keras.make_datasets(tiny_config, SIZE)
    assert again.files == data.files
    other = tl_keras.make_datasets(
        tiny_config.replace(seed=7), SIZE)
    assert other.files["val"] != data.files["val"]


def test_train_val_test_folders_are_used(tmp_path, tiny_config):
    for seed, (split, n) in enumerate((("train", 6), ("val", 2),
                                       ("test", 3))):
        write_image_folder(str(tmp_path / split), per_class=n,
                           formats=("png",), seed=seed)
    config = tiny_config.replace(data_dir=str(tmp_path))
    data = tl_keras.make_datasets(config, SIZE)
    assert data.counts == {"train": 18, "val": 6, "test": 9}
    assert all("/val/" in p for p, _ in data.files["val"])
    assert len(labels_of(data.test)) == 9


def test_val_folder_only_carves_test_from_train(tmp_path, tiny_config):
    write_image_folder(str(tmp_path / "train"), per_class=10,
                       formats=("png",))
    write_image_folder(str(tmp_path / "validation"), per_class=2,
                       formats=("png",), seed=1)
    config = tiny_config.replace(data_dir=str(tmp_path))
    data = tl_keras.make_datasets(config, SIZE)
    assert data.counts == {"train": 24, "val": 6, "test": 6}


@pytest.mark.parametrize("names", [
    ("train", "valid", "test"),  # the layout many dataset exports use
    ("Train", "Validation", "TEST"),  # any case
    ("training", "val", "test"),
    ("training", "validation", "testing"),
])
def test_split_folders_match_any_case_and_valid(tmp_path, tiny_config,
                                                names):
    for seed, (name, n) in enumerate(zip(names, (6, 2, 3), strict=True)):
        write_image_folder(str(tmp_path / name), per_class=n,
                           formats=("png",), seed=seed)
    data = tl_keras.make_datasets(
        tiny_config.replace(data_dir=str(tmp_path)), SIZE)
    assert data.class_names == ["class_0", "class_1", "class_2"]
    # The user's validation images are the validation split, not carved.
    assert data.counts == {"train": 18, "val": 6, "test": 9}
    assert all(f"/{names[1]}/" in p for p, _ in data.files["val"])


@pytest.mark.parametrize("names, nested, said", [
    (("cat", "test"), 1, "every sub-folder is a class, also test"),
    # Perhaps split folders under names that are not split names, perhaps
    # classes with nested folders (which belong to the class).
    (("part_a", "part_b"), 2,
     "part_a, part_b hold folders of the same names (class_0, class_1)"),
    # One split name only: a class test/ beside prod/, each holding its
    # images by year, say.
    (("prod", "test"), 2,
     "prod, test hold folders of the same names (class_0, class_1)"),
    # training/ and testing/ are splits only when nothing else is beside
    # them: here an activity classifier's classes.
    (("racing", "training"), 1, "every sub-folder is a class, also training"),
])
def test_flat_folder_keeps_classes_that_look_like_splits(
        tmp_path, tiny_config, caplog, names, nested, said):
    for seed, name in enumerate(names):
        write_image_folder(str(tmp_path / name), num_classes=nested,
                           per_class=10, formats=("png",), seed=seed)
    with caplog.at_level("WARNING", logger="tl_keras"):
        data = tl_keras.make_datasets(
            tiny_config.replace(data_dir=str(tmp_path)), SIZE)
    assert data.class_names == list(names)
    assert sum(data.class_counts["train"].values()) > 0
    assert said in caplog.text


@pytest.mark.parametrize("folders, fragment", [
    (("train", "val", "valid"), "two folders for one split: val and valid"),
    (("train", "Train"), "two folders for one split"),
    (("train", "test", "extra"), "other folders (extra)"),
    (("cat", "dog", "test/cat", "test/dog"), "test holds class folders"),
    (("cat", "dog", "Val/cat"), "Val holds class folders"),
    # Split folders, one not named like a split: not three classes.
    (("tr", "val", "test"), "test, val hold class folders"),
])
def test_ambiguous_split_layout_is_an_error(tmp_path, tiny_config, folders,
                                            fragment):
    for name in folders:
        write_image_folder(str(tmp_path / name), num_classes=1
                           if name.count("/") or name in ("cat", "dog")
                           else 3, per_class=2, formats=("png",))
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.make_datasets(tiny_config.replace(data_dir=str(tmp_path)),
                               SIZE)
    assert fragment in str(e.value) and "Received: data_dir=" in str(
        e.value)


def test_split_folders_beside_another_folder_are_refused(tmp_path,
                                                        tiny_config):
    # training/ beside samples/ (loose images) is a class name, but
    # with validation/ holding the same class folders it is a split: it
    # trained three classes, samples, training and validation.
    for name in ("training", "validation"):
        write_image_folder(str(tmp_path / name), num_classes=2,
                           per_class=3, formats=("png",))
    os.makedirs(tmp_path / "samples")
    Image.new("RGB", (8, 8)).save(tmp_path / "samples" / "a.png")
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.make_datasets(tiny_config.replace(data_dir=str(tmp_path)),
                               SIZE)
    assert "training, validation hold class folders (class_0, class_1" in \
        str(e.value)
    assert "training count as split folders only with no other folder " \
        "beside them; here samples" in str(e.value)


@pytest.mark.parametrize("given", [("val",), ("val", "test")])
def test_split_fractions_a_folder_replaces_are_said(tmp_path, tiny_config,
                                                    caplog, given):
    for seed, name in enumerate(("train", *given)):
        write_image_folder(str(tmp_path / name), num_classes=2,
                           per_class=10 if name == "train" else 2,
                           formats=("png",), seed=seed)
    config = tiny_config.replace(data_dir=str(tmp_path),
                                 validation_split=0.3, test_split=0.25)
    with caplog.at_level("WARNING", logger="tl_keras"):
        data = tl_keras.make_datasets(config, SIZE)
    assert data.counts["val"] == 4
    assert "Ignoring validation_split=0.3: the data has its own val " \
        "split" in caplog.text
    assert ("Ignoring test_split=0.25" in caplog.text) == ("test" in given)
    # The defaults are no choice of the user's: nothing to say.
    caplog.clear()
    defaults = tl_keras.Config().data
    with caplog.at_level("WARNING", logger="tl_keras"):
        tl_keras.make_datasets(config.replace(
            validation_split=defaults.validation_split,
            test_split=defaults.test_split), SIZE)
    assert "Ignoring" not in caplog.text


def test_hidden_folders_in_class_folders_are_said(tmp_path, tiny_config,
                                                  caplog):
    root = write_image_folder(str(tmp_path / "d"), num_classes=2,
                              per_class=5, formats=("png",))
    for name in ("class_0", "class_1"):
        write_image_folder(os.path.join(root, name, ".ipynb_checkpoints"),
                           num_classes=1, per_class=2, formats=("png",))
    with caplog.at_level("WARNING", logger="tl_keras"):
        data = tl_keras.make_datasets(tiny_config.replace(data_dir=root),
                                      SIZE)
    assert sum(data.counts.values()) == 10
    assert "Ignoring 2 hidden folder(s)" in caplog.text
    assert os.path.join("class_1", ".ipynb_checkpoints") in caplog.text


@pytest.mark.parametrize("make_link", [os.symlink, os.link])
def test_a_link_to_an_image_of_its_own_class_is_left_out(
        tmp_path, tiny_config, caplog, make_link):
    # Both paths in one class, by a symlink or a hard link: counted once
    # (carved splits would put the image in train and in test).
    root = write_image_folder(str(tmp_path / "d"), num_classes=2,
                              per_class=5, formats=("png",))
    make_link(os.path.join(root, "class_0", "000.png"),
              os.path.join(root, "class_0", "again.png"))
    with caplog.at_level("WARNING", logger="tl_keras"):
        data = tl_keras.make_datasets(tiny_config.replace(data_dir=root),
                                      SIZE)
    assert sum(data.counts.values()) == 10
    assert [os.path.basename(p) for p in data.skipped_files] == [
        "again.png"]
    assert "Ignoring 1 file(s) that are the same image as another file " \
        "of their class" in caplog.text and "again.png" in caplog.text


def test_byte_for_byte_copies_are_one_image(tmp_path, tiny_config, caplog):
    # Copies under other names were listed as other images: one in test/
    # of a training image was scored on an image trained on, and copies
    # in two classes gave one image two labels.
    root = tmp_path / "d"
    for split in ("train", "test"):
        write_image_folder(str(root / split), num_classes=2, per_class=5,
                           formats=("png",), seed=len(split))
    train0 = root / "train" / "class_0"
    shutil.copy(train0 / "000.png", train0 / "again.png")  # its own class
    shutil.copy(train0 / "001.png", root / "test" / "class_0" / "t.png")
    shutil.copy(train0 / "002.png", root / "train" / "class_1" / "x.png")
    # BMPs of one size (a 12 KB file, more than the leading bytes
    # compared first): one differs only in its last row written (the
    # image's top-left pixel), one is a copy.
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3),
                                               np.uint8)
    class_1 = root / "train" / "class_1"
    Image.fromarray(pixels).save(class_1 / "b1.bmp")
    pixels[0, 0] ^= 255
    Image.fromarray(pixels).save(class_1 / "b2.bmp")
    shutil.copy(class_1 / "b2.bmp", class_1 / "b3.bmp")
    with caplog.at_level("WARNING", logger="tl_keras"):
        data = tl_keras.make_datasets(
            tiny_config.replace(data_dir=str(root), test_split=0.0), SIZE)
    names = {os.path.relpath(p, root) for p in data.copy_files}
    assert names == {"train/class_0/again.png", "test/class_0/t.png",
                     "train/class_0/002.png", "train/class_1/x.png",
                     "train/class_1/b3.bmp"}
    kept = {os.path.relpath(p, root) for pairs in data.files.values()
            for p, _ in pairs}
    assert not names & kept and "train/class_0/001.png" in kept
    assert {"train/class_1/b1.bmp", "train/class_1/b2.bmp"} <= kept
    assert data.counts["test"] == 10
    assert sum(data.counts.values()) == 26 - 5
    assert "Leaving out 3 file(s) that are byte-for-byte copies" in (
        caplog.text)
    assert "Leaving out 1 image(s) found, byte for byte, in two or more " \
        "classes" in caplog.text and "(class_1)" in caplog.text


def test_a_finished_run_does_not_count_its_copies_as_added(tmp_path):
    # A finished run rerun lists its folder again: the copies it left out
    # are not images added since.
    from types import SimpleNamespace

    from tl_keras.data.folders import scan_folder
    from tl_keras.training import run_data

    root = write_image_folder(str(tmp_path / "d"), num_classes=2,
                              per_class=3, formats=("png",))
    copy = os.path.join(root, "class_0", "copy.png")
    shutil.copy(os.path.join(root, "class_0", "000.png"), copy)
    files, _, _ = scan_folder(root)
    files = {"train": [pair for pair in files["train"] if pair[0] != copy]}
    workdir = tmp_path / "run"
    workdir.mkdir()
    run_data.record_data(str(workdir), SimpleNamespace(
        files=files, bad_files=[], copy_files=[copy], fingerprint=""))
    config = tl_keras.Config(data_dir=root, workdir=str(workdir))
    assert run_data.check_finished_data(config) == {}
    # Made distinct since (edited): an image the run never saw, not a
    # copy (the rerun said "already complete").
    Image.fromarray(np.full((9, 9, 3), 90, np.uint8)).save(copy)
    assert run_data.check_finished_data(config) == {
        "no longer a copy": [copy]}
    os.remove(copy)
    Image.fromarray(np.full((9, 9, 3), 50, np.uint8)).save(
        os.path.join(root, "class_0", "new.png"))
    assert run_data.check_finished_data(config)["added"] == [
        os.path.join(root, "class_0", "new.png")]


def test_a_finished_run_sees_a_skipped_file_made_readable(tmp_path):
    # A file the run skipped as unreadable, replaced since by an image:
    # the rerun said "already complete" on an image it never saw.
    from types import SimpleNamespace

    from tl_keras.data.folders import scan_folder
    from tl_keras.training import run_data

    root = write_image_folder(str(tmp_path / "d"), num_classes=2,
                              per_class=3, formats=("png",))
    broken = os.path.join(root, "class_0", "broken.png")
    open(broken, "wb").write(b"not an image")
    files, _, _ = scan_folder(root)
    files = {"train": [pair for pair in files["train"] if pair[0] != broken]}
    workdir = tmp_path / "run"
    workdir.mkdir()
    run_data.record_data(str(workdir), SimpleNamespace(
        files=files, bad_files=[broken], copy_files=[], fingerprint=""))
    config = tl_keras.Config(data_dir=root, workdir=str(workdir))
    assert run_data.check_finished_data(config) == {}  # still broken
    Image.fromarray(np.full((9, 9, 3), 50, np.uint8)).save(broken)
    assert run_data.check_finished_data(config) == {
        "readable now": [broken]}


def test_webp_images_train_and_an_animated_one_is_unreadable(tmp_path,
                                                             tiny_config):
    # Still WebP, lossy or lossless, with or without alpha, is decoded as
    # PIL reads it; an animated one (tf.io.decode_webp corrupted the heap
    # on one) and a truncated one are left out as unreadable, before
    # TensorFlow meets them.
    root = write_image_folder(str(tmp_path / "d"), num_classes=2,
                              per_class=6, formats=("png",))
    rng = np.random.default_rng(1)
    for label in range(2):
        for i, (mode, lossless) in enumerate(
                [("RGB", False), ("RGB", True), ("RGBA", True)]):
            class_image(label, rng, 30).convert(mode).save(
                os.path.join(root, f"class_{label}", f"w{i}.webp"),
                lossless=lossless)
    folder = os.path.join(root, "class_0")
    frames = [class_image(0, rng, 30) for _ in range(2)]
    frames[0].save(os.path.join(folder, "anim.webp"), save_all=True,
                   append_images=frames[1:], lossless=True)
    with open(os.path.join(folder, "w1.webp"), "rb") as f:
        whole = f.read()
    with open(os.path.join(folder, "cut.webp"), "wb") as f:
        f.write(whole[:len(whole) // 2])
    data = tl_keras.make_datasets(tiny_config.replace(data_dir=root), SIZE)
    assert sorted(map(os.path.basename, data.bad_files)) == [
        "anim.webp", "cut.webp"]
    assert sum(data.counts.values()) == 18  # 12 PNG, 6 WebP
    path = os.path.join(folder, "w2.webp")
    np.testing.assert_array_equal(
        data_lib.decode_image(tf.io.read_file(path)).numpy(),
        np.asarray(Image.open(path).convert("RGB")))
    for x, _ in data.train:
        assert x.shape[1:] == (SIZE, SIZE, 3)


def class_changes(labels):
    return int(np.sum(labels[1:] != labels[:-1]))


@pytest.mark.parametrize("mixed", [True, False])
def test_training_order_mixes_classes_beyond_the_shuffle_buffer(
        tiny_config, monkeypatch, mixed):
    # A folder lists its files class by class; with a shuffle buffer far
    # smaller than the set (10,000 vs a large dataset; 2 here) the epoch
    # order stayed nearly sorted. The list itself is put in random order.
    monkeypatch.setattr(pipelines, "SHUFFLE_BUFFER", 2)
    if not mixed:  # the old behaviour, to show the test can fail
        monkeypatch.setattr(pipelines, "_mixed", lambda n, seed: range(n))
    data = tl_keras.make_datasets(tiny_config.replace(augment="none"), SIZE)
    changes = class_changes(labels_of(data.train))
    assert (changes >= 10) == mixed, changes  # 24 images, 3 classes


def test_augmentation_runs_in_tf_data_on_train_only(tiny_config):
    config = tiny_config.replace(batch_size=64)
    data = tl_keras.make_datasets(config, SIZE)
    first = next(iter(data.train))[0].numpy()
    second = next(iter(data.train))[0].numpy()
    assert not np.array_equal(np.sort(first, axis=None),
                              np.sort(second, axis=None))
    val_a = next(iter(data.val))[0].numpy()
    val_b = next(iter(data.val))[0].numpy()
    np.testing.assert_array_equal(val_a, val_b)
    plain = tl_keras.make_datasets(
        config.replace(augment="none"), SIZE)
    a = np.sort(next(iter(plain.train))[0].numpy(), axis=None)
    b = np.sort(next(iter(plain.train))[0].numpy(), axis=None)
    np.testing.assert_array_equal(a, b)  # same images, shuffled


def test_randaugment_runs_in_tf_data_and_replays_per_epoch(tiny_config):
    # RandAugment (Keras 3 core) on the pipeline's 0-255 pixels: images
    # change and stay in range, and its random state is tracked per epoch
    # like the other augmentations' (a resumed epoch draws the same ops).
    config = tiny_config.replace(batch_size=64, augment="randaugment")
    data = tl_keras.make_datasets(config, SIZE)
    plain = tl_keras.make_datasets(config.replace(augment="none"), SIZE)

    first = epoch_batch(data, 0)[0]
    assert 0 <= first.min() and first.max() <= 255
    assert not np.array_equal(first, epoch_batch(plain, 0)[0])  # changed
    np.testing.assert_array_equal(first, epoch_batch(data, 0)[0])  # replay
    assert not np.array_equal(first, epoch_batch(data, 1)[0])


def epoch_batch(data, number):
    """The first training batch of epoch `number` of the first stage."""
    data.shuffle.set_epoch(1, number)
    images, labels = next(iter(data.train))
    return images.numpy(), labels.numpy()


def best_partner(mixed, own, plain, explain):
    """The image of `plain` (index j) and the share w for which
    explain(own, plain[j], w) comes closest to `mixed`."""
    fits = [explain(own, other, mixed) for other in plain]
    j = int(np.argmin([f[1] for f in fits]))
    return j, fits[j][0]


def mixup_fit(own, other, mixed):
    """w and residual of mixed = w own + (1 - w) other (least squares)."""
    d = (own - other).ravel()
    w = float(d @ (mixed - other).ravel() / max(d @ d, 1e-9))
    return w, float(np.abs(w * own + (1 - w) * other - mixed).max())


def cutmix_fit(own, other, mixed):
    """w = the share of pixels kept from own (the rest pasted from other),
    and how many pixels are neither."""
    kept = np.all(mixed == own, axis=-1)
    pasted = np.all(mixed == other, axis=-1) & ~kept
    return float(kept.mean()), float((~kept & ~pasted).mean())


@pytest.mark.parametrize("mix, explain", [("mixup", mixup_fit),
                                          ("cutmix", cutmix_fit)])
def test_mixed_images_carry_mixed_labels_that_sum_to_one(tiny_config, mix,
                                                         explain):
    # Each mixed image is explained as two images of the same batch
    # without mixing (same order: the mixing comes after the shuffle),
    # and its label weights are the two labels mixed in that proportion.
    config = tiny_config.replace(batch_size=24, augment=mix)
    data = tl_keras.make_datasets(config, SIZE)
    plain = tl_keras.make_datasets(config.replace(augment="none"), SIZE)
    images, labels = epoch_batch(data, 0)
    originals, classes = epoch_batch(plain, 0)
    eye = np.eye(len(data.class_names))
    assert labels.shape == (24, len(data.class_names))
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    mixed = 0
    for i in range(24):
        j, w = best_partner(images[i], originals[i], originals, explain)
        if j == i:  # paired with itself: unchanged, its own label
            np.testing.assert_allclose(images[i], originals[i], atol=1e-3)
            np.testing.assert_allclose(labels[i], eye[classes[i]])
            continue
        mixed += 1
        np.testing.assert_allclose(
            labels[i], w * eye[classes[i]] + (1 - w) * eye[classes[j]],
            atol=1e-3)
    assert mixed >= 12
    np.testing.assert_array_equal(images, epoch_batch(data, 0)[0])  # replay
    assert data.val.element_spec[1].shape.rank == 1  # integer labels


@pytest.mark.slow
def test_mixed_labels_train_with_their_loss_and_accuracy(
        tiny_config, pretrained_base, monkeypatch):
    # Through train(): the mixed training labels and the integer
    # validation labels both go through the loss and the accuracy, in the
    # advisor's scratch run too (auto on a pretrained base whose probe is
    # made low enough for the scratch run to matter).
    fake_probes(monkeypatch, 0.34, {})
    config = tiny_config.replace(
        augment="flip,cutmix", epochs=1, finetune_epochs=1,
        label_smoothing=0.1, approach="auto", backbone=pretrained_base)
    metrics = tl_keras.train(config)
    record = json.load(open(os.path.join(config.runtime.workdir,
                                         "decision.json")))
    assert "epochs" in record["measurements"]["scratch"], record[
        "measurements"]["scratch"]
    for stage in metrics["stages"]:
        history = metrics["stages"][stage]["history"]
        assert 0 <= history["accuracy"][-1] <= 1
        assert np.isfinite(history["loss"][-1])
    loaded = keras.models.load_model(
        os.path.join(config.runtime.workdir, "model.keras"))
    assert type(loaded.loss).__name__ == "SmoothedSparseCrossentropy"


@pytest.mark.parametrize("changes, field, why", [
    (dict(augment="mixup,cutmix"), "augment", "at most one"),
    (dict(augment="flip,mixup", feature_cache_views=2),
     "feature_cache_views", "--augment=mixup"),
    # Views the run would not use are refused, not silently dropped.
    (dict(augment="flip", feature_cache_views=2, feature_cache=False),
     "feature_cache_views", "--feature_cache=false"),
    (dict(augment="none", feature_cache_views=2), "feature_cache_views",
     "--augment=none"),
    (dict(augment="flip", feature_cache_views=1), "feature_cache_views",
     "an integer in [2, 100]"),  # the one view would be as they are
    (dict(feature_cache_views="two"), "feature_cache_views",
     "auto or an integer in [0, 100]"),
    (dict(feature_cache_views=-1), "feature_cache_views", "auto or an"),
    (dict(feature_cache_views="101"), "feature_cache_views", "auto or an"),
    (dict(feature_cache_views=2.5), "feature_cache_views", "auto or an"),
    (dict(feature_cache_views=True), "feature_cache_views", "auto or an"),
])
def test_bad_label_mixes_and_views_name_the_flag(changes, field, why):
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.Config(data_dir="d", workdir="w", **changes).validate()
    message = str(e.value)
    assert f"Invalid {field}." in message and why in message
    assert f"Received: {field}=" in message


@pytest.mark.parametrize("changes, per_class, views, why", [
    (dict(augment="flip"), (100, 120, 90), 2, None),  # auto: large data
    (dict(augment="flip"), (99, 120, 90), None,  # auto: small, the loop
     "the data is small (99 images per class"),
    (dict(augment="flip", feature_cache_views="3"), (5, 5), 3, None),
    (dict(augment="flip", feature_cache_views=0), (200,), None,
     "--feature_cache_views=0"),  # the loop
    (dict(augment="flip,mixup"), (200,), None,  # auto: mixed pairs
     "--augment=mixup mixes pairs"),
    (dict(augment="none"), (5, 5), 1, None),  # one pass, as they are
])
def test_auto_views_apply_only_where_they_can(tmp_path, changes, per_class,
                                              views, why):
    # auto caches views on large data only (a median of at least 100
    # images per class), and is never refused: with no augmentation,
    # MixUp or the cache off it falls back to what the run can use.
    from types import SimpleNamespace

    from tl_keras.training.cache_plan import cache_plan

    config = tl_keras.Config(data_dir=str(tmp_path), workdir="w",
                             **changes).validate()
    data = SimpleNamespace(
        train_ordered=(), shuffle=(), counts={"train": sum(per_class),
                                              "val": 4},
        class_counts={"train": {f"c{i}": n for i, n in
                                enumerate(per_class)}})
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Identity(name="pool")])
    plan, reason = cache_plan(config.training, config.data, "head", data,
                              model)
    assert (plan and plan["views"]) == views
    # The full loop says why (metrics.json's full_loop_reason).
    if why is None:
        assert reason is None
    else:
        assert reason.startswith("augmentation is on and ") and why in reason
    off = config.replace(feature_cache=False)
    assert cache_plan(off.training, off.data, "head", data, model) == (
        None, "--feature_cache=false")
    assert cache_plan(config.training, config.data, "finetune", data,
                      model) == (None, None)
    if plan:
        assert plan["clean"] == (changes["augment"] == "none")
    if "feature_cache_views" not in changes:
        tl_keras.Config(data_dir=str(tmp_path), workdir="w",
                        feature_cache=False, **changes).validate()


def test_resize_is_the_same_eagerly_and_in_tf_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 45, 61, 3), dtype=np.uint8)
    eager = data_lib.resize_images(images, SIZE).numpy()
    ds = tf.data.Dataset.from_tensor_slices(images).map(
        lambda x: data_lib.resize_images(x, SIZE))
    np.testing.assert_array_equal(eager, np.stack(list(ds.as_numpy_iterator())))
    assert eager.dtype == np.uint8


def test_cache_follows_the_budget(tiny_config):
    assert tl_keras.make_datasets(tiny_config, SIZE).cached
    config = tiny_config.replace(cache_budget_mb=0)
    assert not tl_keras.make_datasets(config, SIZE).cached


def test_bad_files_are_named_counted_and_skipped(tmp_path, tiny_config,
                                                 caplog):
    root = write_image_folder(str(tmp_path / "d"), formats=("png", "jpg"))
    (tmp_path / "d" / "class_0" / "broken.jpg").write_bytes(b"not an image")
    good = tmp_path / "d" / "class_1" / "001.jpg"
    truncated = tmp_path / "d" / "class_1" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    (tmp_path / "d" / "class_2" / "notes.txt").write_text("hello")
    (tmp_path / "d" / "class_2" / ".DS_Store").write_text("x")
    config = tiny_config.replace(data_dir=root)
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        data = tl_keras.make_datasets(config, SIZE)
    assert sorted(os.path.basename(p) for p in data.bad_files) == [
        "broken.jpg", "truncated.jpg"]
    assert [os.path.basename(p) for p in data.skipped_files] == ["notes.txt"]
    assert "broken.jpg" in caplog.text and "2 file(s)" in caplog.text
    assert sum(data.counts.values()) == 36
    everything = data.train.concatenate(data.val).concatenate(data.test)
    assert len(labels_of(everything)) == 36


@pytest.mark.parametrize("make, fragment", [
    (lambda root: None, "no such folder"),
    (lambda root: os.makedirs(root), "at least 2 class"),
    (lambda root: write_image_folder(root, num_classes=1), "found 1"),
    (lambda root: (write_image_folder(root, num_classes=2),
                   os.makedirs(os.path.join(root, "empty_class"))),
     "no readable images: empty_class"),
    (lambda root: (write_image_folder(root, num_classes=2),
                   os.makedirs(os.path.join(root, "bad_class")),
                   open(os.path.join(root, "bad_class", "x.png"), "w")
                   .write("junk")),
     "no readable images: bad_class"),
    (lambda root: (write_image_folder(os.path.join(root, "train"),
                                      num_classes=2),
                   write_image_folder(os.path.join(root, "val"),
                                      num_classes=3)),
     "train/ lacks: class_2"),
    (lambda root: write_image_folder(root, num_classes=2, per_class=1),
     "Invalid validation_split: it leaves no images"),
])
def test_bad_folders_get_one_clear_error(tmp_path, tiny_config, make,
                                         fragment):
    root = str(tmp_path / "data")
    make(root)
    config = tiny_config.replace(data_dir=root)
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.make_datasets(config, SIZE)
    assert fragment in str(e.value)
    assert "Received" in str(e.value)


def test_arrays_work_through_the_api(tiny_config):
    rng = np.random.default_rng(0)
    x = np.stack([np.asarray(class_image(i % 2, rng, 20).convert("L"))
                  for i in range(40)])[..., None]
    y = np.arange(40) % 2
    data = tl_keras.from_arrays(x, y, tiny_config, SIZE,
                                class_names=["even", "odd"])
    assert data.counts == {"train": 24, "val": 8, "test": 8}
    batch = next(iter(data.val))[0]
    assert batch.shape[1:] == (SIZE, SIZE, 3)
    with pytest.raises(tl_keras.InputError, match=r"\[0, 1\]"):
        tl_keras.from_arrays(x / 255.0, y, tiny_config, SIZE)
    with pytest.raises(tl_keras.InputError, match="x.shape"):
        tl_keras.from_arrays(x[..., 0], y, tiny_config, SIZE)



def test_given_arrays_missing_a_class_are_said(tiny_config, caplog):
    # Carved splits and folders said a class a split has no image of;
    # given x_val / x_test did not. A single class was blamed on
    # class_names, which the caller never gave.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (22, 16, 16, 3)).astype(np.float32)
    y = np.array([0] * 10 + [1] * 10 + [2] * 2)
    two = np.array([0, 0, 1, 1])
    other = 255 - x[:4]  # not training images (those would be left out)
    for given in (dict(x_val=other, y_val=two, x_test=other / 2,
                       y_test=two),
                  dict(x_val=other, y_val=two)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tl_keras"):
            tl_keras.from_arrays(x, y, tiny_config, SIZE, **given)
        assert "The val split has no images of 1 class(es): 2" in (
            caplog.text)
    with pytest.raises(tl_keras.InputError,
                       match="Invalid y.*at least 2 classes.*only label 0"):
        tl_keras.from_arrays(x, np.zeros(22, int), tiny_config, SIZE)

def test_formats_table_matches_extensions():
    exts = {"." + f.split(".")[-1] for f in FORMATS}
    assert exts <= set(data_lib.IMAGE_EXTENSIONS)


def test_a_link_to_a_folder_that_is_gone_is_refused_or_said(
        tmp_path, tiny_config, caplog):
    # A test/ link to an unmounted drive: test was carved from train
    # without a word (now an error); a class link: the class was left out
    # silently (now said). Hidden links (an editor's lock file) are not
    # looked at.
    root = tmp_path / "d"
    write_image_folder(str(root / "train"), num_classes=2, per_class=5,
                       formats=("png",))
    os.symlink(tmp_path / "unmounted" / "test", root / "test")
    config = tiny_config.replace(data_dir=str(root))
    with pytest.raises(tl_keras.InputError,
                       match="test in .* link\\(s\\) to something that "
                             "does not exist"):
        tl_keras.make_datasets(config, SIZE)
    os.remove(root / "test")
    os.symlink(tmp_path / "unmounted" / "class_2", root / "train" / "class_2")
    os.symlink(tmp_path / "nowhere", root / "train" / ".#lock")
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        data = tl_keras.make_datasets(config, SIZE)
    assert data.class_names == ["class_0", "class_1"]
    assert "Ignoring 1 link(s) in" in caplog.text
    assert "class_2" in caplog.text and ".#lock" not in caplog.text


@pytest.mark.parametrize("names", [("cat ", "cat"), (" cat", "cat "),
                                   ("A", "a")])
def test_classes_alike_but_for_end_spaces_are_refused(tmp_path,
                                                      tiny_config, names):
    # Two classes that read the same in the log and labels.txt; A/ and a/
    # (a letters dataset) are two classes.
    root = tmp_path / "d"
    for i, name in enumerate(names):
        write_image_folder(str(root / name), num_classes=1, per_class=4,
                           formats=("png",), seed=i)
    write_image_folder(str(root / "dog"), num_classes=1, per_class=4,
                       formats=("png",), seed=9)
    config = tiny_config.replace(data_dir=str(root))
    if names == ("A", "a"):
        assert tl_keras.make_datasets(config, SIZE).class_names[:2] == [
            "A", "a"]
        return
    with pytest.raises(tl_keras.InputError,
                       match="differ only in spaces at either end"):
        tl_keras.make_datasets(config, SIZE)


def test_a_fifo_named_like_an_image_is_unreadable_not_a_hang(tmp_path):
    # PIL's open of a FIFO blocked the run forever, before anything was
    # written.
    from tl_keras.data.images import find_unreadable

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert find_unreadable([str(fifo)]) == [str(fifo)]


def test_imbalanced_classes_are_said(tiny_config, caplog):
    # Nothing reweights classes; a model answering the large one scored
    # high without a word (audit, session 41).
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (48, 16, 16, 3)).astype(np.float32)
    for labels, said in (([0] * 40 + [1] * 8, False),
                         ([0] * 46 + [1] * 2, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tl_keras"):
            tl_keras.from_arrays(x, np.array(labels), tiny_config.replace(
                validation_split=0.1, test_split=0.0), SIZE)
        assert ("Imbalanced classes: 0 has" in caplog.text) == said, labels


def test_make_datasets_keep_copies_is_a_bool(tiny_config):
    # keep_copies="no" was true: byte-for-byte copies were kept.
    with pytest.raises(tl_keras.InputError,
                       match="Invalid keep_copies.*Received: keep_copies='no'"):
        tl_keras.make_datasets(tiny_config, SIZE, keep_copies="no")
