"""The compare report: the table for the terminal, report.md, and the
plots (learning curves, the best run's confusion matrix)."""

import os

import numpy as np

from tl_keras import io
from tl_keras.advisor.report import choice_text, summary_lines

# With no test split (--test_split=0 and no test/ folder) each run is
# scored on its validation images, the ones that chose the best.
_NO_TEST = ("no test split: the test accuracy and macro-F1 are the "
            "validation images' that chose the best, not unbiased estimates")


def _untested(summary):
    """A sentence naming the classes no test image scored (the split is
    the same for every row), or ''. Macro-F1 leaves them out, and the
    accuracies cannot see them: a model that never answers such a class
    scored 1.000 on both."""
    rows = list(summary["results"].values())
    missing = rows[0].get("classes_not_tested") if rows else None
    if not missing:
        return ""
    names = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return (f"no {summary['test_split']} image of {len(missing)} "
            f"class(es) ({names}): the accuracies and macro-F1 say nothing "
            f"of them")


def format_table(summary):
    """The comparison table as plain text (printed to the terminal)."""
    lines = ["", f"Compare on {summary['num_train']} training images, "
             f"{summary['num_test']} {summary['test_split']} images, "
             f"{summary['epoch_budget']} epochs each:",
             f"  {'approach':<10} {'val acc':>8} {'test acc':>8} "
             f"{'macro-F1':>8} {'wall':>8} {'trained params':>15} "
             f"{'images/s':>9}"]
    for name, r in summary["results"].items():
        marks = ("  <- advisor" if r["advisor_pick"] else "") + (
            "  (best by val)" if r["best"] else "")
        lines.append(
            f"  {name:<10} {r['val_accuracy']:8.3f} "
            f"{r['test_accuracy']:8.3f} {r['macro_f1']:8.3f} "
            f"{r['seconds']:7.1f}s {r['trained_params']:15,} "
            f"{r['images_per_second'] or 0:9.1f}{marks}")
    if summary["test_split"] != "test":
        lines.append(f"  {_NO_TEST}")
    if _untested(summary):
        lines.append(f"  {_untested(summary)}")
    lines.append(f"  advisor: {choice_text(summary['advisor'])} "
                 f"({summary['advisor']['situation']}; "
                 f"{summary['advisor_seconds']:.1f} s to decide)")
    return "\n".join(lines) + "\n"


def format_report(summary, decision, plots, header=None):
    lines = ["# tl_keras compare report", ""]
    if header:
        lines += [header, ""]
    lines += [
        f"Data: `{summary['data_dir']}` — {summary['num_train']} training "
        f"images; evaluated on {summary['num_test']} "
        f"{summary['test_split']} images. Backbone `{summary['backbone']}`. "
        f"Each approach trains {summary['epoch_budget']} epochs in all, on "
        f"the same split and seed.", "",
        "| approach | val accuracy | test accuracy | macro-F1 | wall time "
        "| trained params | train images/s |",
        "|---|---|---|---|---|---|---|"]
    for name, r in summary["results"].items():
        label = name + (" **(advisor's pick)**" if r["advisor_pick"]
                        else "")
        val = f"{r['val_accuracy']:.3f}"
        if r["best"]:
            val = f"**{val}**"
        lines.append(f"| {label} | {val} | {r['test_accuracy']:.3f} | "
                     f"{r['macro_f1']:.3f} | "
                     f"{r['seconds']:.0f} s | {r['trained_params']:,} | "
                     f"{r['images_per_second'] or 0:.0f} |")
    held_out = ("the test accuracies are unbiased estimates, none of them "
                "was used to choose" if summary["test_split"] == "test"
                else _NO_TEST)
    untested = _untested(summary)
    lines += ["", f"Best: **{summary['best']}**, by validation accuracy "
              f"(exported to `export/`); {held_out}."
              + (f" Note: {untested}." if untested else ""),
              "", "## The advisor", "",
              f"Decided in {summary['advisor_seconds']:.1f} s "
              f"({100 * summary['advisor_seconds'] / summary['seconds']:.1f}"
              f"% of this compare): **{choice_text(decision)}** — "
              f"{decision['reason']}", "", "```"]
    lines += summary_lines(decision["measurements"], decision)
    lines += ["```", ""]
    for title, name in plots:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def write_plots(workdir, results, best):
    """Writes curves.png and confusion.png; returns [(title, file)]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        curve = r["val_accuracy_curve"]
        ax.plot(range(1, len(curve) + 1), curve, label=name,
                linewidth=2.5 if r["best"] else 1.2)
        if len(r["stage_epochs"]) > 1:
            ax.axvline(r["stage_epochs"][0] + 0.5, color="gray",
                       linestyle=":", linewidth=0.8)
    ax.set_xlabel("epoch (dotted: fine-tuning starts)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, os.path.join(workdir, "curves.png"))
    plt.close(fig)

    matrix = np.asarray(results[best]["confusion_matrix"])
    names = results[best]["class_names"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(names),
                                    1 + 0.5 * len(names)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black",
                fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{best}: confusion matrix")
    fig.tight_layout()
    _save(fig, os.path.join(workdir, "confusion.png"))
    plt.close(fig)
    return [("Learning curves", "curves.png"),
            (f"Confusion matrix of the best ({best})", "confusion.png")]


def _save(fig, path):
    tmp = io.temp_path(path)
    fig.savefig(tmp, dpi=110)
    io.commit(tmp, path)
