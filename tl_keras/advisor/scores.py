"""Transferability scores of features: LogME, kNN and a linear probe.

Each takes pooled features of a sample of training images (and, for the
probe, of the validation images) and says how well a classifier on them
can do, before any head is trained. LogME is the evidence of a linear
model (You et al., ICML 2021), vectorised over classes with one SVD.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tl_keras.errors import InputError


def logme(features, labels, tol=1e-3, max_iter=100):
    """LogME score of features for labels: mean over classes of the
    maximised log evidence per example (higher is better).

    One SVD of the features is shared by all classes; each class's
    one-vs-rest target runs MacKay's fixed point for (alpha, beta) in the
    SVD basis, vectorised over classes.

    Args:
      features: float array [n, d].
      labels: int array [n] with values in [0, num_classes).
    """
    f = np.asarray(features, np.float64)
    n, d = f.shape
    classes = np.unique(labels)
    y = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float64)
    u, sigma, _ = np.linalg.svd(f, full_matrices=False)
    s = sigma**2  # eigenvalues of F'F (the rest are 0)
    x = u.T @ y  # [k, classes]
    y_norm2 = (y**2).sum(0)
    residual_outside = y_norm2 - (x**2).sum(0)  # part of y outside span(F)
    alpha = np.ones(len(classes))
    beta = np.ones(len(classes))
    for _ in range(max_iter):
        t = alpha / beta
        gamma = (s[:, None] / (s[:, None] + t)).sum(0)
        m2 = (s[:, None] * x**2 / (s[:, None] + t)**2).sum(0)
        res2 = (x**2 / (1 + s[:, None] / t)**2).sum(0) + residual_outside
        # Clipped: degenerate features (e.g. constant ones from an
        # untrained base) drive alpha to 0 or beta to infinity.
        new_alpha = np.clip(gamma / np.maximum(m2, 1e-300), 1e-12, 1e12)
        new_beta = np.clip((n - gamma) / np.maximum(res2, 1e-300), 1e-12,
                           1e12)
        done = np.abs(new_alpha / new_beta - t) / t < tol
        alpha, beta = new_alpha, new_beta
        if done.all():
            break
    t = alpha / beta
    m2 = (s[:, None] * x**2 / (s[:, None] + t)**2).sum(0)
    res2 = (x**2 / (1 + s[:, None] / t)**2).sum(0) + residual_outside
    # log|A| with A = alpha I + beta F'F: d eigenvalues, k of them shifted.
    log_det = (np.log(alpha[None, :] + beta[None, :] * s[:, None]).sum(0)
               + (d - len(s)) * np.log(alpha))
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha)
                - n / 2 * np.log(2 * np.pi) - beta / 2 * res2
                - alpha / 2 * m2 - log_det / 2)
    return float(np.mean(evidence / n))


def knn_accuracy(features, labels, k=5):
    """Leave-one-out k-nearest-neighbour accuracy on L2-normalised
    features (cosine similarity; ties go to the nearest). k is at most
    the smallest class's images less one: an image left out has no more
    of its own class to vote for it, so with 2 images a class at k = 5
    any other class with two neighbours outvoted perfectly separated
    features (0.35 for 1.0 on 10 classes; audit, session 41)."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    smallest = np.bincount(labels)[np.unique(labels)].min()
    k = max(1, min(k, len(labels) - 1, smallest - 1))
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    votes = labels[nearest]
    correct = 0
    for row, truth in zip(votes, labels, strict=True):
        counts = np.bincount(row)
        best = np.flatnonzero(counts == counts.max())
        # Tie: the class of the nearest neighbour among the tied classes.
        pick = next(v for v in row if v in best)
        correct += pick == truth
    return correct / len(labels)


def linear_probe(train_x, train_y, val_x, val_y, seed=0):
    """Validation accuracy of a multinomial logistic regression trained on
    standardised features (a cheap stand-in for the `transfer` head)."""
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(max_iter=500, C=1.0, random_state=seed)
    probe.fit(scaler.transform(train_x), train_y)
    return float((probe.predict(scaler.transform(val_x)) == val_y).mean())


def score_features(train_f, train_y, val_f, val_y, seed, key, problems):
    """LogME and kNN accuracy on the training features and the linear
    probe's validation accuracy, as a dict; a score that cannot be
    computed (too few images) is left out and noted in `problems`.

    Raises:
      InputError: non-finite features (broken weights or preprocessing).
    """
    for where, f in (("training", train_f), ("validation", val_f)):
        if not np.isfinite(f).all():
            raise InputError(
                f"Invalid features for the advisor: the base's {key} layer "
                f"gives NaN or Inf on the {where} images, so its weights "
                f"are broken or do not match the preprocessing. Allowed: "
                f"finite features (check --weights and --backbone). "
                f"Received: {int((~np.isfinite(f)).sum())} non-finite "
                f"values")
    scores = {}
    per_class = np.bincount(train_y)
    if len(train_y) < 10 or per_class[per_class > 0].min() < 2:
        problems.append(f"{key}: the sample ({len(train_y)} images) is too "
                        f"small for LogME and kNN")
    else:
        scores["logme"] = round(logme(train_f, train_y), 4)
        scores["knn_accuracy"] = round(knn_accuracy(train_f, train_y), 4)
    if len(val_y) < 2 or len(np.unique(train_y)) < 2:
        problems.append(f"{key}: too few validation images for a probe")
    else:
        scores["probe_accuracy"] = round(
            linear_probe(train_f, train_y, val_f, val_y, seed), 4)
    return scores
