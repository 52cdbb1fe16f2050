"""--mode=rank: candidate backbones scored on the data, best first."""

import logging
import os

import keras
import numpy as np

from tl_keras import io
from tl_keras.advisor.advise import check_record_place, write_record
from tl_keras.advisor.measurement import majority_share, measure
from tl_keras.data.given import given_data_config
from tl_keras.data.pipelines import make_datasets
from tl_keras.distribute.strategy import check_one_process
from tl_keras.errors import fail
from tl_keras.models.backbones import build_backbone
from tl_keras.models.classifier import build_classifier
from tl_keras.models.hub import check_preset_name, is_hub
from tl_keras.models.registry import check_registered

log = logging.getLogger("tl_keras")

SCORES = ("logme", "knn_accuracy", "probe_accuracy")


def rank(config, data=None):
    """Scores each of --backbones on the data (one feature pass each) and
    prints them ranked by their mean rank over LogME, kNN and
    linear-probe accuracy.

    Returns:
      The rows, best first (also in <workdir>/ranking.json).
    """
    config = given_data_config(config, data).validate(
        require_data_dir=data is None)
    check_record_place(config)
    check_one_process(config.runtime)
    names = [b.strip() for b in config.advisor.backbones.split(",")]
    # One file by two spellings (clf.keras, ./clf.keras) is one base.
    keys = [os.path.realpath(n) if n.endswith(".keras") else n
            for n in names]
    twice = sorted({n for n, k in zip(names, keys, strict=True)
                    if keys.count(k) > 1})
    if twice or "" in names:  # as Config.validate in --mode=rank
        fail("backbones", "comma-separated distinct backbone names or "
             ".keras paths, none empty", config.advisor.backbones)
    if config.model.weights not in ("imagenet", "none") and len(names) > 1:
        # It loaded the one file into every candidate: identical rows.
        fail("weights", "imagenet or none with several --backbones (a "
             "weights file fits one base: give each candidate as a .keras "
             "file holding its weights)", config.model.weights)
    for name in names:  # every name checked before any work
        if is_hub(name):
            check_preset_name(name, config.model.image_size)
        elif not name.endswith(".keras"):  # its name, weights and size
            check_registered(name, config.model.weights,
                             config.model.image_size)
        elif not os.path.isfile(name):
            fail("backbones", "names or existing .keras files (no such "
                 "file)", name)
        else:  # a file Keras cannot load, or at another size
            build_backbone(name, config.model.weights,
                           config.model.image_size)
    # As a train run: a live run on the workdir refuses this one.
    with io.workdir_lock(config.runtime.workdir):
        return _rank(config, names, data)


def _rank(config, names, data):
    rows, data_by_size = [], {}
    for name in names:
        log.info("Ranking: measuring %s", name)
        keras.utils.set_random_seed(config.data.seed)  # as train does
        built = build_backbone(name, config.model.weights,
                               config.model.image_size)
        # The folder is scanned and checked once per input size.
        if data is not None:
            data_for = data
        elif built.image_size not in data_by_size:
            data_for = data_by_size[built.image_size] = make_datasets(
                config.data, built.image_size)
        else:
            data_for = data_by_size[built.image_size]
        model = build_classifier(built, len(data_for.class_names), 0.0)
        m = measure(model, data_for, config, built.blocks(), layers=False)
        rows.append({"backbone": name, **m.get("last", {}),
                     "seconds": m["seconds"], "problems": m["problems"]})
    _order(rows)
    print(format_ranking(rows, config.data.data_dir,
                         majority_share(data_for)))
    write_record(config.runtime.workdir, "ranking.json", {"ranking": rows})
    return rows


def _order(rows):
    """Ranks the rows by each score (equal scores share the mean of their
    positions: the order --backbones listed them in decided a tie),
    then sorts them by mean rank (ties broken by LogME), in place."""
    for key in SCORES:
        scores = [r.get(key, -np.inf) for r in rows]
        for row, mine in zip(rows, scores, strict=True):
            above = sum(s > mine for s in scores)
            level = sum(s == mine for s in scores)
            row.setdefault("ranks", {})[key] = above + (level + 1) / 2
    for row in rows:
        row["mean_rank"] = round(float(np.mean(list(row["ranks"].values()))),
                                 2)
    rows.sort(key=lambda r: (r["mean_rank"], -r.get("logme", -np.inf)))


def format_ranking(rows, data_dir, chance):
    """The ranking as a plain-text table for the terminal."""
    lines = [f"\nBackbones ranked on {data_dir or 'the data'} "
             f"(chance {chance:.3f}):",
             f"  {'#':>2}  {'backbone':<28} {'LogME':>8} {'kNN':>6} "
             f"{'probe':>6} {'mean rank':>9} {'time':>7}"]
    for i, row in enumerate(rows, start=1):
        name = os.path.basename(row["backbone"])[-28:]
        lines.append(
            f"  {i:>2}  {name:<28} "
            f"{row.get('logme', float('nan')):8.3f} "
            f"{row.get('knn_accuracy', float('nan')):6.3f} "
            f"{row.get('probe_accuracy', float('nan')):6.3f} "
            f"{row['mean_rank']:9.2f} {row['seconds']:6.1f}s")
    # A score left out (`score_features`) prints as nan and ranks below
    # every measured one: say why (it was a bare nan).
    lines += [f"  nan: not measured for {os.path.basename(row['backbone'])}"
              f" ({'; '.join(row['problems'])})" for row in rows
              if row["problems"]]
    return "\n".join(lines)
