"""Configs: every file in configs/ parses and validates; bad values fail
with field / allowed / received."""

import dataclasses
import fractions
import glob
import json
import logging
import os

import numpy as np
import pytest
from absl import flags
from conftest import REPO

import tl_keras
from tl_keras import cli, flagfiles
from tl_keras.config import (
    FIELD_SECTIONS,
    AdvisorConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    TrainingConfig,
    config_differences,
    config_fields,
)
from tl_keras.config.config import FLAT_ORDER

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.cfg")))


def parse(args):
    flag_values = flags.FlagValues()
    cli.define_flags(flag_values)
    flag_values(["run.py", *args])
    return cli.config_from_flags(flag_values)


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"_base.cfg", "smoke.cfg", "demo.cfg"} <= names
    assert len(names) >= 5, names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_parses_and_validates(path, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # nested --flagfile paths resolve from here
    with open(path) as f:
        head = f.read().split("\n--", 1)[0]
    # Every config opens with what it does, the command, and a measurement
    # (_base.cfg only holds shared defaults, included by the others).
    if not path.endswith("_base.cfg"):
        assert "python run.py" in head, head
        assert "# Measured" in head, head
    flagfiles.check_repeats([f"--flagfile={path}"], None)  # each flag once
    config = parse([f"--flagfile={path}"])
    # Configs for real data or tests leave these to the command line.
    if not config.runtime.workdir:
        config = config.replace(workdir=str(tmp_path / "w"))
    if config.runtime.mode == "train" and not os.path.isdir(
            config.data.data_dir):
        (tmp_path / "data").mkdir()  # beside the workdir, not around it
        config = config.replace(data_dir=str(tmp_path / "data"))
    config.validate()


def test_flat_files_keep_one_field_order():
    # config.json and flags.cfg list every field once, in FLAT_ORDER (the
    # order of the flat config before sections, so old and new files
    # line up).
    assert sorted(FLAT_ORDER) == sorted(FIELD_SECTIONS)
    config = tl_keras.Config()
    assert tuple(config.to_dict()) == FLAT_ORDER
    assert [f.name for f in config_fields()] == list(FLAT_ORDER)
    lines = config.to_flagfile().splitlines()[1:]
    assert [line[2:].split("=")[0] for line in lines] == list(FLAT_ORDER)


def test_a_field_an_older_config_lacks_counts_as_its_default():
    current = tl_keras.Config(data_dir="d", workdir="w")
    older = current.to_dict()
    del older["feature_block"]  # written before the field existed
    assert config_differences(older, current) == []
    assert config_differences(older, current.replace(
        feature_block="block3")) == ["feature_block: '' -> 'block3'"]


def test_stored_views_compare_by_meaning():
    # A flag's "2" is the API's 2; a config.json from before the default
    # became 'auto' (stored 0, or older than the field: the full loop) is
    # a run with other settings than today's default, and resumes with
    # --feature_cache_views=0, its own value.
    current = tl_keras.Config(data_dir="d", workdir="w")
    stored = current.replace(feature_cache_views=2).to_dict()
    assert config_differences(stored, current.replace(
        feature_cache_views="2")) == []
    older = current.to_dict()
    del older["feature_cache_views"]
    for old in (older, {**older, "feature_cache_views": 0}):
        assert config_differences(old, current) == [
            "feature_cache_views: 0 -> 'auto'"]
        assert config_differences(old, current.replace(
            feature_cache_views="0")) == []


@pytest.mark.parametrize("mode", ["rank", "export", "predict", "evaluate"])
def test_feature_block_is_refused_where_it_cannot_apply(mode, tmp_path):
    config = tl_keras.Config(mode=mode, data_dir=str(tmp_path), workdir="w",
                             export_dir="e", inputs="x", backbones="a",
                             feature_block="block3")
    with pytest.raises(tl_keras.InputError,
                       match=f"feature_block.*--mode={mode}"):
        config.validate()


def test_flagfile_round_trip(tmp_path):
    config = tl_keras.Config(data_dir="d", workdir="w", unfreeze="3",
                             approach="transfer", overwrite=True,
                             learning_rate=0.0025)
    path = tmp_path / "flags.cfg"
    path.write_text(config.to_flagfile())
    # --overwrite moved a workdir aside once; a reused flags.cfg must not
    # move one again (nor skip the check of changed settings).
    assert parse([f"--flagfile={path}"]) == config.replace(overwrite=False)
    assert parse([f"--flagfile={path}", "--overwrite"]) == config


def test_command_line_overrides_flagfile(monkeypatch):
    monkeypatch.chdir(REPO)
    config = parse(["--flagfile=configs/smoke.cfg", "--epochs=7"])
    assert config.training.epochs == 7
    assert config.model.backbone == "compact_cnn"


@pytest.mark.parametrize("changes, field", [
    (dict(approach="transfr"), "approach"),
    (dict(data_dir=""), "data_dir"),
    (dict(workdir=""), "workdir"),
    (dict(weights="weights.bin"), "weights"),
    (dict(weights="missing.weights.h5"), "weights"),
    (dict(epochs=0), "epochs"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(validation_split=0.0), "validation_split"),
    (dict(validation_split=0.5, test_split=0.5),
     "validation_split + test_split"),
    (dict(unfreeze="top"), "unfreeze"),
    (dict(unfreeze="0"), "unfreeze"),
    # int() took these: '1_0' was 10.
    (dict(unfreeze="01"), "unfreeze"),
    (dict(unfreeze="+1"), "unfreeze"),
    (dict(unfreeze="1_0"), "unfreeze"),
    # Trained, then resuming without the space was "other settings".
    (dict(backbone=" compact_cnn"), "backbone"),
    (dict(workdir="runs/a "), "workdir"),
    # The advisor needs two training images a class (it failed after
    # writing the pretraining run).
    (dict(mode="demo", demo_labels_per_class=1), "demo_labels_per_class"),
    (dict(augment="flip,blur"), "augment"),
    (dict(augment="flip,flip"), "augment"),  # was taken as flip
    (dict(augment="mixup,mixup"), "augment"),  # said: mixup and cutmix
    (dict(dropout=1.0), "dropout"),
    (dict(advisor_scratch_fraction=1.5), "advisor_scratch_fraction"),
    (dict(advisor_sample=5), "advisor_sample"),
])
def test_invalid_values_name_field_allowed_received(changes, field):
    config = tl_keras.Config(data_dir="d", workdir="w").replace(**changes)
    with pytest.raises(tl_keras.InputError) as e:
        config.validate()
    message = str(e.value)
    assert field in message
    assert "Allowed" in message and "Received" in message


def test_removed_advisor_thresholds_say_why():
    # tl_keras 0.1's nine --advisor_* thresholds are gone: a Config field,
    # a flag, or a stored config.json naming one.
    with pytest.raises(tl_keras.InputError,
                       match="advisor_tie_se.*removed in tl_keras 0.2"):
        tl_keras.Config(advisor_tie_se=1.0)
    stored = {**tl_keras.Config(data_dir="d", workdir="w").to_dict(),
              "advisor_tie_se": 2.0, "advisor_large_per_class": 40}
    # An old run resumes: its decision was stored with it.
    assert config_differences(stored, tl_keras.Config(
        data_dir="d", workdir="w")) == []


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        tl_keras.Config().epochs = 3


def test_differences_ignore_resumable_fields():
    a = tl_keras.Config(data_dir="d", workdir="w")
    stored = a.to_dict()
    assert config_differences(
        stored, a.replace(overwrite=True, cache_budget_mb=1)) == []
    diffs = config_differences(stored, a.replace(epochs=3))
    assert diffs == ["epochs: 10 -> 3"]


@pytest.mark.parametrize("field, value, kind", [
    ("learning_rate", "0.1", "a number"),  # was a TypeError in a check
    ("dropout", None, "a number"),
    ("epochs", True, "an integer"),  # a bool is an int in Python
    ("augment", None, "text"),  # was an AttributeError
    ("unfreeze", 2, "text"),
    ("overwrite", "yes", "True or False"),  # was taken as true
    ("feature_cache", "no", "True or False"),
])
def test_a_value_of_the_wrong_type_is_an_error(field, value, kind):
    with pytest.raises(tl_keras.InputError,
                       match=f"Invalid {field}. Allowed: {kind}"):
        tl_keras.Config(workdir="w", **{field: value}).validate(
            require_data_dir=False)
    # An int where a float goes is taken; so is an int of views.
    tl_keras.Config(workdir="w", learning_rate=1e-3, dropout=0,
                    feature_cache_views=2).validate(require_data_dir=False)


def test_numpy_numbers_are_taken():
    # Sweeps and tables hand numpy scalars; a bool is still refused.
    tl_keras.Config(workdir="w", epochs=np.int64(5), batch_size=np.int32(8),
                    learning_rate=np.float32(1e-3)).validate(
        require_data_dir=False)
    with pytest.raises(tl_keras.InputError,
                       match="Allowed: an integer, not bool"):
        tl_keras.Config(workdir="w", epochs=np.bool_(True)).validate(
            require_data_dir=False)


@pytest.mark.slow
def test_numpy_numbers_train_and_are_recorded_as_written(tiny_config):
    # Keras refused a numpy rate or seed after config.json was written,
    # which held np.float32(1e-3) as 0.0010000000474974513, so the same
    # run given 1e-3 was refused as other settings.
    config = tiny_config.replace(learning_rate=np.float32(1e-3),
                                 seed=np.int64(3), epochs=np.int32(1),
                                 finetune_epochs=1, augment="none")
    assert config.training.learning_rate == 1e-3
    assert type(config.data.seed) is int
    assert tl_keras.train(config)["complete"]
    with open(os.path.join(config.runtime.workdir, "config.json")) as f:
        assert json.load(f)["learning_rate"] == 1e-3
    again = tl_keras.train(config.replace(learning_rate=1e-3, seed=3,
                                          epochs=1))
    assert again["complete"]


@pytest.mark.slow
def test_notensorboard_writes_no_events_and_is_the_same_run(tiny_config):
    # TensorBoard had no off switch. Without it a run writes its CSV logs
    # but no events; it computes nothing else, so turning it back on
    # resumes the same (here finished) run instead of refusing it.
    config = tiny_config.replace(approach="scratch", epochs=1,
                                 augment="none", tensorboard=False)
    assert tl_keras.train(config)["complete"]
    logs = os.path.join(config.runtime.workdir, "logs")
    assert os.path.isfile(os.path.join(logs, "scratch.csv"))
    assert not os.path.exists(os.path.join(logs, "tensorboard"))
    assert tl_keras.train(config.replace(tensorboard=True))["complete"]
    assert not os.path.exists(os.path.join(logs, "tensorboard"))


@pytest.mark.parametrize("args", [
    ["--flagfile", "configs/demo.cfg"],  # absl's --name value form
    ["-flagfile=configs/demo.cfg"],
])
def test_repeat_check_reads_every_flagfile_form(args, monkeypatch):
    monkeypatch.chdir(REPO)
    flagfiles.check_repeats(args, None)
    with pytest.raises(flags.Error, match="--flagfile is empty"):
        flagfiles.check_repeats(args[:1] if len(args) == 2 else ["-flagfile="],
                           None)


def test_augment_in_another_order_is_the_same_run():
    # The augmenter applies flip, rotation, zoom, randaugment in that
    # order whatever the flag's: 'zoom,flip' was refused as other settings
    # for a 'flip,zoom' run.
    from tl_keras.config import config_differences

    stored = tl_keras.Config(augment="flip,zoom").to_dict()
    assert config_differences(stored,
                              tl_keras.Config(augment="zoom, flip")) == []
    assert config_differences(stored, tl_keras.Config(augment="flip")) == [
        "augment: 'flip,zoom' -> 'flip'"]
    none = tl_keras.Config(augment="none").to_dict()
    assert config_differences(none, tl_keras.Config(augment="")) == []


def test_a_run_on_arrays_resumes_whatever_data_dir_it_recorded():
    # Runs on arrays recorded the data_dir they never read (until this
    # change); one on arrays now records '' and its digest decides.
    from tl_keras.config import config_differences

    stored = tl_keras.Config(data_dir="photos").to_dict()
    assert config_differences(stored, tl_keras.Config(data_dir="")) == []
    assert config_differences(stored, tl_keras.Config(
        data_dir="other")) == ["data_dir: 'photos' -> 'other'"]


def test_a_data_config_of_numpy_numbers_is_taken():
    x = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 3), np.uint8)
    data = tl_keras.from_arrays(
        x, np.arange(12) % 2, tl_keras.DataConfig(seed=np.int64(3)), 8)
    assert data.data_config.seed == 3 and type(data.data_config.seed) is int


