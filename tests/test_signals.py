"""Crisis signals: a feed of articles scored by the run's student, aggregated per topic and day, with alerts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import TOPICS, make_recipe, topic_rows, write_jsonl
from tailorkd import pipeline
from tailorkd.cli import main
from tailorkd.recipe import SignalRule, load_recipe
from tailorkd.signals import SignalStore, daily_signals, find_alerts, wilson_interval

WEIGHTS = {"none": 0.0, "low": 1 / 3, "medium": 2 / 3, "high": 1.0}


def _signals(rows):
    """A frame of stored signals from (topic, day, label, severity, confidence) tuples."""
    return pd.DataFrame([{"key": f"k{i}", "id": f"a{i}", "topic": t, "day": d, "label": lab, "severity": sev,
                          "confidence": c, "text": f"article {i}", "source": "wire"}
                         for i, (t, d, lab, sev, c) in enumerate(rows)])


def test_wilson_interval_is_sound_at_the_edges():
    low, high = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert low[0] == 0 and high[0] == pytest.approx(0.2775, abs=1e-3)  # 0 of 10 still leaves room
    assert low[1] == pytest.approx(0.2366, abs=1e-3) and high[1] == pytest.approx(0.7634, abs=1e-3)
    assert high[2] == pytest.approx(1.0) and low[2] == pytest.approx(0.7225, abs=1e-3)


def test_daily_signals_count_share_index_and_trailing_baseline():
    rows = []
    for day in range(1, 8):  # a quiet week: 1 risk in 10 a day
        rows += [("floods", f"2024-01-0{day}", "risk", "low", 0.6)] + [("floods", f"2024-01-0{day}", "safe", "none",
                                                                        0.9)] * 9
    rows += [("floods", "2024-01-08", "risk", "high", 0.95)] * 6 + [("floods", "2024-01-08", "safe", "none", 0.8)] * 4
    rows += [("fires", "2024-01-08", "caution", "medium", 0.7)] * 2
    frame = _signals(rows)
    daily = daily_signals(frame, ["risk", "caution", "safe"], ["risk"], WEIGHTS, baseline_days=7)
    assert len(daily) == 9 and daily["n"].sum() == len(frame)
    last = daily[(daily["topic"] == "floods") & (daily["day"] == "2024-01-08")].iloc[0]
    assert (last["n"], last["n_risk"], last["n_safe"], last["n_caution"]) == (10, 6, 4, 0)
    assert last["risk_share"] == pytest.approx(0.6)
    assert last["risk_share_low"] < 0.6 < last["risk_share_high"]
    assert last["severity_index"] == pytest.approx(0.6)  # 6 high (weight 1) of 10
    assert last["severity_index_low"] < 0.6 < last["severity_index_high"]
    assert last["baseline_risk_share"] == pytest.approx(0.1) and last["baseline_n"] == 70
    first = daily[(daily["topic"] == "floods") & (daily["day"] == "2024-01-01")].iloc[0]
    assert np.isnan(first["baseline_risk_share"]) and first["baseline_n"] == 0
    fires = daily[daily["topic"] == "fires"].iloc[0]
    assert fires["risk_share"] == 0 and fires["severity_index"] == pytest.approx(2 / 3)

    rules = [SignalRule(name="share", kind="share_above", threshold=0.5, min_count=10),
             SignalRule(name="rise", kind="rise_over_baseline", threshold=3.0, min_count=10, baseline_days=7),
             SignalRule(name="share, big days only", kind="share_above", threshold=0.5, min_count=11)]
    alerts = find_alerts(daily, frame, rules, ["risk"], top_articles=2)
    assert [(a["topic"], a["day"], a["rule"]) for a in alerts] == [("floods", "2024-01-08", "share"),
                                                                   ("floods", "2024-01-08", "rise")]
    rise = alerts[1]
    assert rise["ratio"] == pytest.approx(6.0) and rise["baseline_n"] == 70
    # each rule reads its own window: two days hold 20 articles, too few for a baseline of at least 30
    short = [SignalRule(name="2 days", kind="rise_over_baseline", threshold=3.0, baseline_days=2),
             SignalRule(name="2 days, 30 needed", kind="rise_over_baseline", threshold=3.0, baseline_days=2,
                        min_baseline_count=30)]
    [two_days] = find_alerts(daily, frame, short, ["risk"], top_articles=0)
    assert (two_days["rule"], two_days["baseline_n"], two_days["baseline_days"]) == ("2 days", 20, 2)
    assert len(rise["top_articles"]) == 2 and all(a["label"] == "risk" for a in rise["top_articles"])
    assert rise["top_articles"][0]["confidence"] == pytest.approx(0.95)


@pytest.fixture(scope="module")
def trained_run(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals_run")
    recipe_path = make_recipe(folder, tiny_models["llama"], tiny_models["bert"],
                              evaluation={"systems": ["teacher", "adaptive_kd"]},
                              alerts={"severity": {"business": [[0.5, "high"], [0.0, "low"]]}})
    assert main(["run", recipe_path]) == 0
    return folder, recipe_path


def _feed(folder, name, day, n, start=0):
    rows = []
    for i, row in enumerate(topic_rows(4)[start : start + n]):
        rows.append({"id": f"{name}-{i}", "text": row["text"], "date": day, "topic": row["label"][:4],
                     "source": "wire"})
    return write_jsonl(folder / f"{name}.jsonl", rows)


def test_signals_score_a_feed_once_and_add_only_new_days(trained_run, tmp_path):
    folder, recipe_path = trained_run
    day1 = _feed(tmp_path, "day1", "2024-03-01T08:30:00Z", 12)
    with day1.open("a") as f:  # a repeat of an article, an empty text and a date that is not one
        f.write(json.dumps({"id": "day1-0", "text": "News item 0 again", "date": "2024-03-01", "topic": "busi"}) + "\n")
        f.write(json.dumps({"id": "x", "text": "  ", "date": "2024-03-01", "topic": "busi"}) + "\n")
        f.write(json.dumps({"id": "y", "text": "Storm warning", "date": "not a day", "topic": "busi"}) + "\n")
    out = tmp_path / "signals"
    assert main(["signals", recipe_path, str(day1), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["articles_read"], summary["articles_scored_now"], summary["articles_stored"]) == (13, 12, 12)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(" ")[0]) for r in rejects] == [(14, "empty"), (15, "'date'")]
    assert all(r["file"] == str(day1) for r in rejects)

    stored = pd.read_parquet(out / "signals.parquet").set_index("id")
    recipe = load_recipe(recipe_path)
    rows = [{"id": r["id"], "text": r["text"]} for r in map(json.loads, day1.read_text().splitlines()[:12])]
    for answer in pipeline.classify(recipe, rows):  # the same student, the same calibrated answers
        mine = stored.loc[answer["id"]]
        probs = [answer["probabilities"][t] for t in TOPICS]
        assert [mine[f"p_{t}"] for t in TOPICS] == pytest.approx(probs, abs=1e-5)  # in other batches
        if np.sort(probs)[-1] - np.sort(probs)[-2] > 1e-4:  # a tiny random student may answer near ties
            assert (mine["label"], mine["severity"]) == (answer["label"], answer["severity"])
    assert set(stored["day"]) == {"2024-03-01"}
    daily = pd.read_parquet(out / "daily.parquet")
    assert daily["n"].sum() == 12 and set(daily["topic"]) == {"busi", "ente", "poli"}  # 4 articles each
    assert (daily[[f"n_{t}" for t in TOPICS]].sum(axis=1) == daily["n"]).all()

    # The same file again adds nothing; a new day's file adds only its rows.
    first = pd.read_parquet(out / "signals.parquet")
    assert main(["signals", recipe_path, str(day1), "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert (again["articles_scored_now"], again["articles_stored"]) == (0, 12)
    page = (out / "dashboard.html").read_text()  # the dashboard is written with the signals
    assert 'id="kpi-articles">12<' in page and page.count('class="card topic-card"') == 3
    pd.testing.assert_frame_equal(pd.read_parquet(out / "signals.parquet"), first)
    day2 = _feed(tmp_path, "day2", "2024-03-02", 8, start=12)
    assert main(["signals", recipe_path, str(day1), str(day2), "--out", str(out)]) == 0
    both = json.loads((out / "summary.json").read_text())
    assert (both["articles_scored_now"], both["articles_stored"], both["days"]) == (8, 20, 2)
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert all(a["n"] >= 10 for a in alerts)  # the default rules' min_count: no day holds 10 articles per topic


def test_signals_estimate_shares_from_the_seed_guards_predictions_or_say_they_cannot(trained_run, tmp_path):
    from tailorkd.run_dir import RunDir

    folder, recipe_path = trained_run
    feed = _feed(tmp_path, "day", "2024-03-04", 16)
    out = tmp_path / "signals"
    pacc = ["--set", "signals.quantifier=pacc"]
    assert main(["signals", recipe_path, str(feed), "--out", str(out), *pacc]) == 0
    quantifier = json.loads((out / "summary.json").read_text())["quantifier"]
    assert quantifier["method"] == quantifier["asked"] == "pacc"
    assert "cross-fitted predictions on" in quantifier["labelled"] and quantifier["note"] is None
    daily = pd.read_parquet(out / "daily.parquet")
    assert ((daily["risk_share_estimate_low"] <= daily["risk_share_estimate"] + 1e-9)
            & (daily["risk_share_estimate"] <= daily["risk_share_estimate_high"] + 1e-9)).all()
    shares = daily[[f"share_{t}" for t in TOPICS]].sum(axis=1)
    assert np.allclose(shares, 1.0, atol=1e-6)
    assert 'id="estimate-0"' in (out / "dashboard.html").read_text()

    guard = RunDir(load_recipe(recipe_path)).seed_guard
    hidden = guard.with_suffix(".hidden")
    guard.rename(hidden)  # a run without the guard's predictions: raw counts, and the summary says why
    try:
        assert main(["signals", recipe_path, str(feed), "--out", str(tmp_path / "raw"), *pacc]) == 0
    finally:
        hidden.rename(guard)
    quantifier = json.loads((tmp_path / "raw" / "summary.json").read_text())["quantifier"]
    assert (quantifier["method"], quantifier["asked"], quantifier["labelled"]) == ("raw", "pacc", None)
    assert "the shares are raw counts" in quantifier["note"]
    raw = pd.read_parquet(tmp_path / "raw" / "daily.parquet")
    assert np.allclose(raw["risk_share_estimate"], raw["risk_share"])


def test_a_killed_signals_run_keeps_its_stored_batches(trained_run, tmp_path, monkeypatch):
    folder, recipe_path = trained_run
    feed = _feed(tmp_path, "day", "2024-03-05", 20)
    out = tmp_path / "signals"
    import tailorkd.students

    real, calls = tailorkd.students.predict_probs, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while scoring the second batch
        return real(*args, **kwargs)

    monkeypatch.setattr(tailorkd.students, "predict_probs", dying)
    with pytest.raises(KeyboardInterrupt):
        pipeline.signals(load_recipe(recipe_path, ["signals.batch_size=8"]), [feed], out)
    monkeypatch.setattr(tailorkd.students, "predict_probs", real)
    assert main(["signals", recipe_path, str(feed), "--out", str(out), "--set", "signals.batch_size=8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["articles_scored_now"], summary["articles_stored"]) == (12, 20)  # the first 8 were kept


def test_bad_feeds_and_settings_are_one_line_errors(trained_run, tmp_path, capsys):
    folder, recipe_path = trained_run
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"body": "no text column", "date": "2024-01-01"}])
    assert main(["signals", recipe_path, str(bad), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"error: signals ({bad}): none of its 1 rows could be read (first: line 1: missing text "
                     "(column 'text')); the lines have the keys body, date; check signals.columns and format")
    no_date = tmp_path / "no_date.csv"
    no_date.write_text("id,text\n1,Storm warning\n", encoding="utf-8")
    assert main(["signals", recipe_path, str(no_date), "--out", str(tmp_path / "o")]) == 2
    assert "column 'date' (signals.columns.date) is not in the CSV header" in capsys.readouterr().err
    assert main(["signals", recipe_path, str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no feed file there" in capsys.readouterr().err
    assert main(["signals", recipe_path, str(bad), "--set", "signals.risk_labels=[nope]"]) == 2
    assert "signals.risk_labels names labels the task does not have: ['nope']" in capsys.readouterr().err
    assert main(["signals", recipe_path, str(bad), "--set", "signals.severity_weights={low: 1}"]) == 2
    assert "no weight for the severity levels ['high']" in capsys.readouterr().err


def _rejects(folder):
    return [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]


def test_bad_rows_are_rejects_at_their_physical_line_and_never_stop_the_run(trained_run, tmp_path):
    folder, recipe_path = trained_run
    good = [{"id": f"m-{i}", "text": f"News item {i} about business", "topic": "busi"} for i in range(4)]
    lines = [json.dumps({**good[0], "date": "2024-03-01"}), "",  # a blank line does not shift the count
             "{not json at all",
             json.dumps({**good[1], "date": 1709251200}),  # Unix seconds, a JSON number: 2024-03-01
             json.dumps({**good[2], "date": "1709337600"}),  # the same rule for a text of digits: 2024-03-02
             json.dumps({**good[3], "date": 1709337600000}),  # milliseconds: beyond 2100 as seconds, a reject
             json.dumps({"id": "m-x", "text": "No date here", "topic": "busi"})]
    day1 = tmp_path / "day1.jsonl"
    day1.write_text("\n".join(lines) + "\n", encoding="utf-8")
    day2 = tmp_path / "day2.csv"  # a record over two lines: the next starts on line 4, not record 3
    day2.write_text('id,text,date,topic\nc-1,"A story told\nover two lines",2024-03-02,poli\n'
                    'c-2,,2024-03-02,poli\nc-3,"Fine, again",2024-03-02,poli\n', encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "signals"
    assert main(["signals", recipe_path, str(day1), str(day2), str(empty), "--out", str(out)]) == 0
    rejects = _rejects(out)
    assert [(r["file"], r["line"]) for r in rejects] == [(str(day1), 3), (str(day1), 6), (str(day1), 7),
                                                         (str(day2), 4)]
    assert rejects[0]["reason"].startswith("malformed JSON") and rejects[0]["raw"] == "{not json at all"
    assert rejects[1]["reason"] == ("'date' is not a date: '1709337600000' (a number is Unix time in seconds, "
                                    "1980 to 2100)")
    assert rejects[2]["reason"] == "no 'date'" and rejects[3]["reason"] == "empty text (column 'text')"
    stored = pd.read_parquet(out / "signals.parquet").set_index("id")
    assert stored.loc[["m-0", "m-1", "m-2"], "day"].tolist() == ["2024-03-01", "2024-03-01", "2024-03-02"]
    assert stored.loc[["m-0", "m-1", "m-2", "c-1", "c-3"], "line"].tolist() == [1, 4, 5, 2, 5]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["articles_stored"], summary["rejected"], summary["rejected_now"]) == (5, 4, 4)
    assert summary["files"] == [str(day1), str(day2), str(empty)]


def test_a_new_day_keeps_the_earlier_rejects_and_files_and_a_file_read_again_replaces_its_own(trained_run,
                                                                                              tmp_path):
    folder, recipe_path = trained_run
    day1 = _feed(tmp_path, "day1", "2024-03-01", 3)
    with day1.open("a") as f:
        f.write("{broken\n")
        f.write(json.dumps({"id": "x", "text": "Storm", "date": "soon"}) + "\n")
    out = tmp_path / "signals"
    assert main(["signals", recipe_path, str(day1), "--out", str(out)]) == 0
    assert [(r["file"], r["line"]) for r in _rejects(out)] == [(str(day1), 4), (str(day1), 5)]
    day2 = _feed(tmp_path, "day2", "2024-03-02", 3, start=3)
    with day2.open("a") as f:
        f.write("[1, 2]\n")
    assert main(["signals", recipe_path, str(day2), "--out", str(out)]) == 0  # the new day's file alone
    assert [(r["file"], r["line"]) for r in _rejects(out)] == [(str(day1), 4), (str(day1), 5), (str(day2), 4)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == [str(day1), str(day2)] and summary["files_now"] == [str(day2)]
    assert (summary["rejected"], summary["rejected_now"], summary["articles_stored"]) == (3, 1, 6)
    # day1 read again, its broken line mended: its rejects are this reading's, none twice, day2's kept
    day1.write_text("".join(line + "\n" for line in day1.read_text().splitlines() if line != "{broken"))
    assert main(["signals", recipe_path, str(day1), "--out", str(out)]) == 0
    assert [(r["file"], r["line"]) for r in _rejects(out)] == [(str(day1), 4), (str(day2), 4)]
    assert json.loads((out / "summary.json").read_text())["files"] == [str(day1), str(day2)]


def test_a_cut_gzip_feed_is_a_one_line_error_that_keeps_what_was_stored(trained_run, tmp_path, capsys):
    import gzip

    folder, recipe_path = trained_run
    day1 = _feed(tmp_path, "day1", "2024-03-01", 4)
    out = tmp_path / "signals"
    assert main(["signals", recipe_path, str(day1), "--out", str(out)]) == 0
    before = pd.read_parquet(out / "signals.parquet")
    rows = "".join(json.dumps({"id": f"z{i}", "text": f"Story {i}", "date": "2024-03-02"}) + "\n" for i in range(50))
    packed = gzip.compress(rows.encode())
    cut = tmp_path / "day2.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    assert main(["signals", recipe_path, str(day1), str(cut), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars of the first file
    assert error.startswith(f"error: signals ({cut}): not a readable gzip file after ")
    with SignalStore(out / "signals.sqlite", TOPICS) as store:
        assert set(before["key"]) <= set(store.frame()["key"])
    assert main(["signals", recipe_path, str(day1), "--out", str(out)]) == 0  # the outputs, as they were
    pd.testing.assert_frame_equal(pd.read_parquet(out / "signals.parquet"), before)


def test_a_topic_with_dollar_signs_is_drawn_as_written(trained_run, tmp_path):
    folder, recipe_path = trained_run
    topic = "Say $\\foo$ now"
    feed = write_jsonl(tmp_path / "day.jsonl", [{"id": f"t{i}", "text": f"Storm story {i}", "date": "2024-03-01",
                                                 "topic": topic} for i in range(3)])
    out = tmp_path / "signals"
    assert main(["signals", recipe_path, str(feed), "--out", str(out)]) == 0
    page = (out / "dashboard.html").read_text()
    assert f">{topic}</text>" in page  # the class-mix chart's tick label, as text in the SVG


def test_a_damaged_student_file_is_named_not_its_calibration(trained_run, tmp_path, capsys):
    folder, recipe_path = trained_run
    student = folder / "run" / "students" / "adaptive_kd"
    marker = student / "student.json"
    assert (student / "confidence.json").is_file()
    feed = _feed(tmp_path, "day", "2024-03-01", 2)
    whole = marker.read_bytes()
    try:
        marker.write_bytes(whole[: len(whole) // 2])
        assert main(["signals", recipe_path, str(feed), "--out", str(tmp_path / "o")]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {marker}: this student file is not valid JSON") and "\n" not in error
        assert "confidence" not in error
    finally:
        marker.write_bytes(whole)


def test_a_store_of_an_older_tailorkd_takes_over_the_rejects_and_files_it_left_in_files(tmp_path):
    import sqlite3

    path = tmp_path / "signals.sqlite"
    with sqlite3.connect(path) as db:  # schema 1: no rejects or files in the store
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("labels", json.dumps(TOPICS))])
    db.close()
    old_rejects = [{"file": "a.jsonl", "line": 3, "reason": "empty 'text'"}, "not a reject",
                   {"file": "b.jsonl", "line": 1, "reason": "'date' is not a date: 'x'"}]
    with SignalStore(path, TOPICS) as store:
        assert store.upgraded
        store.adopt(old_rejects, ["a.jsonl", "b.jsonl", 7])
        assert store.files() == ["a.jsonl", "b.jsonl"]
        assert [(r["file"], r["line"], r["position"]) for r in store.rejects()] == [("a.jsonl", 3, "line"),
                                                                                    ("b.jsonl", 1, "line")]
    with SignalStore(path, TOPICS) as store:
        assert not store.upgraded  # taken over once


def _estimated_days(rows, replicates):
    """A daily table with estimated risk shares (topic, day, n, estimate) and their replicates [rows, B]."""
    daily = pd.DataFrame([{"topic": t, "day": d, "n": n, "risk_share": est, "risk_share_low": 0.0,
                           "risk_share_high": 1.0, "severity_index": 0.0, "risk_share_estimate": est}
                          for t, d, n, est in rows])
    daily["risk_share_estimate_low"], daily["risk_share_estimate_high"] = np.quantile(replicates, [0.025, 0.975],
                                                                                      axis=1)
    return daily


def test_alerts_on_the_interval_need_its_lower_end_to_clear_and_say_how_sure_they_are():
    rng = np.random.default_rng(0)
    replicates = np.vstack([np.clip(rng.normal(0.6, 0.15, 400), 0, 1),   # above 0.5, but unsure
                            np.clip(rng.normal(0.7, 0.02, 400), 0, 1)])  # clearly above
    daily = _estimated_days([("floods", "2024-01-01", 50, 0.6), ("fires", "2024-01-01", 50, 0.7)], replicates)
    articles = _signals([("floods", "2024-01-01", "risk", "high", 0.9)])
    rules = [SignalRule(name="share", kind="share_above", threshold=0.5)]
    on_estimate = find_alerts(daily, articles, rules, ["risk"], 1, replicates, alert_on="estimate")
    assert [a["topic"] for a in on_estimate] == ["floods", "fires"]
    unsure, sure = on_estimate
    assert 0.6 < unsure["sure"] < 0.9 and sure["sure"] == 1.0
    assert unsure["sure"] == pytest.approx((replicates[0] >= 0.5).mean())
    assert unsure["risk_share_estimate"] == 0.6 and unsure["risk_share_estimate_interval"][0] < 0.5
    assert unsure["top_articles"][0]["label"] == "risk"
    on_interval = find_alerts(daily, articles, rules, ["risk"], 1, replicates, alert_on="interval")
    assert [a["topic"] for a in on_interval] == ["fires"] and on_interval[0]["alert_on"] == "interval"
    # without replicates (a table of counts) there is nothing to be sure of, and no interval to gate on
    assert find_alerts(daily, articles, rules, ["risk"], 0)[0]["sure"] is None
    with pytest.raises(Exception, match="signals.alert_on: interval needs the risk share's replicates"):
        find_alerts(daily, articles, rules, ["risk"], 0, alert_on="interval")
    with pytest.raises(Exception, match="signals.alert_on: 'hunch' is not one of estimate, interval"):
        find_alerts(daily, articles, rules, ["risk"], 0, replicates, alert_on="hunch")


def test_a_rise_is_judged_against_a_baseline_of_the_same_replicates():
    # The confusion's uncertainty scales every day's estimate alike (replicate b by factor f_b): each day's share
    # is unsure, but the day is 3.5 times its baseline in every replicate.
    rng = np.random.default_rng(1)
    factor = rng.uniform(0.5, 1.5, 300)
    replicates = np.vstack([0.1 * factor, 0.1 * factor, 0.35 * factor])
    daily = _estimated_days([("floods", f"2024-01-0{d}", 40, s) for d, s in ((1, 0.1), (2, 0.1), (3, 0.35))],
                            replicates)
    articles = _signals([("floods", "2024-01-03", "risk", "high", 0.9)])
    rise = [SignalRule(name="rise", kind="rise_over_baseline", threshold=3.0, baseline_days=7)]
    [alert] = find_alerts(daily, articles, rise, ["risk"], 0, replicates, alert_on="interval")
    assert alert["day"] == "2024-01-03" and alert["ratio"] == pytest.approx(3.5) and alert["sure"] == 1.0
    assert alert["baseline_risk_share"] == pytest.approx(0.1) and alert["baseline_n"] == 80
    # the same day's share alone is unsure of clearing 0.3 (its interval reaches down to ~0.18)
    share = [SignalRule(name="share", kind="share_above", threshold=0.3)]
    assert find_alerts(daily, articles, share, ["risk"], 0, replicates, alert_on="interval") == []
    # replicates that do not move together: the rise is no longer sure
    shuffled = np.vstack([0.1 * factor, 0.1 * rng.permutation(factor), 0.35 * rng.permutation(factor)])
    assert find_alerts(daily, articles, rise, ["risk"], 0, shuffled, alert_on="interval") == []
