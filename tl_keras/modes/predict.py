"""The export and predict modes: re-export a run, score image files.

    python run.py --mode=export --workdir=runs/a [--export_dir=D]
    python run.py --mode=predict --export_dir=runs/a/export \
        --inputs=photos/,more/*.jpg --output=preds.csv
"""

import contextlib
import csv
import glob
import io as text_io
import logging
import os

import numpy as np

from tl_keras import io
from tl_keras.data.copies import drop_copies
from tl_keras.data.folders import (
    IMAGE_EXTENSIONS,
    list_images,
    scan_folder,
    split_roots,
)
from tl_keras.data.images import READABLE_FORMATS, find_unreadable
from tl_keras.data.layout import SPLIT_DIRS, subfolders
from tl_keras.errors import InputError
from tl_keras.export.predictor import load_exported
from tl_keras.export.saved_model import export_saved_model
from tl_keras.models.backbones import load_model_file
from tl_keras.modes.outputs import (
    check_export_target,
    check_output,
    check_outside_data,
)
from tl_keras.training.metrics import classification_metrics, export_manifest

log = logging.getLogger("tl_keras")


def export_run(config):
    """Re-exports the model of a finished run in its workdir.

    Raises:
      InputError: no finished run there, or an existing export without
        --overwrite.
    """
    workdir = config.runtime.workdir
    model_path = os.path.join(workdir, "model.keras")
    metrics_path = os.path.join(workdir, "metrics.json")
    if not (os.path.isfile(model_path) and os.path.isfile(metrics_path)):
        raise InputError(
            f"Invalid workdir {workdir!r}: no finished run (model.keras and "
            f"metrics.json). Allowed: the workdir of a completed run. "
            f"Received: workdir={workdir!r}")
    target = config.export.export_dir or os.path.join(workdir, "export")
    if io.inside(workdir, target):  # --overwrite moved the run
        raise InputError(
            f"Invalid export_dir {target!r}: it is the workdir or a folder "
            f"around it, which the export would replace. Allowed: a path "
            f"outside the run, or inside it (default <workdir>/export). "
            f"Received: export_dir={target!r}")
    check_outside_data(workdir, target)
    check_export_target(workdir, target)
    metrics = io.read_json(metrics_path)
    # The approach the run trained (an 'auto' run's config.json says auto).
    approach = metrics["approach"]
    # The run's lock: a run resumed meanwhile would rewrite model.keras.
    # A run this process can only read (a shared store) is exported
    # without it.
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(io.workdir_lock(workdir))
        except OSError as e:
            log.warning("Exporting without the run's lock (%s: %s).",
                        workdir, e.strerror)
        model = load_model_file(model_path, compile=False)
        return export_saved_model(
            model, target, metrics["class_names"],
            manifest=export_manifest(approach, metrics),
            overwrite=config.runtime.overwrite,
            tflite=config.export.export_tflite,
            # Replacing the run's own export loses nothing (model.keras
            # stays); an export elsewhere may be another run's only copy.
            keep_old=os.path.realpath(target) != os.path.realpath(
                os.path.join(workdir, "export")))


def expand_inputs(spec):
    """Turns 'a.jpg,folder/,shots/*.png' into a sorted list of files.

    Folders, named or matched by a pattern, are searched recursively for
    image extensions. A pattern that matches nothing is an error. A spec
    that names an existing file or folder as a whole is that one path,
    commas and all (in a list, a name with a comma is matched by a glob:
    'a?b.jpg').
    """
    paths = []
    whole = spec.strip()
    items = [whole] if os.path.exists(whole) else spec.split(",")
    for item in (s.strip() for s in items):
        if os.path.isfile(item):  # a file as named ('img[1].png' too)
            found = [item]
        elif os.path.isdir(item):
            found = _images_under(item)
        else:  # a folder it matches is searched like a named one;
            # '**' spans folders, as in the shell's globstar ('photos/**/'
            # '*.png' took only files one folder down, the rest silently)
            found = {p for match in glob.glob(item, recursive=True)
                     for p in _files_at(match)}
        if not found:  # an empty name too ('a.png,'): it was skipped
            what = repr(item) if item else "an empty name"
            raise InputError(
                f"Invalid inputs: {what} matches no image file. Allowed: "
                f"image files, folders or glob patterns, comma-separated "
                f"(a name with a comma: a glob such as 'a?b.jpg'). "
                f"Received: inputs={spec!r}")
        paths += sorted(found)
    return paths


def _files_at(path):
    """[path] for a file, the images under a folder, else []."""
    if os.path.isfile(path):
        return [path]
    return _images_under(path) if os.path.isdir(path) else []


