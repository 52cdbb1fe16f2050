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

import numpy as np
from PIL import Image

from tl_keras import io
from tl_keras.distribute.strategy import check_one_process
from tl_keras.models import recipe
from tl_keras.models.backbones import build_backbone
from tl_keras.models.classifier import build_classifier
from tl_keras.modes.compare import check_workdir, compare
from tl_keras.training.trainer import train_row

log = logging.getLogger("tl_keras")

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
DEMO_SIZE = 32


def materialize_digits(root, labels_per_class, seed):
    """Writes the digits as PNG folders under `root`.

    Returns:
      (source_dir, target_dir). source_dir has one folder per digit 0-4
      and rotation (e.g. 3_rot090), all images; target_dir has train/
      val/ test/ folders for digits 5-9 with `labels_per_class` images
      per class in train/ and in val/, and the rest in test/.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    marker = os.path.join(root, f"done-v3-{labels_per_class}-{seed}")
    source, target = os.path.join(root, "source"), os.path.join(root, "target")
    if os.path.isfile(marker):
        return source, target
    rng = np.random.default_rng(seed)
    for digit in SOURCE_DIGITS + TARGET_DIGITS:
        ids = np.flatnonzero(digits.target == digit)
        ids = ids[rng.permutation(len(ids))]
        if digit in SOURCE_DIGITS:
            parts = {os.path.join(source, f"{digit}_rot{90 * k:03d}"):
                     (ids, k) for k in range(4)}
        else:
            k = labels_per_class
            parts = {
                os.path.join(target, "train", str(digit)): (ids[:k], 0),
                os.path.join(target, "val", str(digit)): (ids[k:2 * k], 0),
                os.path.join(target, "test", str(digit)): (ids[2 * k:], 0)}
        for folder, (part, quarter_turns) in parts.items():
            os.makedirs(folder, exist_ok=True)
            for i in part:
                image = _scene(digits.images[i], rng)
                if quarter_turns:
                    image = image.rotate(90 * quarter_turns)
                image.save(os.path.join(folder, f"{i:04d}.png"))
    open(marker, "w").close()
    return source, target


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
    keep = ("data", "pretrain", "demo.json")
    # Before any work (compare checks its runs with the compare's config).
    check_workdir(config, also_in_workdir=keep, runs=False)
    _check_finetune(config)
    labels_per_class = config.runtime.demo_labels_per_class
    source, target = materialize_digits(
        os.path.join(workdir, "data"), labels_per_class, config.data.seed)
    log.info("Demo: pretraining compact_cnn from scratch on digits 0-4 in "
             "4 orientations (the source task, 20 classes)")
    pretrain_dir = os.path.join(workdir, "pretrain")
    pretrain = train_row(config.replace(
        mode="train", backbone="compact_cnn", weights="none",
        feature_block="",  # the pretraining trains the whole base
        image_size=DEMO_SIZE, approach="scratch", data_dir=source,
        epochs=config.runtime.demo_pretrain_epochs, workdir=pretrain_dir))
    log.info("Demo: scratch vs transfer vs finetune on digits 5-9 with %d "
             "labels per class", labels_per_class)
    header = (
        f"The offline demo: a `compact_cnn` pretrained on digits 0-4 in 4 "
        f"orientations ({pretrain['num_train']} images, source test "
        f"accuracy {pretrain['test_accuracy']:.3f}) is the base; the target "
        f"task is digits 5-9 from {labels_per_class} labelled "
        f"images per class.")
    compared = compare(config.replace(
        mode="compare", data_dir=target, workdir=workdir,
        backbone=os.path.join(pretrain_dir, "model.keras"), weights="none",
        image_size=0), header=header,
        also_in_workdir=keep)
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
