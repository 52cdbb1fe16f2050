"""Whether and how the head stage trains on cached features.

`cache_plan` decides, from the config and the data, before anything is
extracted: how many views of the training set (with augmentation), in
memory or spilled to the workdir, and whether the features of the split
the run is evaluated on come along (a transfer run, whose base never
changes, then evaluates without running the base again). The extraction
itself is in `feature_cache`.
"""

import logging

import numpy as np

from tl_keras.config.fields import (
    AUTO_CACHE_VIEWS,
    LARGE_PER_CLASS,
    cache_views,
)

log = logging.getLogger("tl_keras")


def cache_plan(training, data_config, stage_name, data, model,
               evaluates=True):
    """How the head stage caches features (plan None: the full loop).

    Args:
      training: the config's `TrainingConfig` (feature_cache, views).
      data_config: its `DataConfig` (augmentation, cache budget).
      evaluates: whether this process runs the final evaluation (False:
        a multi-worker run's other workers, which extract no test split).

    Returns:
      (plan, why): plan None, or {'views': K, 'spill': bool, 'mib': size
      of the features held (with the test split's), 'clean': no
      augmentation (one view of the images as they are), 'evaluation':
      the split whose features the final evaluation reuses ('test',
      'val'; None: it runs the classifier)};
      why: for a head stage that runs the full loop, the reason
      (metrics.json records it), else None.
    """
    if stage_name != "head":
        return None, None
    if not training.feature_cache:
        return None, "--feature_cache=false"
    if data.train_ordered is None or data.shuffle is None:
        return None, "the data has no fixed-order training pipeline"
    views = 1
    if data_config.augmentations():
        views, why = _views(training, data_config, data)
        if not views:
            log.info("Augmentation is on and %s: training the head "
                     "through the frozen base every epoch.", why)
            return None, f"augmentation is on and {why}"
        log.info("Augmentation is on: the head trains on %d cached "
                 "views, the images as they are and %d augmented (epoch e "
                 "on view e mod %d; --feature_cache_views=0 for a pass "
                 "through the frozen base every epoch).", views, views - 1,
                 views)
    channels = model.get_layer("pool").output.shape[-1]
    size = (views * data.counts["train"] + data.counts["val"]) * channels * 4
    budget = data_config.cache_budget_mb * 2**20
    spill = size > budget
    if spill:
        log.info("Features (%.1f MiB) exceed --cache_budget_mb=%d; they go "
                 "to a file in the workdir.", size / 2**20,
                 data_config.cache_budget_mb)
    split = None if spill or not evaluates else _evaluation_split(
        training, data, size, channels, budget)
    if split == "test":  # held in memory beside the others
        size += data.counts["test"] * channels * 4
    return {"views": views, "spill": spill, "mib": round(size / 2**20, 1),
            "clean": not data_config.augmentations(),
            "evaluation": split}, None


def _evaluation_split(training, data, size, channels, budget):
    """The split whose features the final evaluation reuses, or None.

    Only a transfer run's: its base is frozen to the end, so the features
    extracted now are the ones the exported classifier computes (after a
    fine-tune they are not). Without a test split the run is evaluated on
    the validation set, whose features are cached anyway; test features
    are extracted with the others, in memory, when they fit in the
    budget with them. (A spilled cache keeps the classifier's pass: the
    caller does not ask.)
    """
    if training.approach != "transfer":
        return None
    if data.test is None:
        return "val"
    test_size = data.counts.get("test", 0) * channels * 4
    if size + test_size <= budget:
        return "test"
    log.info("The test features would take the cached features over "
             "--cache_budget_mb; the test split goes through the whole "
             "classifier.")
    return None


def _views(training, data_config, data):
    """(views to cache, the first of the images as they are; why none
    when 0), with augmentation: --feature_cache_views, or for 'auto'
    AUTO_CACHE_VIEWS on large data (at least LARGE_PER_CLASS training
    images per class, median) without mixed pairs."""
    views = cache_views(training.feature_cache_views)
    if views != "auto":
        return views, "--feature_cache_views=0"
    mixes = data_config.label_mixes()
    if mixes:
        return 0, f"--augment={mixes[0]} mixes pairs, which a view cannot hold"
    per_class = float(np.median(list(data.class_counts["train"].values())))
    if per_class < LARGE_PER_CLASS:
        return 0, (f"the data is small ({per_class:g} images per class, "
                   f"median; --feature_cache_views=auto caches views from "
                   f"{LARGE_PER_CLASS})")
    return AUTO_CACHE_VIEWS, ""