def _images_under(folder):
    """The image files under `folder` (recursively), listed as training
    lists a class folder (`folders.list_images`: hidden files and
    folders, such as macOS's `._photo.jpg` twins, left out; symlinked
    folders not followed), saying what it skips."""
    found, others, hidden_dirs, _ = list_images(folder)
    for count, what in ((len(others), "file(s) without an image extension "
                         f"({', '.join(IMAGE_EXTENSIONS)})"),
                        (len(hidden_dirs), "hidden folder(s)")):
        if count:
            log.warning("Skipping %d %s in %s.", count, what, folder)
    return found


def predict_files(config):
    """Scores `config.inputs` with an export; prints and optionally writes
    one row per file. Unreadable files get an error row; the rest are
    scored.

    Returns:
      A list of row dicts: path, label, score (None on an error row),
      top_k, error.

    Raises:
      InputError: no input is a readable image (after its error rows).
    """
    check_output(config, (".csv", ".json"))
    export_dir = _export_dir(config)
    predictor = load_exported(export_dir)
    paths = expand_inputs(config.export.inputs)
    bad = set(find_unreadable(paths))
    good = [p for p in paths if p not in bad]
    log.info("Scoring %d image(s) with %s (%d unreadable)", len(good),
             export_dir, len(bad))
    rows = {p: {"path": p, "label": "", "score": None, "top_k": [],
                "error": f"not a readable image ({READABLE_FORMATS})"}
            for p in bad}
    k = min(config.export.top_k, len(predictor.class_names))
    if k < config.export.top_k:
        log.info("--top_k=%d: the export has %d classes, all listed",
                 config.export.top_k, k)
    batch = 64
    for start in range(0, len(good), batch):
        chunk = good[start:start + batch]
        out = predictor.predict(chunk, batch_size=batch, check_files=False)
        for i, path in enumerate(chunk):
            # Ties in the order of class_ids (np.argmax's: the first).
            order = np.argsort(-out["scores"][i], kind="stable")[:k]
            top = [(predictor.class_names[j], float(out["scores"][i][j]))
                   for j in order]
            rows[path] = {"path": path, "label": top[0][0],
                          "score": top[0][1], "top_k": top, "error": ""}
        if len(good) > batch:
            log.info("%d / %d images", min(start + batch, len(good)),
                     len(good))
    ordered = [rows[p] for p in paths]
    for row in ordered:
        if row["error"]:
            print(f"{row['path']}\tERROR: {row['error']}")
        else:
            top = ", ".join(f"{name} {score:.3f}"
                            for name, score in row["top_k"])
            print(f"{row['path']}\t{top}")
    output = config.export.output
    if output:
        write_predictions(ordered, output)
    if not good:  # a script must not read this as a success
        raise InputError(
            f"Invalid inputs: none of the {len(paths)} file(s) is a readable "
            f"image ({READABLE_FORMATS}; each has an error row above"
            f"{output and ' and in ' + output}). Allowed: image files, "
            f"folders or globs. Received: inputs={config.export.inputs!r}")
    return ordered


def evaluate_export(config):
    """Scores an export on the labelled folder --data_dir: every image
    of a folder of class folders, or the test/ split of a folder with
    train/ (never its training images).

    Returns:
      The metrics dict (also written to --output if given).

    Raises:
      InputError: the folder's classes are not the export's classes.
    """
    export_dir = _export_dir(config)
    predictor = load_exported(export_dir)
    data_dir, output = config.data.data_dir, config.export.output
    check_output(config, (".json",))
    scored_dir = _held_out_folder(data_dir, predictor.class_names)
    files, class_names, scored = _scored_images(
        scored_dir, warn=scored_dir == data_dir)
    # The classes scored (a train/ class without test images is not).
    unknown = sorted({class_names[y] for _, y in files[scored]}
                     - set(predictor.class_names))
    if unknown:
        raise InputError(
            f"Invalid data_dir: classes {', '.join(unknown)} are not in the "
            f"export. Allowed: a subset of {', '.join(predictor.class_names)}"
            f". Received: data_dir={data_dir!r}")
    bad = set(find_unreadable([p for p, _ in files[scored]]))
    files[scored] = [(p, y) for p, y in files[scored] if p not in bad]
    # One image twice (a copy or a link) counts once, as in training; in
    # two classes it is left out, and a test image that is a training or
    # validation image again is not scored (training left it out).
    pairs = drop_copies(files, class_names)[0][scored]
    log.info("Evaluating %s on %d image(s) (%d unreadable skipped)",
             export_dir, len(pairs), len(bad))
    if not pairs:  # files[scored] holds the readable ones now
        raise InputError(
            f"Invalid data_dir for evaluate: it has no image to score "
            f"({len(bad)} unreadable; {len(files[scored])} readable, each "
            f"left out as a copy of a training or validation image or as "
            f"one image in two classes). Allowed: readable JPEG / PNG / GIF "
            f"/ BMP images of its own. Received: data_dir={data_dir!r}")
    index = {name: i for i, name in enumerate(predictor.class_names)}
    y_true = np.array([index[class_names[y]] for _, y in pairs])
    logits = np.concatenate([
        predictor.predict([p for p, _ in pairs[i:i + 64]],
                          check_files=False)["logits"]
        for i in range(0, len(pairs), 64)])
    metrics = {"export_dir": export_dir, "data_dir": data_dir,
               "scored": split_roots(scored_dir, say=False)[scored],
               "class_names": list(predictor.class_names),
               "bad_files": len(bad),
               "copy_files": len(files[scored]) - len(pairs),
               **classification_metrics(y_true, logits,
                                        predictor.class_names)}
    print(f"accuracy {metrics['test_accuracy']:.4f} on "
          f"{metrics['num_test']} images")
    if output:
        io.write_json(output, metrics)
    return metrics


