"""The signals dashboard: the page rendered from a signals folder, served by `tailorkd serve`, and checked in a
real headless browser (Debian's Chromium through its ChromeDriver and Selenium).

The signals are built with the public aggregation (``daily_signals``, ``find_alerts``) from articles whose
labels the test chooses, so the expected numbers come from the files, not from the page's own code. The
browser test saves a screenshot under $TAILORKD_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pandas as pd
import pytest

from helpers import (
    HOSTILE_TEXT,
    PATIENCE_S,
    SEVERITY_WEIGHTS,
    SIGNAL_LABELS,
    SIGNAL_SEVERITY,
    browser,
    fake_model,
    running,
    wait_for,
    write_signals,
)
from tailorkd.dashboard import read_signals_folder, render_dashboard, topic_table, write_dashboard
from tailorkd.errors import TailorkdError
from tailorkd.serve.app import DASHBOARD_COOKIE, ServeOptions, create_app

LABELS, WEIGHTS, SEVERITY, HOSTILE = SIGNAL_LABELS, SEVERITY_WEIGHTS, SIGNAL_SEVERITY, HOSTILE_TEXT
TOKEN = "dashboard-s3cret"
def test_the_page_escapes_texts_needs_no_network_and_counts_what_the_files_hold(tmp_path):
    folder = write_signals(tmp_path / "signals")
    page = render_dashboard(folder)
    daily, alerts, _ = read_signals_folder(folder)
    assert 0 < len(alerts) < len(daily)  # the fixture raises some alerts, not on every day
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page  # the article text is text
    assert "wildfire &lt;east&gt;" in page and "<east>" not in page
    # Nothing is fetched: no script, style, image or font from anywhere (SVG namespaces are names, not fetches).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//""", page)
    assert page.count('class="card topic-card"') == daily["topic"].nunique() == 3
    assert page.count('class="alert-row"') == len(alerts)
    for i in range(3):
        assert f'id="severity-{i}"' in page and f'id="risk-{i}"' in page
    assert re.search(r'id="kpi-articles">(\d+)<', page).group(1) == str(daily["n"].sum())
    topics = topic_table(daily, alerts, LABELS)
    assert list(topics["topic"]) == list(daily.groupby("topic")["n"].sum().sort_values(ascending=False).index)
    assert (topics[[f"n_{label}" for label in LABELS]].sum(axis=1) == topics["n"]).all()
    assert render_dashboard(folder) == page  # the same files, the same page


def test_a_folder_without_signals_or_with_a_damaged_file_is_a_one_line_error(tmp_path):
    with pytest.raises(TailorkdError, match=r"no signals there \(missing daily.parquet, alerts.jsonl, summary.json\)"):
        render_dashboard(tmp_path)
    folder = write_signals(tmp_path / "signals")
    with open(folder / "alerts.jsonl", "a") as f:
        f.write("{not json\n")
    lines = len((folder / "alerts.jsonl").read_text().splitlines())
    with pytest.raises(TailorkdError, match=rf"alerts.jsonl, line {lines}: not JSON"):
        write_dashboard(folder)
    assert not (folder / "dashboard.html").exists()


def test_topic_and_label_names_with_dollar_signs_are_drawn_as_written(tmp_path):
    folder = write_signals(tmp_path / "signals")
    daily = pd.read_parquet(folder / "daily.parquet")
    daily["topic"] = daily["topic"].replace({"floods": "Say $\\foo$ now", "port strike": "cost $5 or $6"})
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "labels": ["$risk$", "caution", "safe"]}))
    daily.rename(columns={"n_risk": "n_$risk$"}).to_parquet(folder / "daily.parquet", index=False)  # read as math
    page = render_dashboard(folder)
    assert ">Say $\\foo$ now</text>" in page and ">cost $5 or $6</text>" in page and ">$risk$</text>" in page