def test_a_flagfile_that_includes_itself_is_refused(tmp_path):
    # Spelled the same way absl skips it with a warning; through another
    # flagfile, or spelled differently, absl read it until Python's
    # recursion limit (a RecursionError).
    first, second = tmp_path / "a.cfg", tmp_path / "b.cfg"
    first.write_text(f"--epochs=2\n--flagfile={second}\n")
    second.write_text(f"--flagfile={first}\n")
    with pytest.raises(flags.Error, match=r"includes itself \(.*a\.cfg -> "
                                          r".*b\.cfg -> .*a\.cfg\)"):
        flagfiles.check_repeats([f"--flagfile={first}"], None)


def test_a_flag_before_a_flagfile_that_sets_it_again(tmp_path, caplog):
    # absl reads a flagfile in place, so its value beat an earlier one on
    # the command line without a word.
    base = tmp_path / "base.cfg"
    base.write_text("--epochs=3\n")
    args = ["--epochs=1", f"--flagfile={base}"]
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        flagfiles.check_repeats(args, None)
    assert "--epochs on the command line come(s) before" in caplog.text
    assert parse(args).training.epochs == 3  # what the warning says
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        flagfiles.check_repeats([f"--flagfile={base}", "--epochs=1"], None)
    assert not caplog.text  # an override after it: the usual way
    # In a flagfile it is a repeat, refused as any other there.
    outer = tmp_path / "outer.cfg"
    outer.write_text(f"--epochs=5\n--flagfile={base}\n")
    with pytest.raises(flags.Error, match=r"--epochs in .*outer\.cfg "
                                          r"come\(s\) before"):
        flagfiles.check_repeats([f"--flagfile={outer}"], None)


