"""The signals dashboard: one self-contained HTML page from a signals folder (``tailorkd signals`` output).

    daily.parquet, alerts.jsonl, summary.json ──> render_dashboard ──> dashboard.html

The page shows, per topic, the severity index with its interval and the risk share over time (the count's, and
the estimated one with its interval where the table has it: ``tailorkd.quantify``; alert days marked), the
alerts with their top articles (each with its estimated share and how sure it is), and the class mix per
topic. Charts are matplotlib SVG inlined in the page, its style and its one small script (the topic filter) are
inline too: the page needs nothing from the network, so it opens from disk, behind a firewall, or from
``tailorkd serve`` (GET /dashboard).

Topic and label names are drawn literally (``evaluation.figures.literal``: a topic such as 'Say $\\foo$ now'
is not read as math), without TeX.

Each chart's elements carry ids (``severity-<i>``, ``risk-<i>``, ``estimate-<i>``, ``estimate-band-<i>``,
``alerts-<i>``, ``mix-bar-<i>-<j>``: topic i, label j, in the page's order) and the numbers are also in tables,
so a browser test can check what is drawn.
``signals`` writes the page after every run; ``serve`` renders it again when the folder's files change.
"""

from __future__ import annotations

import io
import json
import math
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from tailorkd.errors import TailorkdError
from tailorkd.evaluation.figures import literal, plain_text

FILES = ("daily.parquet", "alerts.jsonl", "summary.json")
PAGE = "dashboard.html"
# One colour per label in the task's order (risk first in the crisis recipes); more labels cycle.
LABEL_COLOURS = ("#c0392b", "#e67e22", "#27ae60", "#2980b9", "#8e44ad", "#7f8c8d")
SEVERITY_COLOUR, RISK_COLOUR, ALERT_COLOUR, ESTIMATE_COLOUR = "#34495e", "#c0392b", "#e74c3c", "#8e44ad"


def read_signals_folder(folder: Path) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, Any]]:
    """The daily table, the alerts and summary.json of a signals folder; a one-line error when one is missing
    or damaged."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise TailorkdError(f"{folder}: no signals there (missing {', '.join(missing)}); run `tailorkd signals`")
    rerun = "; run `tailorkd signals` again to rewrite it from the store"
    try:
        daily = pd.read_parquet(folder / "daily.parquet")
    except (OSError, ValueError) as exc:  # pyarrow's errors for a damaged file are both
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TailorkdError(f"{folder / 'daily.parquet'}: not a Parquet file ({detail}){rerun}") from None
    alerts = []
    with open(folder / "alerts.jsonl", encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    alert = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TailorkdError(f"{folder / 'alerts.jsonl'}, line {number}: not JSON ({exc.msg}){rerun}"
                                        ) from None
                if not isinstance(alert, dict) or not {"topic", "day"} <= set(alert):
                    raise TailorkdError(f"{folder / 'alerts.jsonl'}, line {number}: not an alert{rerun}")
                alerts.append(alert)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise TailorkdError(f"{folder / 'summary.json'}: not JSON ({exc.msg}){rerun}") from None
    if not isinstance(summary, dict):
        raise TailorkdError(f"{folder / 'summary.json'}: not a JSON object{rerun}")
    return daily, alerts, summary


def label_names(daily: pd.DataFrame, summary: dict[str, Any]) -> list[str]:
    """The task's labels: summary.json's list, else the daily table's count columns in order."""
    return list(summary.get("labels") or [c[2:] for c in daily.columns if c.startswith("n_") and c != "n_"])


