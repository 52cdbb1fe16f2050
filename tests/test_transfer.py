"""The transfer-learning invariants, on compact_cnn and on a real
keras.applications base (MobileNetV2, weights=None at 32 px).

Random-weight bases give near-constant features in inference mode (BN
moving statistics start at 0 / 1), which would let some checks pass
trivially; each base here is first trained from scratch for a few steps so
its BatchNorm statistics and features are real.
"""

import os

import keras
import numpy as np
import pytest
from conftest import class_image

import tl_keras
from tl_keras import models
from tl_keras.training import plan_stages

SIZE = 32


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = np.stack([np.asarray(class_image(int(i), rng, SIZE)) for i in y])
    return x.astype("float32"), y.astype("int32")


def calibrated_model(name, arrays):
    """A classifier whose base was trained from scratch for a few steps.

    Returns:
      (model, blocks, BatchNorm statistics before and after that scratch
      stage).
    """
    keras.utils.set_random_seed(0)
    built = tl_keras.build_backbone(name, "none", SIZE)
    model = models.build_classifier(built, 3, dropout=0.5)
    before = bn_stats(built.base)
    models.configure_stage(model, "scratch", built.blocks())
    models.compile_for_stage(model, 1e-3)
    model.fit(*arrays, batch_size=16, epochs=1, verbose=0)
    return model, built.blocks(), (before, bn_stats(built.base))


def snapshot(weights):
    return {w.path: np.array(w.numpy()) for w in weights}


def bn_stats(base):
    return snapshot([w for layer in base.layers
                     if isinstance(layer, keras.layers.BatchNormalization)
                     for w in (layer.moving_mean, layer.moving_variance)])


def changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


@pytest.fixture(scope="module", params=["compact_cnn", "mobilenet_v2"])
def trained(request, arrays):
    return calibrated_model(request.param, arrays)


def test_scratch_stage_moves_batchnorm_statistics(trained):
    # The fixture's own scratch stage (one epoch from random init).
    _, _, (before, after) = trained
    assert before and changed(before, after) == set(before)


def test_head_stage_leaves_base_bit_identical(trained, arrays):
    model, blocks, _ = trained
    base = models.get_base(model)
    before = snapshot(base.weights)
    head_before = snapshot(model.get_layer("logits").weights)
    models.configure_stage(model, "head", blocks)
    models.compile_for_stage(model, 1e-2)
    assert len(model.trainable_weights) == 2  # the Dense kernel and bias
    model.fit(*arrays, batch_size=16, epochs=1, verbose=0)
    assert changed(before, snapshot(base.weights)) == set()
    head_after = snapshot(model.get_layer("logits").weights)
    assert changed(head_before, head_after) == set(head_before)


def test_finetune_keeps_bn_statistics_and_trains_kernels(trained, arrays):
    model, blocks, _ = trained
    base = models.get_base(model)
    stats = bn_stats(base)
    kernels = snapshot([w for w in base.weights if "kernel" in w.path])
    models.configure_stage(model, "finetune", blocks, unfreeze=None)
    models.compile_for_stage(model, 1e-3)
    model.fit(*arrays, batch_size=16, epochs=1, verbose=0)
    assert changed(stats, bn_stats(base)) == set()
    after = snapshot([w for w in base.weights if "kernel" in w.path])
    assert changed(kernels, after) == set(kernels)


def test_unfreezing_top_blocks_trains_only_those(trained, arrays):
    model, blocks, _ = trained
    base = models.get_base(model)
    top = {w.path for _, layers in blocks[-2:] for layer in layers
           for w in layer.trainable_weights}
    top_kernels = {p for p in top if "kernel" in p}
    before = snapshot(base.weights)
    models.configure_stage(model, "finetune", blocks, unfreeze=2)
    models.compile_for_stage(model, 1e-3)
    model.fit(*arrays, batch_size=16, epochs=1, verbose=0)
    moved = changed(before, snapshot(base.weights))
    assert top_kernels and top_kernels <= moved
    assert moved <= top  # nothing below the top 2 blocks, no BN stats


