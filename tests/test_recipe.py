"""The recipe options (issue: fine-tuning beyond the Keras guide): each
does what it says, the defaults are the guide's plain Adam exactly, bad
values are clear errors, and BatchNorm stays frozen with all of them on."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tl_keras
from tl_keras import models
from tl_keras.models import recipe

TRAINING = tl_keras.Config().training


def training(**changes):
    return tl_keras.Config(**changes).training


def lr_at(schedule, step):
    return float(schedule(step)) if callable(schedule) else schedule


def test_the_default_is_the_guides_plain_adam():
    optimizer = recipe.make_optimizer(TRAINING, 1e-3, 10, 5)
    assert type(optimizer) is keras.optimizers.Adam
    assert optimizer.weight_decay is None
    assert recipe.learning_rate(TRAINING, 1e-3, 10, 5) == 1e-3
    assert isinstance(recipe.make_loss(TRAINING),
                      keras.losses.SparseCategoricalCrossentropy)


def test_learning_rate_schedules_at_given_steps():
    # 10 epochs of 10 steps. Cosine: lr at step 0, lr/2 halfway, 0 at the
    # end.
    cosine = recipe.learning_rate(training(lr_schedule="cosine"), 0.1, 10,
                                  10)
    assert lr_at(cosine, 0) == pytest.approx(0.1)
    assert lr_at(cosine, 50) == pytest.approx(0.05)
    assert lr_at(cosine, 100) == pytest.approx(0.0, abs=1e-9)
    # 2 warmup epochs (20 steps): linear from 0.1/20 to 0.1, then cosine
    # over the remaining 80 steps.
    warm = recipe.learning_rate(
        training(lr_schedule="cosine", warmup_epochs=2), 0.1, 10, 10)
    assert lr_at(warm, 0) == pytest.approx(0.005)
    assert lr_at(warm, 10) == pytest.approx(0.005 + 0.095 * 10 / 20)
    assert lr_at(warm, 20) == pytest.approx(0.1)
    assert lr_at(warm, 60) == pytest.approx(0.05)
    # Constant after a warmup.
    flat = recipe.learning_rate(training(warmup_epochs=2), 0.1, 10, 10)
    assert lr_at(flat, 5) < 0.1 and lr_at(flat, 20) == pytest.approx(0.1)
    assert lr_at(flat, 99) == pytest.approx(0.1)


def _dense_and_norms():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    return keras.Model(inputs, x)


def test_adamw_decays_kernels_only():
    model = _dense_and_norms()
    optimizer = recipe.make_optimizer(
        training(optimizer="adamw", weight_decay=0.1), 0.5, 1, 1)
    optimizer.build(model.trainable_variables)
    before = {v.path: np.asarray(v) for v in model.trainable_variables}
    # Zero gradients: Adam moves nothing, only the decay acts.
    optimizer.apply([np.zeros(v.shape, "float32")
                     for v in model.trainable_variables],
                    model.trainable_variables)
    moved = {v.path for v in model.trainable_variables
             if not np.array_equal(np.asarray(v), before[v.path])}
    assert moved == {"dense/kernel"}
    kernel = model.get_layer("dense").kernel
    np.testing.assert_allclose(np.asarray(kernel),
                               before["dense/kernel"] * (1 - 0.5 * 0.1),
                               rtol=1e-6)


def test_layerwise_rate_scales_the_update_not_the_gradient():
    a = keras.Variable(np.zeros(3, "float32"), name="a")
    b = keras.Variable(np.zeros(3, "float32"), name="b")
    gradient = np.array([0.3, -2.0, 5.0], "float32")
    optimizer = models.ScaledAdam(lr_multipliers={b.path: 0.25},
                                  learning_rate=0.01)
    optimizer.apply([gradient, gradient], [a, b])
    # Adam's first step is lr * sign(g) (m / sqrt(v) = g / |g|): the
    # bottom variable's update is 0.25 of the top's.
    np.testing.assert_allclose(np.asarray(b), 0.25 * np.asarray(a),
                               rtol=1e-5)
    # Scaling the gradient instead changes nothing: Adam divides it out.
    c = keras.Variable(np.zeros(3, "float32"), name="c")
    d = keras.Variable(np.zeros(3, "float32"), name="d")
    plain = keras.optimizers.Adam(learning_rate=0.01)
    plain.apply([gradient, 0.25 * gradient], [c, d])
    np.testing.assert_allclose(np.asarray(d), np.asarray(c), rtol=1e-4)


def test_layerwise_rate_scales_the_weight_decay_too():
    # Keras's own weight_decay would use the unscaled rate: a bottom block
    # trained at a quarter of the rate would be decayed at the full one.
    a = keras.Variable(np.ones(3, "float32"), name="a")
    b = keras.Variable(np.ones(3, "float32"), name="b")
    bias = keras.Variable(np.ones(3, "float32"), name="bias")
    optimizer = models.ScaledAdam(lr_multipliers={b.path: 0.25},
                                  decoupled_decay=0.1, no_decay=("bias",),
                                  learning_rate=0.01)
    zeros = np.zeros(3, "float32")
    optimizer.apply([zeros, zeros, zeros], [a, b, bias])
    np.testing.assert_allclose(np.asarray(a), 1 - 0.01 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b), 1 - 0.25 * 0.01 * 0.1,
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(bias), 1.0)
    # The settings survive saving (a model.keras holds its optimizer).
    again = models.ScaledAdam.from_config(optimizer.get_config())
    assert (again.decoupled_decay, again.no_decay, again.lr_multipliers) == (
        0.1, ("bias",), {b.path: 0.25})


def test_ema_follows_the_warmed_up_average_of_the_weights():
    # tf.train.ExponentialMovingAverage's warmup: decay min(d, (1 + t) /
    # (10 + t)) after step t, the average starting at the weights.
    w = keras.Variable(np.zeros(2, "float32"), name="w")
    optimizer = models.ScaledAdam(learning_rate=0.1, use_ema=True,
                                  ema_momentum=0.5)
    optimizer.build([w])
    expected = None
    for t in range(6):
        optimizer.apply([np.array([1.0, -1.0], "float32")], [w])
        value = np.asarray(w)
        decay = 0.0 if t == 0 else min(0.5, (1 + t) / (10 + t))
        expected = value if expected is None else (
            decay * expected + (1 - decay) * value)
        np.testing.assert_allclose(
            np.asarray(optimizer._model_variables_moving_average[0]),
            expected, rtol=1e-6)
    # The average trails the weights (they moved every step).
    assert abs(expected[0]) < abs(np.asarray(w)[0])
    # Keras's own fixed decay from step 1 (the test can fail): another
    # average.
    plain = keras.optimizers.Adam(learning_rate=0.1, use_ema=True,
                                  ema_momentum=0.5)
    v = keras.Variable(np.zeros(2, "float32"), name="v")
    for _ in range(6):
        plain.apply([np.array([1.0, -1.0], "float32")], [v])
    assert not np.allclose(np.asarray(plain._model_variables_moving_average[
        0]), expected, rtol=1e-3)


@pytest.mark.slow
def test_ema_weights_are_validated_checkpointed_and_saved(tiny_config,
                                                          monkeypatch):
    # Records what the best-epoch checkpoint saves and what the epoch
    # backup saves: the checkpoint gets the average (in the model) while
    # the backup gets the trained weights (the average in the optimizer).
    from tl_keras.training import backups, checkpoints
    saved, backed_up = {}, {}
    save, backup = (checkpoints.StageCheckpoint._save,
                    backups.EpochBackup.on_epoch_end)

    def record_save(self, value, accuracy, epoch, model):
        if epoch:  # (epoch 0: the head's kept weights, the one to beat)
            fit = self.model
            saved[self.stage_name, epoch] = (
                [np.asarray(v) for v in fit.trainable_variables],
                [np.asarray(a) for a in
                 fit.optimizer._model_variables_moving_average])
        save(self, value, accuracy, epoch, model)

    def record_backup(self, epoch, logs=None):
        backed_up[epoch + 1] = (
            [np.asarray(v) for v in self.model.trainable_variables],
            [np.asarray(a) for a in
             self.model.optimizer._model_variables_moving_average])
        backup(self, epoch, logs)

    monkeypatch.setattr(checkpoints.StageCheckpoint, "_save", record_save)
    monkeypatch.setattr(backups.EpochBackup, "on_epoch_end",
                        record_backup)
    config = tiny_config.replace(approach="finetune", epochs=1,
                                 finetune_epochs=3, ema=0.9,
                                 finetune_learning_rate=1e-2, augment="flip")
    metrics = tl_keras.train(config)
    assert metrics["stages"]["finetune"]["recipe"]["ema"] == 0.9
    # The fine-tune trained on from the head's last epoch, which the head
    # stage wrote beside its kept one.
    assert metrics["stages"]["finetune"]["started_from"] == (
        "the head's last epoch")
    assert os.path.isfile(os.path.join(config.runtime.workdir, "checkpoints",
                                       "head", "last.trainable.npz"))
    finetune = {e: v for (stage, e), v in saved.items()
                if stage == "finetune"}
    assert finetune, "no fine-tune epoch beat the head"
    for epoch, (model_weights, slots) in finetune.items():
        trained, average = backed_up[epoch]
        for a, b in zip(model_weights + slots, average + trained,
                        strict=True):
            np.testing.assert_array_equal(a, b)
        assert any(not np.allclose(a, b) for a, b in zip(
            average, trained, strict=True))
    best = metrics["stages"]["finetune"]["best_epoch"]
    if best:
        model = keras.models.load_model(
            os.path.join(config.runtime.workdir, "model.keras"))
        for weight, value in zip(model.trainable_variables,
                                 finetune[best][0], strict=True):
            np.testing.assert_allclose(np.asarray(weight), value, atol=1e-7)


def test_gates_hold_a_variable_still_until_its_epoch():
    top = keras.Variable(np.zeros(3, "float32"), name="top")
    low = keras.Variable(np.zeros(3, "float32"), name="low")
    optimizer = models.ScaledAdam(unfreeze_epochs={low.path: 2},
                                  decoupled_decay=0.1, learning_rate=0.01)
    optimizer.build([top, low])
    gradient = np.ones(3, "float32")
    for epoch, low_moves in ((0, False), (1, False), (2, True)):
        optimizer.set_epoch(epoch)
        before = np.asarray(low).copy(), np.asarray(top).copy()
        optimizer.apply([gradient, gradient], [top, low])
        assert not np.array_equal(np.asarray(top), before[1])
        assert (not np.array_equal(np.asarray(low), before[0])) == low_moves
    again = models.ScaledAdam.from_config(optimizer.get_config())
    assert again.unfreeze_epochs == {low.path: 2}


@pytest.mark.slow
def test_gradual_unfreezing_adds_a_block_every_e_epochs(tiny_config):
    # compact_cnn has blocks block1..block4; --unfreeze=3 every epoch:
    # block4 trains from epoch 1, block3 from 2, block2 from 3, block1 never.
    snapshots = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            snapshots.append([self.weights()])  # one list per stage's fit

        def on_epoch_end(self, epoch, logs=None):
            snapshots[-1].append(self.weights())

        def weights(self):  # {} for the head stage's cached-feature model
            names = [layer.name for layer in self.model.layers]
            if "backbone" not in names:
                return {}
            base = models.get_base(self.model)
            return {k: np.asarray(base.get_layer(f"{k}_conv1").kernel)
                    for k in ("block1", "block2", "block3", "block4")}

    config = tiny_config.replace(epochs=1, finetune_epochs=3, unfreeze="3",
                                 gradual_unfreeze=1, augment="none",
                                 finetune_learning_rate=1e-2)
    metrics = tl_keras.train(config, callbacks=[Record()])
    assert metrics["stages"]["finetune"]["recipe"]["gradual_unfreeze"] == 1
    finetune = snapshots[-1]
    moved = [{k for k in after if not np.array_equal(after[k], before[k])}
             for before, after in zip(finetune, finetune[1:], strict=False)]
    assert moved == [{"block4"}, {"block4", "block3"},
                     {"block4", "block3", "block2"}]


@pytest.mark.parametrize("changes, message", [
    (dict(unfreeze="all", finetune_epochs=3),  # 4 blocks
     "needs --finetune_epochs >= 4 (it is 3)"),
    (dict(unfreeze="all", finetune_epochs=6, gradual_unfreeze=2),
     "at most 1 (the stage trains 4 blocks in 6 epochs)"),
    (dict(unfreeze="2", finetune_epochs=2, gradual_unfreeze=2), None),
])
def test_gradual_unfreezing_that_cannot_finish_stops_before_training(
        tiny_config, changes, message):
    config = tiny_config.replace(**{"gradual_unfreeze": 1, **changes})
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.train(config)
    assert "gradual_unfreeze" in str(e.value)
    if message:
        assert message in str(e.value)
    assert not os.path.exists(os.path.join(config.runtime.workdir,
                                           "checkpoints"))


def test_layer_multipliers_go_down_the_blocks():
    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    model = models.build_classifier(built, 3)
    blocks = built.blocks()
    models.configure_stage(model, "finetune", blocks)
    multipliers = recipe.layer_multipliers(model, blocks, 0.5)
    for k, (_, layers) in enumerate(reversed(blocks)):
        for layer in layers:
            for variable in layer.trainable_weights:
                assert multipliers[variable.path] == 0.5 ** k
    head = model.get_layer("logits")
    assert not {v.path for v in head.weights} & set(multipliers)
    assert recipe.layer_multipliers(model, blocks, 1.0) == {}


def test_label_smoothing_matches_its_formula():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], "float32")
    labels = np.array([0, 2])
    smooth = float(recipe.make_loss(training(label_smoothing=0.3))(
        labels, logits))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    target = np.full((2, 3), 0.1)
    target[[0, 1], labels] += 0.7  # 1 - 0.3 + 0.3 / 3
    assert target.sum(1) == pytest.approx([1.0, 1.0])
    assert smooth == pytest.approx(float(-(target * log_p).sum(1).mean()),
                                   rel=1e-5)
    none = models.SmoothedSparseCrossentropy(0.0)(labels, logits)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, logits)
    assert float(none) == pytest.approx(float(plain), rel=1e-5)


def test_l2sp_is_zero_at_the_pretrained_weights_and_pulls_back():
    model = _dense_and_norms()
    variables = model.get_layer("dense").trainable_weights
    release, _ = recipe.anchor_to_pretrained(variables, 0.5)
    assert float(sum(model.losses)) == 0.0  # at w0
    for v in variables:
        v.assign(np.asarray(v) + 2.0)
    with tf.GradientTape() as tape:
        penalty = sum(model.losses)
    # 0.5 / 2 x (2^2 per element), over the kernel's 12 and the bias's 3.
    assert float(penalty) == pytest.approx(0.25 * 4 * 15)
    for grad in tape.gradient(penalty, [v.value for v in variables]):
        # strength x (w - w0) = 0.5 x 2: back toward w0, each element.
        np.testing.assert_allclose(np.asarray(grad), 1.0, rtol=1e-6)
    release()
    assert model.losses == []


def test_l2sp_in_fit_keeps_the_weights_near_their_start():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")

    def moved(strength):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        start = [np.asarray(w) for w in model.weights]
        if strength:
            recipe.anchor_to_pretrained(model.trainable_weights, strength)
        model.compile(keras.optimizers.SGD(0.05), "mse")
        model.fit(x, y, epochs=5, batch_size=16, shuffle=False, verbose=0)
        return sum(float(np.sum((np.asarray(w) - s) ** 2))
                   for w, s in zip(model.weights, start, strict=True))

    free, anchored = moved(0.0), moved(1.0)
    assert free > 0.01 and anchored < 0.5 * free


def test_l2sp_is_out_of_val_loss():
    # Keras adds regularizers to the test loss too; the best-epoch rule
    # compares a fine-tune epoch's val_loss with the head's (no penalty),
    # so the penalty must be off while fit() validates.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    release, penalty_off = recipe.anchor_to_pretrained(
        model.trainable_weights, 5.0)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    history = model.fit(x, y, validation_data=(x, y), epochs=2,
                        batch_size=8, shuffle=False, verbose=0,
                        callbacks=penalty_off)
    alone = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    assert model.evaluate(x, y, verbose=0) > alone + 1e-3  # with it
    assert history.history["val_loss"][-1] == pytest.approx(alone,
                                                            rel=1e-5)
    # Keras keeps the traced test step (with the penalty in it) after
    # the regularizers go: release() turns the penalty off in it.
    release()
    assert model.evaluate(x, y, verbose=0) == pytest.approx(alone,
                                                            rel=1e-5)


@pytest.mark.parametrize("changes, field", [
    (dict(lr_decay=0.0), "lr_decay"),
    (dict(lr_decay=1.5), "lr_decay"),
    (dict(lr_decay=0.5, approach="transfer"), "lr_decay"),
    (dict(weight_decay=0.01), "weight_decay"),  # with adam
    (dict(weight_decay=-0.1, optimizer="adamw"), "weight_decay"),
    (dict(optimizer="adamw"), "weight_decay"),  # 0: it trained as adam
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(warmup_epochs=10), "warmup_epochs"),  # the stage has 10
    (dict(warmup_epochs=3, finetune_epochs=3), "warmup_epochs"),
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(l2sp=-0.1), "l2sp"),
    (dict(l2sp=0.1, approach="scratch"), "l2sp"),
    (dict(l2sp=0.1, approach="transfer"), "l2sp"),
    (dict(ema=1.0), "ema"),
    (dict(gradual_unfreeze=10), "gradual_unfreeze"),  # the stage has 10
    (dict(gradual_unfreeze=1, unfreeze="1"), "gradual_unfreeze"),
    (dict(gradual_unfreeze=1, approach="transfer"), "gradual_unfreeze"),
    (dict(ema=-0.5), "ema"),
])
def test_bad_recipe_values_name_the_flag(changes, field):
    config = tl_keras.Config(data_dir="d", workdir="w", **changes)
    with pytest.raises(tl_keras.InputError) as e:
        config.validate()
    assert field in str(e.value)
    assert "Allowed" in str(e.value) and "Received" in str(e.value)


@pytest.mark.slow
def test_finetune_with_every_option_keeps_batchnorm_frozen(tiny_config):
    # mobilenet_v2: BatchNorm in every block; all options on.
    config = tiny_config.replace(
        backbone="mobilenet_v2", image_size=32, approach="finetune",
        epochs=2, finetune_epochs=2, optimizer="adamw", weight_decay=0.05,
        lr_schedule="cosine", warmup_epochs=1, lr_decay=0.7,
        label_smoothing=0.1, l2sp=0.01, finetune_learning_rate=1e-3,
        ema=0.99, unfreeze="2", gradual_unfreeze=1,
        # MixUp / CutMix act on the data only; without augmentation the
        # head trains on cached features (61 s instead of ~15 s with it).
        augment="none")
    built = tl_keras.build_backbone("mobilenet_v2", "none", 32)
    stats = {layer.name: [np.asarray(w) for w in (layer.moving_mean,
                                                  layer.moving_variance)]
             for layer in built.base.layers
             if isinstance(layer, keras.layers.BatchNormalization)}
    metrics = tl_keras.train(config)
    finetune = metrics["stages"]["finetune"]
    assert finetune["recipe"] == {
        "optimizer": "adamw", "weight_decay": 0.05, "lr_schedule": "cosine",
        "warmup_epochs": 1, "lr_decay": 0.7, "label_smoothing": 0.1,
        "l2sp": 0.01, "ema": 0.99, "gradual_unfreeze": 1}
    assert metrics["stages"]["head"]["recipe"]["lr_decay"] == 1.0
    assert metrics["stages"]["head"]["recipe"]["l2sp"] == 0.0
    model = keras.models.load_model(
        os.path.join(config.runtime.workdir, "model.keras"))
    base = models.get_base(model)
    for name, (mean, variance) in stats.items():
        layer = base.get_layer(name)
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), mean)
        np.testing.assert_array_equal(np.asarray(layer.moving_variance),
                                      variance)
    stored = json.load(open(os.path.join(config.runtime.workdir,
                                         "config.json")))
    assert stored["lr_decay"] == 0.7 and stored["optimizer"] == "adamw"


@pytest.mark.slow
def test_finetune_options_unused_by_the_advisors_pick_are_said(tiny_config,
                                                                caplog):
    # weights=none: the advisor picks scratch (nothing to transfer), which
    # has no fine-tune stage for --lr_decay and --l2sp: said, not silent.
    # So are the stage's own settings (they were dropped without a word).
    config = tiny_config.replace(approach="auto", lr_decay=0.5, l2sp=0.1,
                                 finetune_epochs=1, epochs=1, augment="none")
    with caplog.at_level("WARNING", logger="tl_keras"):
        metrics = tl_keras.train(config)
    assert metrics["approach"] == "scratch"
    assert ("The advisor picked scratch, which has no fine-tune stage: "
            "--finetune_epochs=1, --lr_decay=0.5, --l2sp=0.1 not used") in (
        caplog.text)
