"""The report's PNG figures, drawn from the report alone (so they can be redrawn from report.json):
a confusion matrix per system, one reliability diagram of every system with confidences, and cost vs
quality (texts per second on a log axis against macro-F1, one point per system).

Systems are shown by the paper's names (systems.py); file names keep the keys. Each system has one colour and
marker in every figure.

matplotlib's object API with the Agg canvas: no pyplot state and no display are touched. Text from a recipe
or a feed (label names, system names; topics in the dashboard) is drawn literally: matplotlib would read text
between two $ as math (and fail on what is not), so ``literal`` escapes $, and ``plain_text`` draws without
TeX whatever the user's matplotlibrc says.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tailorkd.evaluation.systems import current_key, label

FIGURES_DIR = "figures"
_DPI = 120
# (colour, marker) per system key; systems this table does not know take the spare looks in turn.
_LOOKS = {"teacher": ("tab:blue", "s"), "untrained_student": ("tab:gray", "v"), "standard_kd": ("tab:orange", "^"),
          "adaptive_kd": ("tab:green", "o"), "seed_only": ("tab:purple", "D")}
_SPARE_LOOKS = (("tab:red", "P"), ("tab:brown", "X"), ("tab:pink", "*"), ("tab:olive", "h"), ("tab:cyan", "p"))


_Drawing = TypeVar("_Drawing", bound=Callable[..., Any])


def literal(text: Any) -> str:
    """``text`` as matplotlib shows it as given: each $ escaped, so nothing is read as math."""
    return str(text).replace("$", r"\$")


def plain_text(draw: _Drawing) -> _Drawing:
    """``draw`` run with matplotlib's own text rendering (no TeX, which would read the text as markup)."""

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.usetex": False}):
            return draw(*args, **kwargs)

    return drawn  # type: ignore[return-value]


def system_looks(names: list[str]) -> dict[str, tuple[str, str]]:
    """{name: (colour, marker)} for the systems ``names``, distinct among up to ten of them (an old key looks as
    its new one)."""
    looks, spare = {}, iter(_SPARE_LOOKS * (1 + len(names) // len(_SPARE_LOOKS)))
    for name in names:
        looks[name] = _LOOKS.get(current_key(name)) or next(spare)
    return looks


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
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
    ax.set_xticks(range(len(labels)), [literal(x) for x in labels], rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), [literal(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("human label")
    ax.set_title(f"{literal(label(name))}: accuracy {100 * metrics['accuracy']:.1f}%, "
                 f"macro-F1 {100 * metrics['macro_f1']:.1f}%")
    fig.tight_layout()
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
    looks = system_looks(list(drawable))
    for name, cal in drawable.items():
        colour, marker = looks[name]
        used = [b for b in cal["bins"] if b["count"]]
        x = [b["mean_confidence"] for b in used]
        y = [b["accuracy"] for b in used]
        area = [20 + 200 * b["count"] / cal["n"] for b in used]
        ax.plot(x, y, color=colour, marker=marker, markersize=4, linewidth=1.5,
                label=f"{literal(label(name))} (ECE {100 * cal['ece']:.1f}%)")
        ax.scatter(x, y, s=area, color=colour, marker=marker, alpha=0.5, edgecolors="none")
    ax.set_xlim(-0.02, 1.02)  # a margin, so points on the edges are drawn whole
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Reliability (equal-width confidence bins)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def _speed(texts_per_second: float) -> str:
    return f"{texts_per_second:,.0f}" if texts_per_second >= 100 else f"{texts_per_second:.3g}"


@plain_text
def cost_quality_plot(systems: dict[str, dict[str, Any]]) -> Any:
    """The cost-vs-quality figure (not saved): texts per second (log axis) against macro-F1 with its bootstrap
    interval, one point per system, or None when no system has a measured throughput.

    The points are named by a legend beside the axes (colour and marker per system, with its macro-F1 and
    speed), not by text at the points: systems of nearly equal quality and speed would overlap there.
    """
    points = {name: s for name, s in systems.items() if (s.get("cost") or {}).get("texts_per_second")}
    if not points:
        return None
    fig = _new_figure(8, 4.5)
    ax = fig.add_subplot()
    looks = system_looks(list(points))
    for name, s in points.items():
        m, speed = s["metrics"], s["cost"]["texts_per_second"]
        ci = (m.get("intervals") or {}).get("macro_f1")
        yerr = None if ci is None else [[100 * (m["macro_f1"] - ci["low"])], [100 * (ci["high"] - m["macro_f1"])]]
        colour, marker = looks[name]
        # Open markers: a point drawn over another nearly at its place leaves the other's outline visible.
        ax.errorbar([speed], [100 * m["macro_f1"]], yerr=yerr, fmt=marker, color=colour, capsize=4, markersize=9,
                    markerfacecolor="none", markeredgewidth=1.8,
                    label=f"{literal(label(name))}: {100 * m['macro_f1']:.1f}%, {_speed(speed)}/s")
    ax.set_xscale("log")
    speeds = [s["cost"]["texts_per_second"] for s in points.values()]
    ax.set_xlim(min(speeds) / 3, max(speeds) * 3)
    ax.set_xlabel("texts per second (log scale)")
    ax.set_ylabel("macro-F1 (%)")
    ax.set_title("Cost vs quality on the test set")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8,
              title="system: macro-F1, texts/s", title_fontsize=8)
    fig.tight_layout()  # makes room for the legend outside the axes
    return fig


def cost_quality_figure(systems: dict[str, dict[str, Any]], path: Path) -> bool:
    """Draw ``cost_quality_plot`` into ``path``; False (nothing drawn) when no system has a measured throughput."""
    fig = cost_quality_plot(systems)
    if fig is None:
        return False
    _save(fig, path)
    return True


@plain_text
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
