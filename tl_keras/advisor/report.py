"""The decision as readable lines, for the terminal and report.md."""


def summary_lines(measurements, decision):
    """The decision as a few readable lines for the terminal."""
    m = measurements
    lines = [f"Advisor ({m.get('seconds', 0):.1f} s, {m['sample']} sampled "
             f"training images, {m['num_classes']} classes, chance "
             f"{m['chance']:.3f}):"]
    scored = {"last layer": m.get("last") or {},
              **{k: v for k, v in (m.get("layers") or {}).items()}}
    for label, scores in scored.items():
        if scores:
            text = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            lines.append(f"  {label:<28} {text}")
    lines.append(_scratch_line(m.get("scratch") or {}))
    if decision.get("estimates"):
        lines.append("  estimates (validation accuracy, ± 1 standard error):")
    for e in decision.get("estimates", []):
        value = (f">= {e['estimate']:.3f}" if e["approach"] == "finetune"
                 else f"{e['estimate']:.3f} ± {e['se']:.3f}")
        lines.append(f"    {e['candidate']:<26} {value:<15} {e['basis']}")
    for problem in m["problems"]:
        lines.append(f"  note: {problem}")
    lines.append(f"  situation: {decision['situation']} (rule: "
                 f"{decision['rule']})")
    lines.append(f"  choice: {choice_text(decision)}")
    lines.append(f"  why: {decision['reason']}")
    return lines


def choice_text(decision):
    """'finetune from block4, unfreeze all' and the like."""
    approach = decision["approach"]
    if approach == "scratch":
        return "scratch"
    block = decision.get("feature_block") or ""
    text = approach + (f" from {block}" if block else "")
    if approach == "finetune":
        text += f", unfreeze {decision['unfreeze']}"
    return text


def _scratch_line(run):
    label = "scratch run"
    if not run:
        return f"  {label:<28} not run"
    if "skipped" in run:
        return f"  {label:<28} skipped: {run['skipped']}"
    planned = run.get("planned_epochs", run["epochs"])
    label += (f" ({run['epochs']} epochs)" if planned == run["epochs"]
              else f" ({run['epochs']} of {planned} epochs)")
    curve = " ".join(f"{v:.2f}" for v in run["val_accuracy_curve"])
    stopped = f"; stopped: {run['stopped']}" if run.get("stopped") else ""
    return (f"  {label:<28} val_accuracy {run['val_accuracy']:.3f} "
            f"(best of {curve}; {run['seconds']:.1f} s{stopped})")