def topic_table(daily: pd.DataFrame, alerts: list[dict[str, Any]], names: list[str]) -> pd.DataFrame:
    """One row per topic, most articles first: articles, days, risk articles, alerts, counts per label."""
    if daily.empty:
        return pd.DataFrame(columns=["topic", "n", "days", "risk", "risk_share", "alerts",
                                     *[f"n_{name}" for name in names]])
    risk = (daily["risk_share"] * daily["n"]).round()
    table = daily.assign(risk=risk).groupby("topic", sort=False).agg(
        n=("n", "sum"), days=("day", "nunique"), risk=("risk", "sum"),
        **{f"n_{name}": (f"n_{name}", "sum") for name in names}).reset_index()
    table["risk_share"] = table["risk"] / table["n"]
    counts = pd.Series([a["topic"] for a in alerts], dtype=object).value_counts()
    table["alerts"] = table["topic"].map(counts).fillna(0).astype(int)
    return table.sort_values(["n", "topic"], ascending=[False, True], kind="stable").reset_index(drop=True)


def render_dashboard(folder: Path, title: str | None = None) -> str:
    """The dashboard page of the signals in ``folder``, as one HTML string."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    daily, alerts, summary = read_signals_folder(folder)
    names = label_names(daily, summary)
    topics = topic_table(daily, alerts, names)
    alert_days = {(a["topic"], a["day"]) for a in alerts}
    cards = []
    for i, row in enumerate(topics.itertuples(index=False)):
        days = daily[daily["topic"] == row.topic].sort_values("day")
        cards.append({"index": i, "topic": row.topic, "n": int(row.n), "days": int(row.days),
                      "risk_share": float(row.risk_share), "alerts": int(row.alerts),
                      "first_day": days["day"].iloc[0], "last_day": days["day"].iloc[-1],
                      "svg": topic_chart(days, i, alert_days)})
    environment = Environment(loader=PackageLoader("tailorkd", "templates"), autoescape=select_autoescape(["html"]))
    environment.filters["percent"] = lambda value: "–" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
    return environment.get_template("dashboard.html").render(
        title=title or summary.get("title") or "tailorkd signals",
        summary=summary, labels=names, label_colours=dict(zip(names, _colours(len(names)))),
        risk_labels=summary.get("risk_labels") or names[:1], cards=cards,
        quantifier=summary.get("quantifier") if isinstance(summary.get("quantifier"), dict) else None,
        topics=topics.to_dict("records"), alerts=sorted(alerts, key=lambda a: (a["day"], a["topic"]), reverse=True),
        days=int(daily["day"].nunique()) if len(daily) else 0, articles=int(daily["n"].sum()) if len(daily) else 0,
        mix_svg=class_mix_chart(topics, names) if len(topics) else "",
        generated=datetime.fromtimestamp((Path(folder) / "daily.parquet").stat().st_mtime, timezone.utc
                                         ).strftime("%Y-%m-%d %H:%M UTC"))


class DashboardPage:
    """The page of one signals folder for the service: rendered again only when the folder's files change
    (a new ``tailorkd signals`` run), one render at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._html = ""

    def get(self) -> str:
        """The current page; a TailorkdError when the folder holds no signals."""
        with self._lock:
            try:
                stamp = tuple((name, (self.folder / name).stat().st_mtime_ns) for name in FILES)
            except FileNotFoundError:
                read_signals_folder(self.folder)  # raises the one-line error naming what is missing
                raise
            if stamp != self._stamp:
                self._html, self._stamp = render_dashboard(self.folder), stamp
            return self._html


def write_dashboard(folder: Path, title: str | None = None) -> Path:
    """Render the dashboard of ``folder`` into ``folder``/dashboard.html (atomically); returns its path."""
    from tailorkd.files import write_text_atomic

    path = Path(folder) / PAGE
    write_text_atomic(path, render_dashboard(folder, title))
    return path


# -- charts -------------------------------------------------------------------------------------------------
def _colours(count: int) -> list[str]:
    return [LABEL_COLOURS[j % len(LABEL_COLOURS)] for j in range(count)]


