"""The decision as readable lines, for the terminal and report.md."""


def summary_lines(measurements, decision):
    """The decision as a few readable lines for the terminal."""
    m = measurements
    lines = [f"Advisor ({m.get('seconds', 0):.1f} s, {m['sample']} sampled "
             f"training images, {m['num_classes']} classes, chance "
             f"{m['chance']:.3f}):"]
    labels = {"last": "last layer", "earlier": f"earlier "
              f"({m.get('earlier_layer')})", "reference": "random-init "
              "reference"}
    for key, label in labels.items():
        if m.get(key):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in m[key].items())
            lines.append(f"  {label:<28} {scores}")
    if m.get("scratch"):
        run = m["scratch"]
        planned = run.get("planned_epochs", run["epochs"])
        label = (f"scratch run ({run['epochs']} epochs)" if planned ==
                 run["epochs"] else f"scratch run ({run['epochs']} of "
                 f"{planned} epochs)")
        curve = " ".join(f"{v:.2f}" for v in run["val_accuracy_curve"])
        lines.append(f"  {label:<28} val_accuracy {run['val_accuracy']:.3f} "
                     f"(best of {curve}; {run['seconds']:.1f} s)")
    for problem in m["problems"]:
        lines.append(f"  note: {problem}")
    lines.append(f"  situation: {decision['situation']} (rule: "
                 f"{decision['rule']})")
    unfreeze = (f", unfreeze {decision['unfreeze']}"
                if decision["approach"] == "finetune" else "")
    lines.append(f"  choice: {decision['approach']}{unfreeze}")
    lines.append(f"  why: {decision['reason']}")
    return lines