def test_a_damaged_daily_table_is_a_one_line_error(tmp_path):
    folder = write_signals(tmp_path / "signals")
    (folder / "daily.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(TailorkdError, match=r"daily.parquet: not a Parquet file .*run `tailorkd signals` again"):
        render_dashboard(folder)


def test_the_service_guards_the_page_with_the_token_and_follows_new_signals(tmp_path):
    folder = tmp_path / "signals"
    app = create_app(fake_model(), ServeOptions(signals_dir=folder), token=TOKEN)
    with running(app) as (url, _):
        with httpx.Client(base_url=url, timeout=PATIENCE_S) as client:
            assert client.get("/dashboard").status_code == 401
            assert client.get("/dashboard", params={"token": "wrong"}).status_code == 401
            missing = client.get("/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
            assert missing.status_code == 404 and "no signals there" in missing.json()["error"]["message"]
            write_signals(folder, seed=0)
            login = client.get("/dashboard", params={"token": TOKEN}, follow_redirects=False)
            assert login.status_code == 303 and login.headers["location"] == "/dashboard"
            assert "httponly" in login.headers["set-cookie"].lower()
            first = client.get("/dashboard")  # the cookie the redirect set
            assert first.status_code == 200 and first.headers["content-type"].startswith("text/html")
            daily = pd.read_parquet(folder / "daily.parquet")
            assert f'id="kpi-articles">{daily["n"].sum()}<' in first.text
            write_signals(folder, seed=1)  # a new signals run: the page follows
            os.utime(folder / "daily.parquet", ns=(1, 1))  # a new mtime even where the clock is coarse
            second = client.get("/dashboard")
            assert f'id="kpi-articles">{pd.read_parquet(folder / "daily.parquet")["n"].sum()}<' in second.text
            assert second.text != first.text
            client.cookies.set(DASHBOARD_COOKIE, "stale")
            assert client.get("/dashboard").status_code == 401
    app = create_app(fake_model(), ServeOptions(), token=TOKEN)  # no signals folder: no dashboard route
    with running(app) as (url, _):
        assert httpx.get(f"{url}/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


# -- in a real browser ---------------------------------------------------------------------------------------
def test_the_dashboard_renders_in_chromium_with_the_numbers_of_the_files(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    folder = write_signals(tmp_path / "signals")
    daily, alerts, _ = read_signals_folder(folder)
    topics = topic_table(daily, alerts, LABELS)
    app = create_app(fake_model(), ServeOptions(signals_dir=folder), token=TOKEN)
    driver = browser()
    driver.set_page_load_timeout(PATIENCE_S)
    try:
        with running(app) as (url, _):
            driver.get(f"{url}/dashboard?token={TOKEN}")  # the redirect sets the cookie, as for a user
            wait_for(lambda: driver.execute_script("return document.readyState") == "complete", "the page to load")
            assert driver.current_url == f"{url}/dashboard"
            count = lambda selector: len(driver.find_elements(By.CSS_SELECTOR, selector))  # noqa: E731

            # The charts: one per topic, one marker per day on each line, one per alert day.
            cards = driver.find_elements(By.CSS_SELECTOR, ".topic-card")
            assert [c.get_attribute("data-topic") for c in cards] == list(topics["topic"])
            for i, row in enumerate(topics.itertuples(index=False)):
                alert_days = {a["day"] for a in alerts if a["topic"] == row.topic}
                assert count(f"#topic-{i} svg") == 1
                assert count(f"#severity-{i} use") == count(f"#risk-{i} use") == row.days
                # the estimated share beside the count: one marker a day, inside its drawn interval band
                assert count(f"#estimate-{i} use") == row.days and count(f"#estimate-band-{i} path") == 1
                assert count(f"#alerts-{i} use") == len(alert_days)
                box = driver.find_element(By.CSS_SELECTOR, f"#topic-{i} svg").rect
                assert box["width"] > 200 and box["height"] > 80  # drawn, not collapsed
            # The class-mix bars: one per topic and label.
            assert count("[id^='mix-bar-']") == len(topics) * len(LABELS)

            # The alert list: every alert, newest first, with its numbers and its escaped articles.
            rows = driver.find_elements(By.CSS_SELECTOR, "#alert-table tbody tr")
            want = sorted(alerts, key=lambda a: (a["day"], a["topic"]), reverse=True)
            assert len(rows) == len(want)
            for row, alert in zip(rows, want):
                cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
                assert cells[:4] == [alert["day"], alert["topic"], alert["rule"], str(alert["n"])]
                assert cells[4] == f"{100 * alert['risk_share']:.1f}%"
                low, high = alert["risk_share_estimate_interval"]
                assert cells[6] == (f"{100 * alert['risk_share_estimate']:.1f}% ({100 * low:.1f}% – "
                                    f"{100 * high:.1f}%)")
                assert cells[7] == f"{100 * alert['sure']:.1f}%"
            assert driver.find_element(By.ID, "kpi-alerts").text == str(len(alerts))
            assert "shares estimated by pacc" in driver.find_element(By.ID, "quantifier").text
            assert driver.find_element(By.ID, "kpi-articles").text == str(daily["n"].sum())
            assert driver.execute_script("return window.pwned") is None  # the hostile text did not run
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert fetched == [], fetched

            # The class-mix table holds each topic's counts.
            for row in driver.find_elements(By.CSS_SELECTOR, "#mix-table tbody tr"):
                topic = topics.set_index("topic").loc[row.get_attribute("data-topic")]
                counts = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td[data-label]")]
                assert counts == [str(int(topic[f"n_{label}"])) for label in LABELS]

            artefacts = Path(os.environ.get("TAILORKD_TEST_ARTIFACTS", "test-artifacts"))
            artefacts.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(artefacts / "dashboard.png"))
            assert (artefacts / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # The topic filter: one topic's chart and alerts only.
            Select(driver.find_element(By.ID, "topic-filter")).select_by_value("floods")
            assert [c.get_attribute("data-topic") for c in cards if c.is_displayed()] == ["floods"]
            shown = [r for r in driver.find_elements(By.CSS_SELECTOR, ".alert-row") if r.is_displayed()]
            assert len(shown) == sum(a["topic"] == "floods" for a in alerts) > 0
    finally:
        driver.quit()
