"""The offline demo: transfer learning shown on data shipped with a package.

scikit-learn ships 1,797 handwritten digits (8x8). The demo writes each
at a random scale and position on a noisy 32x32 canvas as a grayscale PNG
file, so it goes through the real image-folder path.

The demo pretrains `compact_cnn` from scratch on digits 0-4 (the "source"
task, standing in for ImageNet), then learns digits 5-9 (the "target" task)
from only `demo_labels_per_class` labelled images per class, three ways:
scratch, transfer (frozen pretrained base + new head) and finetune.

The source task asks for the digit *and* its orientation (5 digits x 4
rotations = 20 classes). A wider task gives more general features, as
ImageNet's 1,000 classes do: measured here, a linear probe on the frozen
features scored 0.78 on the target with 5 labels per class after this
pretraining, against 0.55 after pretraining on the 5 upright digits. Each
sub-run is an ordinary tl_keras run in its own workdir, so the demo resumes
like any run.
"""

import logging
import os
import shutil

import numpy as np
from PIL import Image

from tl_keras import io
from tl_keras.distribute.strategy import check_one_process
from tl_keras.errors import InputError
from tl_keras.models import recipe
from tl_keras.models.backbones import build_backbone
from tl_keras.models.classifier import build_classifier
from tl_keras.modes.compare import compare, workdir_problem
from tl_keras.training.trainer import train_row
from tl_keras.training.workdir import stored_differences

log = logging.getLogger("tl_keras")

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
DEMO_SIZE = 32
# The workdir entries the demo writes beside its compare's.
_KEEP = ("data", "pretrain", "demo.json")


def materialize_digits(root, labels_per_class, seed):
    """Writes the digits as PNG folders under `root`, drawn in a hidden
    folder beside it and renamed into place when complete: a killed
    drawing leaves no half-written `root`, and a `root` that exists is
    one whole drawing (its marker names its settings).

    Returns:
      (source_dir, target_dir). source_dir has one folder per digit 0-4
      and rotation (e.g. 3_rot090), all images; target_dir has train/
      val/ test/ folders for digits 5-9 with `labels_per_class` images
      per class in train/ and in val/, and the rest in test/.

    Raises:
      InputError: `root` exists but is not a drawing with these settings
        (writing into it would mix two drawings' images).
    """
    from sklearn.datasets import load_digits

    source, target = os.path.join(root, "source"), os.path.join(root, "target")
    problem = drawing_problem(root, labels_per_class, seed)
    if problem:
        raise InputError(
            f"Invalid digits folder {root!r}: {problem}. Allowed: a new "
            f"folder, or one the demo drew with demo_labels_per_class="
            f"{labels_per_class}, seed={seed}. Received: {root!r}")
    if os.path.isfile(os.path.join(root, _marker(labels_per_class, seed))):
        return source, target
    log.info("Demo: drawing scikit-learn's 1,797 digits as 32x32 PNG "
             "images into %s", root)
    digits = load_digits()
    tmp = io.temp_path(root)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed drawing's
    rng = np.random.default_rng(seed)
    for digit in SOURCE_DIGITS + TARGET_DIGITS:
        ids = np.flatnonzero(digits.target == digit)
        ids = ids[rng.permutation(len(ids))]
        if digit in SOURCE_DIGITS:
            parts = {os.path.join(tmp, "source", f"{digit}_rot{90 * k:03d}"):
                     (ids, k) for k in range(4)}
        else:
            k = labels_per_class
            parts = {
                os.path.join(tmp, "target", "train", str(digit)): (ids[:k], 0),
                os.path.join(tmp, "target", "val", str(digit)):
                    (ids[k:2 * k], 0),
                os.path.join(tmp, "target", "test", str(digit)):
                    (ids[2 * k:], 0)}
        for folder, (part, quarter_turns) in parts.items():
            os.makedirs(folder, exist_ok=True)
            for i in part:
                image = _scene(digits.images[i], rng)
                if quarter_turns:
                    image = image.rotate(90 * quarter_turns)
                image.save(os.path.join(folder, f"{i:04d}.png"))
    open(os.path.join(tmp, _marker(labels_per_class, seed)), "w").close()
    io.commit(tmp, root)
    return source, target