def test_two_flagfiles_where_the_later_nests_another(tmp_path, caplog):
    # --flagfile itself is no setting: the first --flagfile is no flag
    # set before the second one's nested --flagfile.
    (tmp_path / "common.cfg").write_text("--epochs=3\n")
    (tmp_path / "a.cfg").write_text("--batch_size=4\n")
    (tmp_path / "b.cfg").write_text(
        f"--flagfile={tmp_path / 'common.cfg'}\n--learning_rate=0.1\n")
    args = [f"--flagfile={tmp_path / 'a.cfg'}",
            f"--flagfile={tmp_path / 'b.cfg'}"]
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        names = flagfiles.check_repeats(args, None)
    assert not caplog.text
    assert {"epochs", "batch_size", "learning_rate"} <= names
    outer = tmp_path / "outer.cfg"
    outer.write_text("\n".join(args) + "\n")
    flagfiles.check_repeats([f"--flagfile={outer}"], None)  # no error
    config = parse([f"--flagfile={outer}"])
    assert (config.training.epochs, config.data.batch_size) == (3, 4)


def test_two_flagfiles_that_set_one_flag(tmp_path, caplog):
    # absl keeps the later flagfile's value without a word (--epochs=0 in
    # the first, 5 in the second: trained 5 epochs, nothing said).
    first, second = tmp_path / "a.cfg", tmp_path / "b.cfg"
    first.write_text("--epochs=0\n--batch_size=4\n")
    second.write_text("--epochs=5\n")
    args = [f"--flagfile={first}", f"--flagfile={second}"]
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        flagfiles.check_repeats(args, None)
    assert (f"--epochs (in {first}) set again by --flagfile={second}: the "
            f"later flagfile's value is used") in caplog.text
    assert "batch_size" not in caplog.text
    assert parse(args).training.epochs == 5  # what the warning says
    # Each nesting a flagfile of its own is no repeat: --flagfile itself
    # is no setting.
    caplog.clear()
    for name, nested in (("x", "a.cfg"), ("y", "b.cfg")):
        (tmp_path / f"{name}.cfg").write_text(
            f"--flagfile={tmp_path / nested}\n")
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        flagfiles.check_repeats([f"--flagfile={tmp_path / 'x.cfg'}",
                                 f"--flagfile={tmp_path / 'y.cfg'}"], None)
    assert f"--epochs (in {tmp_path / 'x.cfg'}) set again" in caplog.text
    assert "--flagfile (in" not in caplog.text  # named as a setting
    assert "--flagfile " not in caplog.text  # or as one set before
    # Both read by one flagfile: a repeat there, refused as any other.
    outer = tmp_path / "outer.cfg"
    outer.write_text("\n".join(args) + "\n")
    with pytest.raises(flags.Error, match=r"--epochs \(in .*a\.cfg\) set "
                                          r"again .*both read by .*outer"):
        flagfiles.check_repeats([f"--flagfile={outer}"], None)


