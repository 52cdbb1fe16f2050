"""Resume against a run's own records: killed while writing them, torn
or edited by hand, deleted, or made for other images. In a file of its
own (beside tests/test_resume.py) so that pytest-xdist's per-file
scheduling spreads these whole runs over both workers."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import interrupt_before_training
from PIL import Image

import tl_keras


@pytest.mark.slow
def test_overwrite_starts_over_a_run_interrupted_on_other_images(
        tiny_config, tmp_path, monkeypatch, caplog):
    # The error for an interrupted run whose images changed says
    # "--overwrite to start over", and --overwrite met the same error.
    import logging


    data_dir = str(tmp_path / "images")
    shutil.copytree(tiny_config.data.data_dir, data_dir)
    config = tiny_config.replace(data_dir=data_dir, epochs=1,
                                 finetune_epochs=1)

    interrupt_before_training(config, monkeypatch)
    Image.fromarray(np.full((20, 20, 3), 77, np.uint8)).save(
        os.path.join(data_dir, "class_0", "zz_new.png"))
    with pytest.raises(tl_keras.InputError, match="1 added"):
        tl_keras.train(config)
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        metrics = tl_keras.train(config.replace(overwrite=True))
    assert metrics["complete"]
    assert "started on other images or weights; it is moved aside" in (
        caplog.text)
    workdir = config.runtime.workdir
    aside = [name for name in os.listdir(tmp_path)
             if name.startswith("run.") and name != "run.lock"]
    assert len(aside) == 1  # the interrupted run, kept
    split = json.load(open(os.path.join(workdir, "split.json")))
    assert any(path.endswith("zz_new.png") for pairs in split.values()
               for path, _ in pairs)


@pytest.mark.slow
def test_a_run_killed_while_recording_its_data_reruns(tiny_config, tmp_path,
                                                       monkeypatch):
    # Killed between split.json and data.json (a byte-for-byte copy among
    # the images): split.json without data.json read as a run from before
    # copies were left out, and every rerun, --overwrite too, was refused
    # as "images changed". data.json is written first now.
    from tl_keras import io as tl_io

    data_dir = str(tmp_path / "images")
    shutil.copytree(tiny_config.data.data_dir, data_dir)
    first = sorted(os.listdir(os.path.join(data_dir, "class_1")))[0]
    shutil.copy(os.path.join(data_dir, "class_1", first),
                os.path.join(data_dir, "class_1", "copy_" + first))
    config = tiny_config.replace(data_dir=data_dir, epochs=1,
                                 finetune_epochs=1)
    original, written = tl_io.write_json, []

    def killed_at_the_second_record(path, value, *args, **kwargs):
        name = os.path.basename(path)
        if name in ("split.json", "data.json"):
            written.append(name)
            if len(written) == 2:
                raise KeyboardInterrupt
        return original(path, value, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(tl_io, "write_json", killed_at_the_second_record)
        with pytest.raises(KeyboardInterrupt):
            tl_keras.train(config)
    assert tl_keras.train(config)["complete"]


@pytest.mark.slow
def test_a_done_stage_without_its_kept_weights_is_refused(tiny_config):
    # A stage marked done whose kept weights are gone: the rerun went on
    # from the weights the model had (the fine-tune's gone: the head's),
    # replaced a good model.keras and exported it, and metrics.json named
    # the fine-tune's kept epoch.
    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    assert tl_keras.train(config)["complete"]
    workdir = config.runtime.workdir
    model_bytes = open(os.path.join(workdir, "model.keras"), "rb").read()
    os.remove(os.path.join(workdir, "metrics.json"))
    shutil.rmtree(os.path.join(workdir, "export"))
    kept = os.path.join(workdir, "checkpoints", "finetune",
                        "best.weights.h5")
    os.remove(kept)
    with pytest.raises(tl_keras.InputError,
                       match=r"stage finetune is marked done .* but its "
                             r"kept weights .*best\.weights\.h5 are missing"):
        tl_keras.train(config)
    assert open(os.path.join(workdir, "model.keras"), "rb").read() == (
        model_bytes)


@pytest.mark.slow
def test_torn_or_edited_records_are_named(tiny_config):
    # A run's own records cut short or edited by hand were raw
    # JSONDecodeError / AttributeError tracebacks, and --overwrite could
    # not get past a torn config.json.
    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    assert tl_keras.train(config)["complete"]
    workdir = config.runtime.workdir
    os.remove(os.path.join(workdir, "metrics.json"))
    done = os.path.join(workdir, "checkpoints", "head", "done.json")
    with open(done, "w") as f:
        f.write('{"best_val_lo')
    with pytest.raises(tl_keras.InputError,
                       match=r"Invalid record .*done\.json: not the JSON "
                             r"object tl_keras wrote"):
        tl_keras.train(config)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write("[]")
    with pytest.raises(tl_keras.InputError,
                       match=r"config\.json: .*a JSON list, not an object"):
        tl_keras.train(config)
    assert tl_keras.train(config.replace(overwrite=True))["complete"]
    assert len([n for n in os.listdir(os.path.dirname(workdir))
                if n.startswith("run.") and n != "run.lock"]) == 1


@pytest.mark.slow
def test_an_unreadable_kept_checkpoint_is_named(tiny_config):
    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    assert tl_keras.train(config)["complete"]
    workdir = config.runtime.workdir
    os.remove(os.path.join(workdir, "metrics.json"))
    # config.json edited to other epochs (so that --epochs=2 matches it):
    # the head's done.json, of 1 epoch, was skipped as done.
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        written = f.read()
    with open(path, "w") as f:
        f.write(written.replace('"epochs": 1,', '"epochs": 2,', 1))
    with pytest.raises(tl_keras.InputError,
                       match=r"head.done\.json: stage head finished with "
                             r"\(epochs, learning rate\) \(1, 0\.001\)"):
        tl_keras.train(config.replace(epochs=2))
    with open(path, "w") as f:
        f.write(written)
    kept = os.path.join(workdir, "checkpoints", "head",
                        "best.trainable.npz")
    with open(kept, "r+b") as f:
        f.truncate(100)
    with pytest.raises(tl_keras.InputError,
                       match=r"the kept weights of stage head, .*"
                             r"best\.trainable\.npz, cannot be read"):
        tl_keras.train(config)


@pytest.mark.slow
def test_a_run_without_its_data_records_is_refused(tiny_config):
    # split.json or data.json deleted from a run that trained: the data
    # checks had nothing to compare, so a resumed run carved its splits
    # again (training images into test), a finished one said "already
    # complete" on other images.
    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    assert tl_keras.train(config)["complete"]
    workdir = config.runtime.workdir
    os.rename(os.path.join(workdir, "data.json"),
              os.path.join(workdir, "kept.json"))
    with pytest.raises(tl_keras.InputError,
                       match=r"trained, but its data.json .* are missing"):
        tl_keras.train(config)  # finished
    os.rename(os.path.join(workdir, "kept.json"),
              os.path.join(workdir, "data.json"))
    os.remove(os.path.join(workdir, "metrics.json"))
    os.remove(os.path.join(workdir, "split.json"))
    with pytest.raises(tl_keras.InputError,
                       match=r"trained, but its split.json .* are missing"):
        tl_keras.train(config)  # interrupted
    assert tl_keras.train(config.replace(overwrite=True))["complete"]


@pytest.mark.slow
def test_an_edited_metrics_file_is_written_again(tiny_config, caplog):
    import logging

    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    assert tl_keras.train(config)["complete"]
    path = os.path.join(config.runtime.workdir, "metrics.json")
    with open(path, "w") as f:
        f.write("[1, 2")
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert tl_keras.train(config)["complete"]
    assert "Invalid record" in caplog.text and "metrics.json" in caplog.text
    assert json.load(open(path))["complete"]
