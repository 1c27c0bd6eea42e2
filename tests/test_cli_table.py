"""The result table printed at the end of a run fits an 80-column terminal."""

from __future__ import annotations

from rich.console import Console

from fake_report import SEED_ONLY_MODEL, fake_report
from tailorkd.cli import print_summary
from tailorkd.evaluation.systems import label, short


def _render(report, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    print_summary(report, console=console)
    return console.export_text().splitlines()


def test_summary_fits_80_columns_with_one_line_per_system():
    report = fake_report()
    lines = _render(report)
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert not any("…" in line for line in lines)  # nothing cut: headers, names and models whole
    header = next(line for line in lines if "system" in line)
    for column in ("accuracy", "macro-F1", "sensitivity", "specificity", "texts/s"):
        assert column in header
    for name, system in report["systems"].items():
        m, speed = system["metrics"], system["cost"]["texts_per_second"]
        numbers = [f"{100 * m[k]:.2f}" for k in ("accuracy", "macro_f1", "sensitivity", "specificity")]
        numbers.append(f"{speed:.1f}")
        rows = [line for line in lines if line.startswith("│") and f"│ {short(name)} " in line]
        assert len(rows) == 1, (name, rows)
        assert all(n in rows[0] for n in numbers), (name, rows[0])
        # The model description is in the legend below the table, under the paper's name, not in the row.
        assert system["model"] not in rows[0]
    legend = " ".join(" ".join(line.split()) for line in lines if not line.startswith(("│", "┃", "┏", "┡", "└")))
    for name, system in report["systems"].items():
        assert f"{short(name)}: {label(name)}, " in legend
    assert SEED_ONLY_MODEL in legend  # wrapped over lines, but whole


def test_summary_of_an_old_report_names_student_as_adaptive_kd():
    lines = _render(fake_report(adaptive_key="student"))
    assert any(line.startswith("│ adapt KD ") for line in lines)
    assert any("adapt KD: adaptive KD, " in " ".join(line.split()) for line in lines)