def _marker(labels_per_class, seed):
    """The file naming a drawing's settings (v3: the drawing's version)."""
    return f"done-v3-{labels_per_class}-{seed}"


def drawing_problem(root, labels_per_class, seed):
    """Why `root` is not the demo's drawing with these settings (a
    sentence), or None (also when it does not exist yet)."""
    if not os.path.isdir(root):
        return None if not os.path.exists(root) else "it is not a folder"
    entries = os.listdir(root)
    markers = [name for name in entries if name.startswith("done-")]
    if not entries or _marker(labels_per_class, seed) in markers:
        return None  # empty: the drawing is renamed onto it
    if not markers:
        return ("it was not drawn by the demo (no done- marker; the demo "
                "writes nothing into a folder it did not draw)")
    parts = markers[0].split("-")
    if len(parts) == 4 and parts[1] == "v3":
        return (f"its images were drawn with demo_labels_per_class="
                f"{parts[2]}, seed={parts[3]}, not demo_labels_per_class="
                f"{labels_per_class}, seed={seed}")
    return f"its images were drawn by another tl_keras version ({markers[0]})"


def _scene(pixels, rng):
    """Places one 8x8 digit at a random scale and position on a noisy
    32x32 canvas. Learning that invariance from a handful of labels is
    what a base pretrained on the source digits brings to the target."""
    size = int(rng.integers(14, 25))
    digit = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8),
                            mode="L").resize((size, size), Image.BILINEAR)
    canvas = rng.normal(40, 25, (DEMO_SIZE, DEMO_SIZE))
    top, left = rng.integers(0, DEMO_SIZE - size + 1, 2)
    window = canvas[top:top + size, left:left + size]
    np.maximum(window, np.asarray(digit, np.float64), out=window)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8),
                           mode="L")


def run_demo(config):
    """Runs the demo under `config.runtime.workdir`; returns and prints a
    summary.

    Pretrains the base on the source digits, then runs `--mode=compare`
    on the target digits with that base: scratch, transfer and finetune
    with the same epoch budget, the advisor's pick marked, report.md with
    the table and plots, the best model exported. Holds the workdir's
    lock throughout (`workdir_lock`).
    """
    check_one_process(config.runtime, config.data.batch_size)
    with io.workdir_lock(config.runtime.workdir):
        return _run_demo(config)


def _run_demo(config):
    workdir = config.runtime.workdir
    labels_per_class = config.runtime.demo_labels_per_class
    _check_finetune(config)
    _claim_workdir(config)
    # --overwrite is the demo's (its whole workdir, above): the sub-runs
    # resume, or start in the emptied workdir.
    runs = config.replace(overwrite=False)
    materialize_digits(os.path.join(workdir, "data"), labels_per_class,
                       config.data.seed)
    log.info("Demo: pretraining compact_cnn from scratch on digits 0-4 in "
             "4 orientations (the source task, 20 classes)")
    pretrain = train_row(_pretrain_config(runs))
    log.info("Demo: scratch vs transfer vs finetune on digits 5-9 with %d "
             "labels per class", labels_per_class)
    header = (
        f"The offline demo: a `compact_cnn` pretrained on digits 0-4 in 4 "
        f"orientations ({pretrain['num_train']} images, source test "
        f"accuracy {pretrain['test_accuracy']:.3f}) is the base; the target "
        f"task is digits 5-9 from {labels_per_class} labelled "
        f"images per class.")
    compared = compare(_compare_config(runs), header=header,
                       also_in_workdir=_KEEP)
    results = {
        name: {"test_accuracy": r["test_accuracy"],
               "macro_f1": r["macro_f1"],
               "num_train": compared["num_train"],
               "num_test": r["num_test"],
               "advisor_pick": r["advisor_pick"],
               "workdir": os.path.join(workdir, name)}
        for name, r in compared["results"].items()}
    summary = {
        "source_task": {"digits": list(SOURCE_DIGITS),
                        "num_train": pretrain["num_train"],
                        "test_accuracy": pretrain["test_accuracy"]},
        "target_task": {"digits": list(TARGET_DIGITS),
                        "labels_per_class": labels_per_class},
        "advisor": compared["advisor"],
        "results": results,
        "report": os.path.join(workdir, "report.md"),
        "config": config.to_dict(),
    }
    io.write_json(os.path.join(workdir, "demo.json"), summary)
    print(format_summary(summary))
    return summary