def test_a_leading_tilde_in_a_path_flag_is_the_home_folder(tmp_path):
    # From a flagfile, `--workdir=~/runs/a` made a folder named `~` in the
    # current directory while the log read like the home folder.
    flagfile = tmp_path / "f.cfg"
    flagfile.write_text("--workdir=~/runs/a\n--inputs=a.png, ~/b.png\n")
    config = parse([f"--flagfile={flagfile}", "--data_dir=~user_x/d"])
    home = os.path.expanduser("~")
    assert config.runtime.workdir == os.path.join(home, "runs", "a")
    assert config.export.inputs == f"a.png,{home}/b.png"
    assert config.data.data_dir == os.path.expanduser("~user_x/d")


def test_a_leading_tilde_is_the_home_folder_from_python_too():
    # Config(workdir="~/runs/a") wrote into a folder named `~` under the
    # current directory, while the command line's was the home folder.
    home = os.path.expanduser("~")
    config = tl_keras.Config(workdir="~/runs/a", weights="~/w.weights.h5",
                             inputs="a.png, ~/b.png", data_dir="d/~x")
    assert config.runtime.workdir == os.path.join(home, "runs", "a")
    assert config.model.weights == os.path.join(home, "w.weights.h5")
    assert config.export.inputs == f"a.png,{home}/b.png"
    assert config.data.data_dir == "d/~x"  # only a leading `~`
    assert config.replace(export_dir="~/e").export.export_dir == (
        os.path.join(home, "e"))
    # A bare DataConfig given to make_datasets too (it read ./~/x).
    from tl_keras.data import pipelines

    assert pipelines._checked_section(tl_keras.DataConfig(
        data_dir="~/x"), 32).data_dir == os.path.join(home, "x")


