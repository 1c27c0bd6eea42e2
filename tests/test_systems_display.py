"""Systems are shown by the paper's names (report.md, figures, `tailorkd compare`), old reports' `student` as
adaptive KD, and the cost-quality figure names its points without text that could overlap."""

from __future__ import annotations

import itertools
import json

import pytest
from matplotlib.text import Text

from fake_report import fake_report
from tailorkd.evaluation.compare import compare_rows, render_comparison
from tailorkd.evaluation.figures import cost_quality_plot, system_looks, write_figures
from tailorkd.evaluation.report import REPORT_SCHEMA_VERSION, write_report
from tailorkd.evaluation.systems import SYSTEMS, current_key, label, short

PAPER_NAMES = ["teacher", "untrained student", "standard KD", "adaptive KD", "seed-only baseline"]


class _Recipe:
    def to_yaml(self) -> str:
        return "name: fake\n"


def test_the_table_of_systems():
    assert [label(k) for k in SYSTEMS] == PAPER_NAMES
    assert current_key("student") == "adaptive_kd" and label("student") == "adaptive KD"
    assert short("student") == "adapt KD" and label("something_new") == "something_new"
    assert all(len(s.short) <= 9 for s in SYSTEMS.values())  # the terminal table's first column


def _drawn_texts(ax):
    """Title, axis labels, legend and the tick labels within the view (matplotlib keeps others undrawn)."""
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label, ax.get_legend().get_title(), *ax.get_legend().get_texts()]
    for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        for minor in (False, True):
            texts += [t for loc, t in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor))
                      if low <= loc <= high]
    return [t for t in texts if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("adaptive_key", ["adaptive_kd", "student"])
def test_cost_quality_names_coincident_points_in_a_legend_that_overlaps_nothing(adaptive_key):
    report = fake_report(adaptive_key)
    systems = report["systems"]
    # standard KD and adaptive KD: the same macro-F1, 910 and 905 texts/s; text at the points overlapped.
    assert systems["standard_kd"]["metrics"]["macro_f1"] == systems[adaptive_key]["metrics"]["macro_f1"]
    fig = cost_quality_plot(systems)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert not ax.texts  # no text at the points
    legend = ax.get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    assert [e.split(":")[0] for e in entries] == PAPER_NAMES
    # The legend lies beside the axes (it hides no point) and inside the figure (nothing cut off).
    legend_box, ax_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert not legend_box.overlaps(ax_box)
    assert fig.bbox.x0 <= legend_box.x0 and legend_box.x1 <= fig.bbox.x1
    assert fig.bbox.y0 <= legend_box.y0 and legend_box.y1 <= fig.bbox.y1
    # No two texts of the figure (title, axis labels, ticks, legend) intersect.
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn_texts(ax)]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), (a, b)
    # Each point is told apart by its look alone.
    looks = system_looks(list(systems))
    assert len(set(looks.values())) == len(looks) and len({m for _, m in looks.values()}) == len(looks)


def test_figures_from_report_json_alone_use_paper_names_and_keep_keys_in_file_names(tmp_path):
    report = json.loads(json.dumps(fake_report("student")))  # what report.json holds, an old one
    made = write_figures(report, tmp_path)
    assert made["confusion_matrix"]["student"] == "figures/confusion_student.png"
    assert all((tmp_path / p).is_file() for p in [*made["confusion_matrix"].values(), made["reliability"],
                                                     made["cost_quality"]])
    assert cost_quality_plot({"x": {"metrics": {}, "cost": {"texts_per_second": None}}}) is None


def test_report_markdown_uses_paper_names(tmp_path):
    report = write_report(fake_report(), _Recipe(), tmp_path)
    assert report["schema_version"] == REPORT_SCHEMA_VERSION == 3
    md = (tmp_path / "report.md").read_text()
    assert "## Systems" in md and "- **adaptive KD** (`adaptive_kd`): the student trained as the recipe says" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for key, name in zip(SYSTEMS, PAPER_NAMES):
        model = report["systems"][key]["model"]
        assert f"| {name} | {model} | " in md  # the quality table
        assert f"**{name}**" in md  # the per-class section
        assert f"- [{name}: confusion matrix](figures/confusion_{key}.png)" in md
        if "_" in key:
            assert not any(line.startswith(f"| {key} |") for line in rows)
    assert "seed-only baseline: 1 / mean seconds per text" in md  # definitions name the systems too


def test_compare_shows_paper_names_and_reads_an_old_report(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    for folder, schema, key in ((new, 3, "adaptive_kd"), (old, 2, "student")):
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({"schema_version": schema, **fake_report(key)}))
    rows = compare_rows([new, old])
    assert [r["system"] for r in rows] == list(SYSTEMS) * 2  # old `student` lines up with adaptive_kd
    assert [r["label"] for r in rows] == PAPER_NAMES * 2
    table = render_comparison(rows).splitlines()
    assert [line.split(" | ")[:2] for line in table[2:]] == [["| new", n] for n in PAPER_NAMES] + [
        ["| old", n] for n in PAPER_NAMES]
    assert "student |" not in "\n".join(table).replace("untrained student |", "")


def test_names_with_dollar_signs_are_drawn_as_written_not_as_math(tmp_path):
    report = json.loads(json.dumps(fake_report("adaptive_kd")))
    systems = report["systems"]
    systems["my $\\foo$ system"] = systems.pop("standard_kd")  # a system key or label matplotlib reads as math
    for system in systems.values():
        matrix = system["metrics"]["confusion_matrix"]
        matrix["labels"] = [f"${name}$ \\bar" for name in matrix["labels"]]
    made = write_figures(report, tmp_path)
    assert (tmp_path / made["confusion_matrix"]["my $\\foo$ system"]).is_file()
    fig = cost_quality_plot(systems)
    fig.canvas.draw()
    entries = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(e.startswith("my \\$\\foo\\$ system:") for e in entries)  # $ escaped: shown, not parsed