def _svg(figure) -> str:
    """A matplotlib figure as an inline <svg> element (text kept as text, no XML header)."""
    import matplotlib

    buffer = io.StringIO()
    # Text as <text> (searchable, small); a fixed hash salt and no date keep the SVG the same from run to run.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tailorkd"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float):
    """A figure and its axes, without pyplot: no global figure registry, so the service may render in a thread
    (``DashboardPage`` renders one page at a time)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.size": 8}):
        figure = Figure(figsize=(width, height))
        return figure, figure.subplots()


@plain_text
def topic_chart(days: pd.DataFrame, index: int, alert_days: set[tuple[str, str]]) -> str:
    """One topic's severity index (with its interval) and risk share per day, alert days marked."""
    import matplotlib.dates as mdates

    figure, axis = _figure(4.2, 2.0)
    x = pd.to_datetime(days["day"]).to_numpy()
    axis.fill_between(x, days["severity_index_low"].astype(float), days["severity_index_high"].astype(float),
                      color=SEVERITY_COLOUR, alpha=0.15, linewidth=0, label="_interval")
    severity, = axis.plot(x, days["severity_index"], color=SEVERITY_COLOUR, marker="o", markersize=2.5,
                          linewidth=1.2, label="severity index")
    risk, = axis.plot(x, days["risk_share"], color=RISK_COLOUR, marker="s", markersize=2, linewidth=0.8,
                      linestyle="--", label="risk share (count)")
    severity.set_gid(f"severity-{index}")
    risk.set_gid(f"risk-{index}")
    shown = "risk_share"
    if "risk_share_estimate" in days.columns:  # the corrected share (tailorkd.quantify), with its interval
        band = axis.fill_between(x, days["risk_share_estimate_low"].astype(float),
                                 days["risk_share_estimate_high"].astype(float), color=ESTIMATE_COLOUR, alpha=0.18,
                                 linewidth=0, label="_estimate interval")
        band.set_gid(f"estimate-band-{index}")
        estimate, = axis.plot(x, days["risk_share_estimate"], color=ESTIMATE_COLOUR, marker="D", markersize=2.2,
                              linewidth=1.2, label="risk share (estimated)")
        estimate.set_gid(f"estimate-{index}")
        shown = "risk_share_estimate"
    fired = days[[(t, d) in alert_days for t, d in zip(days["topic"], days["day"])]]
    if len(fired):
        marks, = axis.plot(pd.to_datetime(fired["day"]).to_numpy(), fired[shown], linestyle="none",
                           marker="^", markersize=7, color=ALERT_COLOUR, label="alert")
        marks.set_gid(f"alerts-{index}")
    if len(x) == 1:  # one day: a range of zero would leave the date locator nothing to divide
        axis.set_xlim(x[0] - pd.Timedelta(days=1).to_timedelta64(), x[0] + pd.Timedelta(days=1).to_timedelta64())
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3, linewidth=0.5)
    axis.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(axis.xaxis.get_major_locator()))
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)
    axis.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=6, frameon=False, ncol=3, borderaxespad=0.2)
    return _svg(figure)


@plain_text
def class_mix_chart(topics: pd.DataFrame, names: list[str]) -> str:
    """Per topic, the share of each label among its articles: stacked horizontal bars."""
    figure, axis = _figure(7.5, 0.6 + 0.24 * len(topics))
    shares = topics[[f"n_{name}" for name in names]].to_numpy(dtype=float) / topics["n"].to_numpy()[:, None]
    left = [0.0] * len(topics)
    positions = list(range(len(topics)))[::-1]  # the biggest topic on top, as in the table
    for j, (name, colour) in enumerate(zip(names, _colours(len(names)))):
        bars = axis.barh(positions, shares[:, j], left=left, color=colour, label=literal(name), height=0.7)
        for i, bar in enumerate(bars):
            bar.set_gid(f"mix-bar-{i}-{j}")
        left = [a + b for a, b in zip(left, shares[:, j])]
    axis.set_yticks(positions, [literal(t) for t in topics["topic"]])
    axis.set_xlim(0, 1)
    axis.xaxis.set_major_formatter(lambda value, _: f"{100 * value:.0f}%")
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names), fontsize=7, frameon=False)
    for side in ("top", "right"):
        axis.spines[side].set_visible(False)
    return _svg(figure)