def test_path_fields_take_a_pathlib_path():
    # Config(data_dir=Path(...)) was refused as not text, while
    # build_backbone and load_model take a Path.
    import pathlib

    config = tl_keras.Config(data_dir=pathlib.Path("d"),
                             workdir=pathlib.Path("~/runs/a"))
    assert config.data.data_dir == "d"
    assert config.runtime.workdir == os.path.expanduser("~/runs/a")
    config = config.replace(export_dir=pathlib.Path("e"),
                            weights=pathlib.Path("w.weights.h5"))
    assert (config.export.export_dir, config.model.weights) == (
        "e", "w.weights.h5")
    assert json.loads(json.dumps(config.to_dict()))["data_dir"] == "d"
    from tl_keras.data import pipelines

    assert pipelines._checked_section(tl_keras.DataConfig(
        data_dir=pathlib.Path("x")), 32).data_dir == "x"
    # A field that is not a path still takes only its type.
    with pytest.raises(tl_keras.InputError, match="Invalid backbones"):
        tl_keras.Config(backbones=pathlib.Path("a.keras")).validate()


def test_a_number_that_is_not_a_float_or_int_is_refused():
    # A Fraction passed as a float, then failed in config.json after the
    # workdir was made.
    with pytest.raises(tl_keras.InputError,
                       match="Invalid learning_rate.*not Fraction"):
        tl_keras.Config(learning_rate=fractions.Fraction(1, 1000)).validate()
    assert tl_keras.Config(learning_rate=np.float32(0.5), epochs=np.int64(
        2), workdir="w").validate(require_data_dir=False).training.epochs == 2


