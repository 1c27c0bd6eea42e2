"""The report's PNG figures, drawn from the report alone (so they can be redrawn from report.json):
a confusion matrix per system, one reliability diagram of every system with confidences, and cost vs
quality (texts per second on a log axis against macro-F1, one point per system).

matplotlib's object API with the Agg canvas: no pyplot state and no display are touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FIGURES_DIR = "figures"
_DPI = 120


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def confusion_matrix_figure(name: str, metrics: dict[str, Any], path: Path) -> None:
    """Counts with rows = human label, columns = predicted; colour = share of the row (recall)."""
    cm = metrics["confusion_matrix"]
    labels, counts = cm["labels"], np.array(cm["rows_true_cols_predicted"], dtype=float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 2.5 + 0.6 * len(labels)
    fig = _new_figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the human label's texts")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("human label")
    ax.set_title(f"{name}: accuracy {100 * metrics['accuracy']:.1f}%, macro-F1 {100 * metrics['macro_f1']:.1f}%")
    _save(fig, path)


def reliability_figure(systems: dict[str, dict[str, Any]], path: Path) -> bool:
    """Accuracy against mean confidence per non-empty bin, one line per system (marker area ~ texts in the
    bin), with the diagonal of perfect calibration. False (nothing drawn) when no system has confidences."""
    drawable = {name: s["metrics"]["calibration"] for name, s in systems.items()
                if s["metrics"].get("calibration", {}).get("ece") is not None}
    if not drawable:
        return False
    fig = _new_figure(5.5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, cal in drawable.items():
        used = [b for b in cal["bins"] if b["count"]]
        x = [b["mean_confidence"] for b in used]
        y = [b["accuracy"] for b in used]
        area = [20 + 200 * b["count"] / cal["n"] for b in used]
        line = ax.plot(x, y, marker="", linewidth=1.5, label=f"{name} (ECE {100 * cal['ece']:.1f}%)")[0]
        ax.scatter(x, y, s=area, color=line.get_color(), alpha=0.7, edgecolors="none")
    ax.set_xlim(-0.02, 1.02)  # a margin, so points on the edges are drawn whole
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Reliability (equal-width confidence bins)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)
    return True


def cost_quality_figure(systems: dict[str, dict[str, Any]], path: Path) -> bool:
    """Texts per second (log axis) against macro-F1 with its bootstrap interval, one point per system.
    False (nothing drawn) when no system has a measured throughput."""
    points = {name: s for name, s in systems.items() if (s.get("cost") or {}).get("texts_per_second")}
    if not points:
        return False
    fig = _new_figure(6, 4.5)
    ax = fig.add_subplot()
    for name, s in points.items():
        m, speed = s["metrics"], s["cost"]["texts_per_second"]
        ci = (m.get("intervals") or {}).get("macro_f1")
        yerr = None if ci is None else [[100 * (m["macro_f1"] - ci["low"])], [100 * (ci["high"] - m["macro_f1"])]]
        ax.errorbar([speed], [100 * m["macro_f1"]], yerr=yerr, fmt="o", capsize=4, markersize=7, label=name)
        ax.annotate(name, (speed, 100 * m["macro_f1"]), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    speeds = [s["cost"]["texts_per_second"] for s in points.values()]
    ax.set_xlim(min(speeds) / 3, max(speeds) * 3)
    ax.set_xlabel("texts per second (log scale)")
    ax.set_ylabel("macro-F1 (%)")
    ax.set_title("Cost vs quality on the test set")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)
    return True


def write_figures(report: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Draw the figures into ``<out_dir>/figures/``; return their paths relative to ``out_dir``:
    {"confusion_matrix": {system: path}, "reliability": path or None, "cost_quality": path or None}."""
    out_dir = Path(out_dir)
    folder = out_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    systems = report["systems"]
    made: dict[str, Any] = {"confusion_matrix": {}}
    for old in folder.glob("confusion_*.png"):  # of systems this evaluation no longer has
        if old.stem.removeprefix("confusion_") not in systems:
            old.unlink()
    for name, s in systems.items():
        path = folder / f"confusion_{name}.png"
        confusion_matrix_figure(name, s["metrics"], path)
        made["confusion_matrix"][name] = str(path.relative_to(out_dir))
    path = folder / "reliability.png"
    made["reliability"] = str(path.relative_to(out_dir)) if reliability_figure(systems, path) else None
    path = folder / "cost_quality.png"
    made["cost_quality"] = str(path.relative_to(out_dir)) if cost_quality_figure(systems, path) else None
    return made