def test_a_compiled_stage_traces_its_train_step_once(arrays):
    # compile_for_stage makes the optimizer's slots and the metric's
    # variables up front; made in the first trace instead, TensorFlow
    # traces the step a second time (a whole extra trace of the model).
    model, blocks, _ = calibrated_model("compact_cnn", arrays)
    models.configure_stage(model, "finetune", blocks, unfreeze=None)
    models.compile_for_stage(model, 1e-3)
    traces = []
    step = model.train_step
    model.train_step = lambda data: traces.append(1) or step(data)
    history = model.fit(*arrays, batch_size=16, epochs=2, verbose=0)
    assert len(traces) == 1
    assert {"loss", "accuracy"} <= set(history.history)


def test_head_dropout_is_active_in_training_only(trained, arrays):
    model, blocks, _ = trained
    x = arrays[0][:8]
    for stage in ("head", "finetune"):
        models.configure_stage(model, stage, blocks)
        train_a = model(x, training=True).numpy()
        train_b = model(x, training=True).numpy()
        infer_a = model(x, training=False).numpy()
        infer_b = model(x, training=False).numpy()
        assert not np.allclose(train_a, infer_a), stage
        assert not np.allclose(train_a, train_b), stage
        np.testing.assert_array_equal(infer_a, infer_b)


def test_frozen_base_runs_in_inference_mode(trained, arrays):
    """With the base frozen, training=True reaches the head only: the
    pooled features equal those of inference mode."""
    model, blocks, _ = trained
    models.configure_stage(model, "head", blocks)
    features = keras.Model(model.input, model.get_layer("pool").output)
    x = arrays[0][:8]
    np.testing.assert_allclose(features(x, training=True),
                               features(x, training=False), atol=1e-6)


def test_unfreeze_beyond_block_count_is_clear(trained):
    model, blocks, _ = trained
    with pytest.raises(tl_keras.InputError) as e:
        models.configure_stage(model, "finetune", blocks,
                                 unfreeze=len(blocks) + 1)
    assert f"Allowed: all or 1..{len(blocks)}" in str(e.value)


def test_stages_follow_the_approach():
    base = tl_keras.Config(data_dir="d", workdir="w", epochs=3,
                           finetune_epochs=4, learning_rate=0.01,
                           finetune_learning_rate=1e-5)
    names = {a: [(s.name, s.epochs, s.learning_rate)
                 for s in plan_stages(base.replace(approach=a).training)]
             for a in ("scratch", "transfer", "finetune")}
    assert names == {
        "scratch": [("scratch", 3, 0.01)],
        "transfer": [("head", 3, 0.01)],
        "finetune": [("head", 3, 0.01), ("finetune", 4, 1e-5)],
    }