def test_a_path_that_cannot_be_written_is_refused_before_any_work(
        tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for field, mode in (("workdir", "train"), ("export_dir", "export"),
                        ("output", "predict")):
        path = str(a_file / "x" / ("p.csv" if field == "output" else "w"))
        paths = {"workdir": str(tmp_path / "w"), field: path}
        config = tl_keras.Config(data_dir=str(tmp_path), inputs="a.png",
                                 mode=mode, **paths)
        with pytest.raises(tl_keras.InputError,
                           match=f"Invalid {field}: .*a_file' is a file, "
                                 f"not a folder.*Received: {field}="):
            config.validate()
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # nothing written
    os.symlink(tmp_path / "gone", tmp_path / "link")
    with pytest.raises(tl_keras.InputError,
                       match="Invalid workdir: .*link' is a broken symlink"):
        tl_keras.Config(data_dir=str(tmp_path), mode="train",
                        workdir=str(tmp_path / "link" / "w")).validate()
    # The workdir itself a link to nothing (a drive not mounted): making
    # it raised a raw FileExistsError after the data was read.
    for mode in ("train", "compare", "advise"):
        with pytest.raises(tl_keras.InputError,
                           match="Invalid workdir: .*link' is a broken "
                                 "symlink \\(to '.*gone', not there\\)"):
            tl_keras.Config(data_dir=str(tmp_path), mode=mode,
                            workdir=str(tmp_path / "link")).validate()
    if os.path.isdir("/proc/self"):  # Linux: no file can be made there
        with pytest.raises(tl_keras.InputError,
                           match="Invalid workdir: no file can be created "
                                 "in '/proc'"):
            tl_keras.Config(data_dir=str(tmp_path), workdir="/proc/tlk",
                            mode="train").validate()


def test_a_flagfile_with_a_byte_order_mark_is_refused(tmp_path):
    # absl read "\ufeff--epochs=2" as a positional argument, and the error
    # named an invisible character, not the file.
    path = tmp_path / "bom.cfg"
    path.write_bytes(b"\xef\xbb\xbf--epochs=2\n")
    with pytest.raises(flags.Error, match="bom.cfg starts with a "
                                          "byte-order mark"):
        flagfiles.check_repeats([f"--flagfile={path}"], None)


@pytest.mark.parametrize("line", [
    '--workdir="runs/quoted"',             # made a folder named '"runs'
    "--backbone='compact_cnn'",
])
def test_quotes_around_a_flagfile_value_are_refused(tmp_path, line):
    path = tmp_path / "f.cfg"
    path.write_text(f"--epochs=2\n{line}\n")
    with pytest.raises(flags.Error, match="f.cfg has its value in quotes"):
        flagfiles.check_repeats([f"--flagfile={path}"], None)
    # Quotes inside a value, and a comment line, are fine.
    path.write_text("# runs\n--workdir=runs/#1\n--inputs=a.png,'b'.png\n")
    assert flagfiles.check_repeats([f"--flagfile={path}"], None) >= {"workdir"}


def test_a_comment_after_a_flagfile_value_is_said(tmp_path, caplog):
    # It trained into a folder named 'a   # my first run' without a word;
    # a value with ' #' in it (a folder 'Photos #2', as a run's own
    # flags.cfg writes it) is right, so it is said, not refused.
    path = tmp_path / "f.cfg"
    path.write_text("--workdir=runs/a   # my first run\n")
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        flagfiles.check_repeats([f"--flagfile={path}"], None)
    assert "'runs/a   # my first run', all of it" in caplog.text


@pytest.mark.parametrize("section, changes", [
    (DataConfig, dict(augment=None)),
    (DataConfig, dict(validation_split="0.1")),
    (ModelConfig, dict(dropout="0.1")),
    (ModelConfig, dict(backbone=None)),
    (TrainingConfig, dict(learning_rate="0.1")),
    (TrainingConfig, dict(warmup_epochs=1.5)),
    (ExportConfig, dict(output=3)),
    (AdvisorConfig, dict(advisor_scratch_fraction="0.2")),
])
def test_a_section_checks_its_own_types(section, changes):
    # Only Config.validate checked types: a section's own validate (public)
    # raised TypeError / AttributeError, or took 1.5 epochs.
    field = next(iter(changes))
    with pytest.raises(tl_keras.InputError, match=f"Invalid {field}"):
        section(**changes).validate()


def test_replacing_a_section_with_none_is_refused():
    # It put the section back to its defaults (data_dir '' and all).
    config = tl_keras.Config(data_dir="d", workdir="w")
    with pytest.raises(tl_keras.InputError, match="Invalid data"):
        config.replace(data=None)
    assert config.replace(data=DataConfig(data_dir="e")).data.data_dir == "e"


def test_a_nested_flagfile_is_named_when_the_folder_is_another(
        tmp_path, monkeypatch, caplog):
    # absl reads configs/_base.cfg (named in configs/demo.cfg) from the
    # current folder: from elsewhere it failed with absl's "Unable to open
    # flagfile" and no word on why, and another configs/_base.cfg there
    # was read without a word.
    demo_cfg = os.path.join(REPO, "configs", "demo.cfg")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(flags.Error, match=(
            r"--flagfile=configs/_base.cfg in .*demo\.cfg is not a file in "
            r"the current folder")):
        flagfiles.check_repeats([f"--flagfile={demo_cfg}"], None)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "_base.cfg").write_text("--seed=7\n")
    caplog.set_level(logging.WARNING, logger="tl_keras")
    flagfiles.check_repeats([f"--flagfile={demo_cfg}"], None)
    assert "is read from the current folder" in caplog.text
    assert str(tmp_path / "configs" / "_base.cfg") in caplog.text
    caplog.clear()
    monkeypatch.chdir(REPO)  # as the README runs it: nothing to say
    flagfiles.check_repeats(["--flagfile=configs/demo.cfg"], None)
    assert caplog.text == ""