def _held_out_folder(data_dir, known):
    """`data_dir`, or its test/ folder when it holds only held-out split
    folders (test/, val/) and no train/, none of them a class of the
    export: 'evaluate uses a test/ folder if there is one' (it read test/
    as a class, "not in the export"). Only val/: an error."""
    folders = subfolders(data_dir)
    held = {name: split for name in folders for split in ("val", "test")
            if name.lower() in SPLIT_DIRS[split] and name not in known}
    if not folders or len(held) < len(folders):
        return data_dir
    test = [name for name, split in held.items() if split == "test"]
    if len(test) != 1:
        raise InputError(
            f"Invalid data_dir for evaluate: it holds split folders "
            f"({', '.join(folders)}) and no test/ folder to score. Allowed: "
            f"a folder of class folders (all scored), or one with test/. "
            f"Received: data_dir={data_dir!r}")
    log.info("Scoring %s/: %s holds held-out split folders and no train/",
             test[0], data_dir)
    return os.path.join(data_dir, test[0])


def _scored_images(data_dir, warn=True):
    """({split: (path, label) pairs}, class names, the split evaluate
    scores): every image of a folder of class folders ('train'), else
    its test/ split (never the training images: the score would mean
    nothing; `warn`: say so, unless `data_dir` is a test/ folder)."""
    files, class_names, _ = scan_folder(data_dir, min_classes=1)
    if split_roots(data_dir, say=False)["train"] == data_dir:
        if warn:
            log.warning(
                "Scoring every image in %s. If a run carved its splits "
                "from this folder, its training images are among them; "
                "score held-out images for an unbiased number.", data_dir)
        return files, class_names, "train"
    if files.get("test"):
        return files, class_names, "test"
    raise InputError(
        f"Invalid data_dir for evaluate: it holds a train/ folder and no "
        f"test/ folder with images, and training images are never "
        f"scored. Allowed: a folder of class folders (all scored), or "
        f"one with test/. Received: data_dir={data_dir!r}")


def write_predictions(rows, path):
    """Writes rows to .csv (top_k as 'name:score;...') or .json."""
    if path.endswith(".json"):
        io.write_json(path, rows)
    else:
        # Each entry splits at its last ':'; a ';' in a name cannot be told
        # from the separator.
        clash = sorted({n for r in rows for n, _ in r["top_k"] if ";" in n})
        if clash:
            log.warning("Class name(s) with ';' (%s) make the CSV's top_k "
                        "column ambiguous ('name:score;...'); --output="
                        "<file>.json writes a list per row.",
                        ", ".join(clash))
        text = text_io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["path", "label", "score", "top_k", "error"])
        for r in rows:
            top = ";".join(f"{n}:{s:.6f}" for n, s in r["top_k"])
            writer.writerow([r["path"], r["label"], r["score"], top,
                             r["error"]])
        # A file name that is not UTF-8 (read as surrogate escapes) is
        # written as its bytes on disk (it failed after every image had
        # been scored).
        io.write_text(path, text.getvalue(), newline="",
                      errors="surrogateescape")
    log.info("Wrote %d prediction(s) to %s", len(rows), path)


def _export_dir(config):
    """--export_dir, or the workdir's export."""
    return config.export.export_dir or os.path.join(config.runtime.workdir,
                                                    "export")