def test_head_stage_checkpoint_keeps_and_restores_the_trainable_weights(
        tmp_path):
    from tl_keras.training.checkpoints import StageCheckpoint

    built = models.build_backbone("compact_cnn", "none", 32)
    model = models.build_classifier(built, 3, 0.0)
    models.configure_stage(model, "head", built.blocks())
    norm = model.get_layer("feature_norm")
    channels = norm.mean.shape[0]
    rng = np.random.default_rng(0)
    norm.set_statistics(rng.normal(3.0, 2.0, (50, channels)))
    best = [np.asarray(w) for w in model.trainable_weights]
    statistics = [np.asarray(w) for w in norm.weights]
    frozen = [np.asarray(w) for w in model.non_trainable_weights]
    checkpoint = StageCheckpoint(str(tmp_path), "head", target=model,
                                 trainable_only=True)
    checkpoint.on_epoch_end(0, {"val_loss": 1.0, "val_accuracy": 0.5})
    assert sorted(os.listdir(tmp_path)) == ["best.json",
                                            "best.trainable.npz"]
    for w in model.trainable_weights:
        w.assign(w + 1.0)
    # The head's feature statistics are kept with the head (a resumed
    # fine-tune restores them from here).
    norm.set_statistics(rng.normal(-1.0, 5.0, (50, channels)))
    # A later, worse epoch is not kept; the end of training restores.
    checkpoint.on_epoch_end(1, {"val_loss": 2.0, "val_accuracy": 0.4})
    checkpoint.on_train_end()
    for got, want in zip(model.trainable_weights, best, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    for got, want in zip(model.non_trainable_weights, frozen, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    for got, want in zip(norm.weights, statistics, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # The head's state is the same whichever stage the model is set for
    # (a fine-tune goes on from the head's last weights).
    models.configure_stage(model, "scratch", built.blocks())
    checkpoint.restore_best(model)
    # A checkpoint of another head is refused, naming the counts.
    np.savez(checkpoint.path, *best, *statistics[:1])
    with pytest.raises(tl_keras.InputError, match="holds 3 arrays, this "
                       "model's head has 4"):
        checkpoint.restore_best(model)


def test_fine_tune_goes_on_from_the_head_s_last_epoch_and_must_beat_its_kept(
        tmp_path):
    # The Keras guide fine-tunes from the head as its training ended; the
    # head's kept epoch stays the fine-tune stage's epoch 0. Fails if the
    # fine-tune starts from the kept head (tl_keras before 2026-12-01).
    from tl_keras.training.checkpoints import StageCheckpoint

    built = models.build_backbone("compact_cnn", "none", 32)
    model = models.build_classifier(built, 3, 0.0)
    models.configure_stage(model, "head", built.blocks())
    head_dir, finetune_dir = tmp_path / "head", tmp_path / "finetune"
    head_dir.mkdir()
    finetune_dir.mkdir()
    head = StageCheckpoint(str(head_dir), "head", target=model,
                           trainable_only=True, val_images=25)
    norm = model.get_layer("feature_norm")
    rng = np.random.default_rng(0)
    norm.set_statistics(rng.normal(3.0, 2.0, (50, norm.mean.shape[0])))
    head.on_epoch_end(0, {"val_loss": 1.0, "val_accuracy": 0.6})
    kept = [np.asarray(w) for w in model.weights]
    for w in model.trainable_weights:
        w.assign(w + 1.0)
    norm.set_statistics(rng.normal(-1.0, 5.0, (50, norm.mean.shape[0])))
    head.on_epoch_end(1, {"val_loss": 1.5, "val_accuracy": 0.6})
    last = [np.asarray(w) for w in model.weights]
    head.on_train_end()
    assert head.best_epoch == 1
    for got, want in zip(model.weights, kept, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    models.configure_stage(model, "finetune", built.blocks(), 1)
    finetune = StageCheckpoint(str(finetune_dir), "finetune", target=model,
                               val_images=25)
    assert finetune.start_from(
        {"best_val_loss": 1.0, "best_val_accuracy": 0.6},
        str(head_dir)) == "last epoch"
    assert finetune.best_epoch == 0
    for got, want in zip(model.weights, last, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # No fine-tune epoch preferred: the end restores the kept head.
    finetune.on_epoch_end(0, {"val_loss": 2.0, "val_accuracy": 0.4})
    finetune.on_train_end()
    for got, want in zip(model.weights, kept, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # A head stage that diverged leaves no last weights (they are NaN):
    # the fine-tune goes on from the kept head. So does a rerun whose
    # weights, restored from the diverged epoch's backup, are NaN while
    # it no longer knows the stage diverged.
    for diverged in ((2, 1), None):
        models.configure_stage(model, "head", built.blocks())
        assert "last.trainable.npz" in os.listdir(head_dir)
        head = StageCheckpoint(str(head_dir), "head", target=model,
                               trainable_only=True, val_images=25)
        head.diverged_at = diverged
        model.trainable_weights[0].assign(
            np.full(model.trainable_weights[0].shape, np.nan))
        head.on_train_end()
        assert "last.trainable.npz" not in os.listdir(head_dir)
        models.configure_stage(model, "finetune", built.blocks(), 1)
        other = tmp_path / f"other{diverged is None}"
        other.mkdir()
        assert StageCheckpoint(str(other), "finetune", target=model,
                               val_images=25).start_from(
            {"best_val_loss": 1.0, "best_val_accuracy": 0.6},
            str(head_dir)) == "kept epoch"
        for got, want in zip(model.weights, kept, strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)
        _save_last(model, head_dir)  # for the next case


def _save_last(model, head_dir):
    from tl_keras.training import checkpoints

    models.configure_stage(model, "head", [])
    checkpoints._save_head(model, str(head_dir / checkpoints.LAST_HEAD))


def _checkpoint(folder, **kwargs):
    from tl_keras.training.checkpoints import StageCheckpoint

    folder.mkdir(exist_ok=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    return StageCheckpoint(str(folder), "head", target=model, **kwargs)


def _epochs(checkpoint, scores):
    """Feeds (val_accuracy, val_loss) epochs; returns the kept epoch
    after each."""
    kept = []
    for accuracy, loss in scores:
        checkpoint.on_epoch_end(len(kept), {"val_accuracy": accuracy,
                                            "val_loss": loss, "loss": 1.0})
        kept.append(checkpoint.best_epoch)
    return kept


# Bench seed 15's fine-tune head (25 validation images): 0.68 at a high
# loss early, 0.64 at a far lower loss later; then lower accuracies at
# lower losses, then a clear lead.
SEED_15 = [(0.68, 1.23), (0.64, 0.95), (0.60, 0.90), (0.56, 0.80),
           (0.84, 1.50)]


def test_stage_checkpoint_keeps_the_lowest_loss_within_a_standard_error(
        tmp_path):
    from tl_keras.training.checkpoints import accuracy_noise

    assert accuracy_noise(0.68, 25) == pytest.approx(0.0883, abs=1e-4)
    # Agresti-Coull: 25 of 25 right still has a band (plain p(1-p)/n: 0).
    assert accuracy_noise(1.0, 25) == pytest.approx(0.0471, abs=1e-4)
    checkpoint = _checkpoint(tmp_path / "a", val_images=25)
    # 0.64 and 0.60 are within a standard error (0.088) of 0.68 and have
    # lower losses; 0.56 is not, whatever its loss (the band is measured
    # from the highest accuracy, not the kept one); 0.84 leads by more
    # than its own standard error (0.075).
    assert _epochs(checkpoint, SEED_15) == [1, 2, 3, 3, 5]
    assert checkpoint.max_accuracy == 0.84
    # A perfect epoch does not end the band: a lower loss one image
    # below it is kept.
    checkpoint = _checkpoint(tmp_path / "perfect", val_images=25)
    assert _epochs(checkpoint, [(0.96, 0.2), (1.0, 0.9), (0.96, 0.15)]) == [
        1, 1, 3]
    # Accuracy first, losses breaking ties: without a validation count,
    # and on a validation set large enough for 0.04 to be a real lead.
    for images in (None, 1000):
        checkpoint = _checkpoint(tmp_path / str(images), val_images=images)
        assert _epochs(checkpoint, SEED_15) == [1, 1, 1, 1, 5]


def test_stage_checkpoint_band_survives_a_resume(tmp_path):
    first = _checkpoint(tmp_path, val_images=25)
    assert _epochs(first, SEED_15[:3]) == [1, 2, 3]
    # A resumed stage reads the highest accuracy back (from best.json):
    # 0.52 is below 0.68's band (0.592) though within 0.60's (0.508).
    resumed = _checkpoint(tmp_path, val_images=25)
    assert (resumed.best_epoch, resumed.max_accuracy) == (3, 0.68)
    resumed.on_epoch_end(3, {"val_accuracy": 0.52, "val_loss": 0.1})
    assert resumed.best_epoch == 3
    # The highest accuracy is recorded when its epoch is not kept too: a
    # resume measures the band from it.
    second = _checkpoint(tmp_path / "top", val_images=25)
    assert _epochs(second, [(0.64, 0.8), (0.68, 1.2)]) == [1, 1]
    resumed = _checkpoint(tmp_path / "top", val_images=25)
    assert (resumed.best_epoch, resumed.max_accuracy) == (1, 0.68)
    resumed.on_epoch_end(2, {"val_accuracy": 0.56, "val_loss": 0.5})
    assert resumed.best_epoch == 1
    # A fine-tune stage's epoch 0 is the head's kept epoch, in its band.
    finetune = _checkpoint(tmp_path / "f", val_images=25)
    finetune.start_from({"best_val_loss": 0.9, "best_val_accuracy": 0.6,
                         "max_val_accuracy": 0.68})
    assert _epochs(finetune, [(0.52, 0.1), (0.62, 0.85)]) == [0, 2]


@pytest.mark.slow
def test_stage_checkpoint_weighs_leads_against_the_validation_count(
        tiny_config, monkeypatch):
    from tl_keras.training import checkpoints

    seen = []
    noise = checkpoints.accuracy_noise
    monkeypatch.setattr(checkpoints, "accuracy_noise", lambda p, n: (
        seen.append(n), noise(p, n))[1])
    metrics = tl_keras.train(tiny_config)
    assert set(seen) == {metrics["counts"]["val"]}
    for stage in metrics["stages"].values():
        history = stage["history"]["val_accuracy"]
        assert stage["max_val_accuracy"] >= max(history) - 1e-6  # rounded
        assert stage["best_val_accuracy"] >= stage["max_val_accuracy"] - (
            noise(stage["max_val_accuracy"], metrics["counts"]["val"])
            ) - 1e-6


def test_feature_standardization_standardizes_and_stays_out_of_training():
    layer = models.FeatureStandardization()
    features = np.random.default_rng(0).normal(
        [5.0, -2.0, 100.0], [3.0, 0.5, 40.0], (400, 3))
    features[:, 2] = 7.0  # a channel that never varies is centred only
    layer.build((None, 3))
    np.testing.assert_array_equal(layer(features[:2].astype("float32")),
                                  features[:2].astype("float32"))
    layer.set_statistics(features)
    out = np.asarray(layer(features.astype("float32")))
    np.testing.assert_allclose(out[:, :2].mean(0), 0.0, atol=1e-4)
    # 1 / (std + 1e-3): within 0.2% of 1 for a std of 0.5.
    np.testing.assert_allclose(out[:, :2].std(0), 1.0, atol=3e-3)
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-5)
    assert layer.trainable_weights == []
    # A channel that fires on one image in a thousand is not scaled
    # beyond 1 / (1% of the median channel's std).
    rare = np.random.default_rng(1).normal(0, 2.0, (1000, 4))
    rare[:, 3] = 0.0
    rare[7, 3] = 0.05
    layer = models.FeatureStandardization()
    layer.build((None, 4))
    layer.set_statistics(rare)
    assert np.asarray(layer.inverse_std)[3] <= 1 / (0.01 * 2.0) + 1e-3


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.slow
def test_head_trains_on_standardized_features(tiny_config, cached):
    # Both head-stage paths (features cached once, or images through the
    # frozen base every epoch) set the statistics before the head trains,
    # from the training images' pooled features; model.keras keeps them.
    config = tiny_config.replace(approach="transfer", epochs=1,
                                 augment="none", feature_cache=cached)
    tl_keras.train(config)
    model = keras.models.load_model(
        os.path.join(config.runtime.workdir, "model.keras"))
    norm = model.get_layer("feature_norm")
    extractor = keras.Model(model.input, model.get_layer("pool").output)
    data = tl_keras.make_datasets(config, 32)
    features = np.concatenate([np.asarray(extractor(x))
                               for x, _ in data.train_ordered])
    np.testing.assert_allclose(np.asarray(norm.mean), features.mean(0),
                               rtol=1e-3, atol=1e-4)
    assert np.asarray(norm.inverse_std).max() > 1.0 + 1e-3  # not identity


class _PoisonWeights(keras.callbacks.Callback):
    """Turns the trainable weights of the model named `model_name` to NaN
    before batch `batch` of epoch `epoch` (0-based): a diverged step."""

    def __init__(self, model_name, epoch, batch):
        super().__init__()
        self.model_name, self.epoch, self.batch = model_name, epoch, batch
        self.current = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.model.name, self.current, batch) == (
                self.model_name, self.epoch, self.batch):
            for w in self.model.trainable_weights:
                w.assign(np.full(w.shape, np.nan, "float32"))


@pytest.mark.slow
def test_a_diverged_finetune_stops_and_keeps_the_last_good_weights(
        tiny_config):
    config = tiny_config.replace(augment="none", epochs=1, finetune_epochs=3)
    metrics = tl_keras.train(config, callbacks=[
        _PoisonWeights("tl_keras_classifier", 1, 1)])
    finetune = metrics["stages"]["finetune"]
    assert finetune["diverged"] == {"epoch": 2, "batch": 2}
    assert finetune["best_epoch"] in (0, 1)  # never the diverged epoch
    assert len(finetune["history"]["loss"]) == 2  # it stopped there
    model = keras.models.load_model(
        os.path.join(config.runtime.workdir, "model.keras"))
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert 0 <= metrics["test_accuracy"] <= 1


def test_a_stage_that_diverges_before_any_good_epoch_is_an_error(
        tiny_config):
    config = tiny_config.replace(approach="transfer", augment="none",
                                 epochs=2)
    with pytest.raises(tl_keras.InputError,
                       match="Invalid learning_rate: the head stage "
                             "diverged"):
        tl_keras.train(config, callbacks=[_PoisonWeights("cached_head", 0,
                                                         1)])


def test_the_library_calls_check_their_arguments():
    # From a Keras project (audit, session 41): build_classifier(bb,
    # y.max() + 1) failed inside Keras on a numpy int ("expected a
    # positive integer. Received: units=2"); list_blocks(bb.base) gave
    # one block per layer, not the blocks a run unfreezes; configure_stage
    # took another model's blocks (this one's whole base trained), a
    # classifier's (its base stayed frozen), and unfreeze='all' or 1.5
    # were TypeErrors.
    built = models.build_backbone("compact_cnn", "none", image_size=32)
    model = models.build_classifier(built, np.arange(3).max() + 1)
    assert model.output.shape[-1] == 3
    for dropout in (1.5, -0.1, "0.2"):
        with pytest.raises(tl_keras.InputError, match="Invalid dropout"):
            models.build_classifier(built, 3, dropout)
    blocks = models.list_blocks(built)
    assert [name for name, _ in blocks] == [n for n, _ in built.blocks()]
    models.configure_stage(model, "finetune", blocks, unfreeze="all")
    assert all(w.trainable for w in models.get_base(model).weights
               if "kernel" in w.path)
    other = models.build_classifier(
        models.build_backbone("compact_cnn", "none", image_size=32), 3)
    for wrong in ([], models.list_blocks(other), models.list_blocks(model)):
        with pytest.raises(tl_keras.InputError, match="Invalid blocks"):
            models.configure_stage(other, "finetune", wrong, unfreeze=1)
    with pytest.raises(tl_keras.InputError, match="Invalid blocks"):
        models.configure_stage(other, "finetune", blocks, unfreeze=1)
    for count in ("2", 1.5, True):
        with pytest.raises(tl_keras.InputError, match="Invalid unfreeze"):
            models.configure_stage(model, "finetune", blocks, unfreeze=count)
    with pytest.raises(tl_keras.InputError, match="Invalid model"):
        models.configure_stage(keras.Sequential([keras.layers.Dense(2)]),
                               "head", blocks)
    # Blocks not given was a TypeError; a count for a stage that unfreezes
    # nothing was ignored; a name for list_blocks an AttributeError.
    with pytest.raises(tl_keras.InputError, match="Invalid blocks"):
        models.configure_stage(model, "finetune", None, unfreeze=1)
    for stage in ("head", "scratch"):
        with pytest.raises(tl_keras.InputError, match=(
                f"Invalid unfreeze.*with stage '{stage}'")):
            models.configure_stage(model, stage, blocks, unfreeze=2)
        models.configure_stage(model, stage, blocks, unfreeze="all")
    models.configure_stage(model, "head", blocks)
    with pytest.raises(tl_keras.InputError, match="Invalid unfreeze"):
        models.configure_stage(model, "scratch", blocks, unfreeze=2)
    assert not models.get_base(model).trainable  # the refusal changed it
    with pytest.raises(tl_keras.InputError,
                       match="Invalid base.*Received: base='compact_cnn'"):
        models.list_blocks("compact_cnn")
    with pytest.raises(tl_keras.InputError, match="Invalid backbone"):
        models.get_backbone_spec(None)


def test_feature_standardization_is_scale_free_and_refuses_nan():
    # An absolute epsilon of 1e-3 left features that vary by less than
    # that centred only: the advisor's head at chance where the probe
    # separated them (audit, session 41). Features with a channel above
    # it are standardised as before.
    rng = np.random.default_rng(0)
    features = rng.normal(5.0, 2.0, (200, 8))
    reference = models.FeatureStandardization()
    reference.build((None, 8))
    reference.set_statistics(features)
    out = np.asarray(reference(features))
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    for scale in (3e-4, 1e-6):  # every channel below epsilon
        layer = models.FeatureStandardization()
        layer.build((None, 8))
        layer.set_statistics(features * scale)
        np.testing.assert_allclose(np.asarray(layer(features * scale)), out,
                                   atol=1e-2, err_msg=str(scale))
    broken = features.copy()
    broken[3, 2] = np.nan
    for bad in (broken, features[:0]):
        with pytest.raises(tl_keras.InputError, match="Invalid features"):
            reference.set_statistics(bad)