def _claim_workdir(config):
    """Checks the whole workdir before anything is drawn or trained: its
    digits, its pretraining run and its compare's runs must be this
    demo's (same settings), or --overwrite moves the workdir aside (a
    sub-run's own --overwrite would move only that sub-run, and the
    compare would then refuse the rest)."""
    workdir = config.runtime.workdir
    problem = _workdir_problem(config)
    if problem and not config.runtime.overwrite:
        raise InputError(
            f"Invalid workdir {workdir!r} for the demo: {problem}. Allowed: "
            f"the same flags (to resume), a new --workdir, or --overwrite "
            f"(moves the old workdir aside). Received: workdir={workdir!r}")
    if problem:
        log.warning("--overwrite: %s (%s) moved aside to %s", workdir,
                    problem, io.move_aside(workdir))
    elif config.runtime.overwrite and os.path.isdir(workdir):
        log.warning("--overwrite: %s holds this same demo, which goes on as "
                    "it is; nothing is moved aside.", workdir)


def _workdir_problem(config):
    """Why the workdir is not this demo's to resume (a sentence), or None."""
    workdir = config.runtime.workdir
    if io.names_a_file(workdir) or not os.path.isdir(workdir):
        return None  # a file: refused by the compare's own checks
    data = os.path.join(workdir, "data")
    problem = drawing_problem(data, config.runtime.demo_labels_per_class,
                              config.data.seed)
    if problem:
        return f"its data/ folder: {problem}"
    diffs = stored_differences(_pretrain_config(config), unreadable_ok=True)
    if diffs:
        return (f"its pretraining run has other settings "
                f"({'; '.join(diffs)})")
    # The runs' images are compared once drawn (`runs`: data/ exists).
    return workdir_problem(_compare_config(config), _KEEP,
                           runs=os.path.isdir(data))


def _pretrain_config(config):
    """The pretraining run: compact_cnn from scratch on the source digits."""
    workdir = config.runtime.workdir
    return config.replace(
        mode="train", backbone="compact_cnn", weights="none",
        feature_block="",  # the pretraining trains the whole base
        image_size=DEMO_SIZE, approach="scratch",
        data_dir=os.path.join(workdir, "data", "source"),
        epochs=config.runtime.demo_pretrain_epochs,
        workdir=os.path.join(workdir, "pretrain"))


def _compare_config(config):
    """The compare on the target digits, with the pretrained base."""
    workdir = config.runtime.workdir
    return config.replace(
        mode="compare", data_dir=os.path.join(workdir, "data", "target"),
        workdir=workdir, backbone=os.path.join(workdir, "pretrain",
                                               "model.keras"),
        weights="none", image_size=0)


def _check_finetune(config):
    """The compare's --unfreeze / --lr_decay / --gradual_unfreeze against
    the demo's base (cut at --feature_block) before the pretraining (its
    config.json would then hold the bad value, and the corrected command
    would be refused there)."""
    built = build_backbone("compact_cnn", "none", DEMO_SIZE,
                           config.model.feature_block)
    recipe.check_finetune_blocks(build_classifier(built, 5, 0.0),
                                 built.blocks(), config.training)


def format_summary(summary):
    """The demo's closing lines (the comparison table is printed above
    them by compare)."""
    target = summary["target_task"]
    return "\n".join([
        "",
        f"tl_keras demo: digits 5-9 from {target['labels_per_class']} "
        f"labelled images per class; base pretrained on digits 0-4 x 4 "
        f"orientations ({summary['source_task']['num_train']} images; "
        f"source test accuracy "
        f"{summary['source_task']['test_accuracy']:.3f}).",
        f"Advisor: {summary['advisor']['approach']} "
        f"({summary['advisor']['situation']}).",
        f"Report with plots: {summary['report']}",
    ]) + "\n"
