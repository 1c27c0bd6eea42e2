"""The SQLite label store: keyed by teacher x prompt x text, resumable, label-order safe."""

from __future__ import annotations

import json
import math
import sqlite3

import pandas as pd
import pytest

from tailorkd.errors import TailorkdError
from tailorkd.labels import SCHEMA_VERSION, LabelRecord, LabelStore, make_record, text_hash


def test_record_statistics():
    rec = make_record("a", "text", [0.7, 0.2, 0.1], ["x", "y", "z"], 0.5)
    assert rec.predicted == "x" and rec.confidence == pytest.approx(0.7)
    assert rec.margin == pytest.approx(0.5)
    assert rec.entropy == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)))


def test_store_roundtrip_resume_and_isolation(tmp_path):
    names = ["x", "y"]
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        store.put_batch("t1", "p1", names, [make_record("a", "alpha", [0.9, 0.1], names, 0.1)])
        assert store.done_hashes("t1", "p1") == {text_hash("alpha")}
        assert store.done_hashes("t1", "p2") == set()  # another prompt labels afresh
        assert store.done_hashes("t2", "p1") == set()  # another teacher too
    with LabelStore(path) as store:  # reopened: still there
        got = store.get("t1", "p1", [text_hash("alpha"), text_hash("missing")], names)
        assert list(got) == [text_hash("alpha")] and got[text_hash("alpha")].probs == pytest.approx([0.9, 0.1])
        # Asked in another label order, the probabilities follow the names, not positions.
        swapped = store.get("t1", "p1", [text_hash("alpha")], ["y", "x"])[text_hash("alpha")]
        assert swapped.probs == pytest.approx([0.1, 0.9])
        with pytest.raises(ValueError, match="differ"):
            store.get("t1", "p1", [text_hash("alpha")], ["x", "z"])
        # Writing the same text again replaces, never duplicates.
        store.put_batch("t1", "p1", names, [make_record("a", "alpha", [0.2, 0.8], names, 0.1)])
        assert store.count("t1", "p1") == 1


# The schema of version 1, as tailorkd 0.1 wrote it (no reason column).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    teacher TEXT NOT NULL,
    prompt TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    text_id TEXT NOT NULL,
    label_names TEXT NOT NULL,
    probs TEXT NOT NULL,
    predicted TEXT NOT NULL,
    confidence REAL NOT NULL,
    entropy REAL NOT NULL,
    margin REAL NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (teacher, prompt, text_hash)
);
"""


def make_v1_store(path, rows):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_V1)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    names = json.dumps(["x", "y"])
    for tid, text, probs in rows:
        r = make_record(tid, text, probs, ["x", "y"], 0.25)
        conn.execute("INSERT INTO labels VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     ("t1", "p1", r.text_hash, tid, names, json.dumps(r.probs), r.predicted, r.confidence, r.entropy,
                      r.margin, r.seconds, 1.0))
    conn.commit()
    conn.close()


def test_v1_store_is_migrated_in_place_and_keeps_its_rows(tmp_path):
    path = tmp_path / "labels.sqlite"
    make_v1_store(path, [("a", "alpha", [0.9, 0.1]), ("b", "beta", [0.3, 0.7])])
    with LabelStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        got = store.get("t1", "p1", [text_hash("alpha"), text_hash("beta")], ["x", "y"])
        assert got[text_hash("alpha")] == LabelRecord("a", text_hash("alpha"), [0.9, 0.1], "x", 0.9,
                                                       got[text_hash("alpha")].entropy, pytest.approx(0.8), 0.25)
        assert got[text_hash("alpha")].reason is None and got[text_hash("beta")].predicted == "y"
        store.put_reasons("t1", "p1", {text_hash("beta"): "mentions y twice"})
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(labels)")]
    assert columns[-1] == "reason" and len(columns) == 13
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    conn.close()
    with LabelStore(path) as store:  # opening a migrated store again changes nothing
        assert store.schema_version == 2 and store.count() == 2
        assert store.get("t1", "p1", [text_hash("beta")], ["x", "y"])[text_hash("beta")].reason == "mentions y twice"


def test_newer_or_foreign_files_are_refused_by_name(tmp_path):
    newer = tmp_path / "newer.sqlite"
    with LabelStore(newer) as store:
        store.conn.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    with pytest.raises(TailorkdError, match=r"newer.sqlite.*version 3 is newer"):
        LabelStore(newer)
    foreign = tmp_path / "notes.sqlite"
    foreign.write_text("not a database at all, just some text that is long enough to have a header" * 10)
    with pytest.raises(TailorkdError, match="notes.sqlite: not a tailorkd label store"):
        LabelStore(foreign)


def test_reasons_are_stored_in_one_transaction(tmp_path):
    names = ["x", "y"]
    with LabelStore(tmp_path / "labels.sqlite") as store:
        store.put_batch("t", "p", names, [make_record("a", "alpha", [0.9, 0.1], names, 0.1),
                                          make_record("b", "beta", [0.4, 0.6], names, 0.1, reason="first")])
        assert store.get("t", "p", [text_hash("beta")], names)[text_hash("beta")].reason == "first"
        store.put_reasons("t", "p", {text_hash("alpha"): "because x", text_hash("beta"): None})
        got = store.get("t", "p", [text_hash("alpha"), text_hash("beta")], names)
        assert got[text_hash("alpha")].reason == "because x" and got[text_hash("beta")].reason is None
        # One unknown text: nothing of the call is written.
        with pytest.raises(TailorkdError, match=r"labels.sqlite: 1 reasons are for texts without a label"):
            store.put_reasons("t", "p", {text_hash("beta"): "new", text_hash("gamma"): "orphan"})
        assert store.get("t", "p", [text_hash("beta")], names)[text_hash("beta")].reason is None
        with pytest.raises(TailorkdError):  # the same text under another prompt is another label
            store.put_reasons("t", "other", {text_hash("alpha"): "x"})
        with pytest.raises(TypeError, match="not a string"):
            store.put_reasons("t", "p", {text_hash("alpha"): 3})


def test_a_batch_with_a_malformed_record_writes_nothing(tmp_path):
    names = ["x", "y"]
    with LabelStore(tmp_path / "labels.sqlite") as store:
        good = make_record("a", "alpha", [0.9, 0.1], names, 0.1)
        bad = make_record("b", "beta", [0.2, 0.3, 0.5], ["x", "y", "z"], 0.1)
        with pytest.raises(ValueError, match="'b' has 3 probabilities for 2 labels"):
            store.put_batch("t", "p", names, [good, bad])
        assert store.count() == 0


def filled_store(path):
    store = LabelStore(path)
    names = ["x", "y", "z"]
    store.put_batch("t1", "p1", names, [make_record("a", "alpha", [0.7, 0.2, 0.1], names, 0.5, reason="x words"),
                                        make_record("b", "beta", [0.1, 0.1, 0.8], names, 0.5),
                                        make_record("c", "gamma", [0.2, 0.5, 0.3], names, 0.25)])
    store.put_batch("t1", "p2", ["z", "y", "x"], [make_record("a", "alpha", [0.6, 0.3, 0.1], ["z", "y", "x"], 1.0)])
    store.put_batch("t2", "p1", ["x", "w"], [make_record("d", "delta", [0.4, 0.6], ["x", "w"], 2.0)])
    return store


def read_export(path):
    if path.suffix == ".jsonl":  # json, not pandas' reader: floats must come back exactly
        return pd.DataFrame([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])
    return pd.read_parquet(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_one_row_per_text_with_probability_columns(tmp_path, suffix):
    with filled_store(tmp_path / "labels.sqlite") as store:
        out = tmp_path / f"out{suffix}"
        assert store.export(out, teacher="t1", prompt="p1", batch_rows=2) == 3  # streamed in batches of 2
        frame = read_export(out)
        assert list(frame.columns) == ["text_id", "text_hash", "teacher", "prompt", "p_x", "p_y", "p_z", "predicted",
                                       "confidence", "entropy", "margin", "seconds", "reason"]
        assert frame["text_id"].tolist() == ["a", "b", "c"]
        assert frame["text_hash"].tolist() == [text_hash(t) for t in ("alpha", "beta", "gamma")]
        assert frame[["p_x", "p_y", "p_z"]].to_numpy().tolist() == [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]]
        assert frame["predicted"].tolist() == ["x", "z", "y"]
        assert frame["confidence"].tolist() == [0.7, 0.8, 0.5]
        assert frame["entropy"][0] == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)))
        assert frame["margin"].tolist() == pytest.approx([0.5, 0.7, 0.2])
        assert frame["seconds"].tolist() == [0.5, 0.5, 0.25]
        assert frame["reason"][0] == "x words" and frame["reason"][1:].isna().all()

        # Everything: label sets are united; a class a teacher did not have is empty, not zero.
        assert store.export(out) == 5
        frame = read_export(out)
        assert [c for c in frame.columns if c.startswith("p_")] == ["p_x", "p_y", "p_z", "p_w"]
        p2 = frame[frame["prompt"] == "p2"].iloc[0]  # stored in another label order, read by name
        assert (p2["p_x"], p2["p_y"], p2["p_z"]) == (0.1, 0.3, 0.6) and pd.isna(p2["p_w"])
        t2 = frame[frame["teacher"] == "t2"].iloc[0]
        assert (t2["p_x"], t2["p_w"]) == (0.4, 0.6) and pd.isna(t2["p_y"])


def test_export_refuses_unknown_formats_and_empty_selections(tmp_path):
    with filled_store(tmp_path / "labels.sqlite") as store:
        with pytest.raises(TailorkdError, match=r"out\.csv: cannot export labels to a \.csv file"):
            store.export(tmp_path / "out.csv")
        with pytest.raises(TailorkdError, match=r"labels\.sqlite: no labels to export for teacher 'nobody'"):
            store.export(tmp_path / "out.jsonl", teacher="nobody")
        assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.jsonl").exists()


def test_stats_per_teacher_and_prompt(tmp_path):
    with filled_store(tmp_path / "labels.sqlite") as store:
        stats = store.stats()
        assert [(s["teacher"], s["prompt"], s["texts"]) for s in stats] == [("t1", "p1", 3), ("t1", "p2", 1),
                                                                            ("t2", "p1", 1)]
        first = stats[0]
        assert first["predicted_counts"] == {"x": 1, "y": 1, "z": 1}
        assert list(first["predicted_counts"]) == ["x", "y", "z"]
        assert first["with_reason"] == 1
        assert first["mean_confidence"] == pytest.approx((0.7 + 0.8 + 0.5) / 3)
        assert first["mean_seconds"] == pytest.approx(1.25 / 3)
        assert stats[1]["predicted_counts"] == {"z": 1, "y": 0, "x": 0}
        assert store.stats(teacher="t2")[0]["predicted_counts"] == {"x": 0, "w": 1}


def labelled_run(tmp_path):
    """A recipe whose run folder holds a filled store and the summary of its label stage (no model needed)."""
    (tmp_path / "news.jsonl").write_text(json.dumps({"id": "1", "text": "a", "label": "x"}) + "\n", encoding="utf-8")
    recipe = {
        "name": "tiny", "output_dir": str(tmp_path / "run"),
        "task": {"name": "t", "description": "d", "labels": [{"name": n} for n in ("x", "y", "z")]},
        "data": {"sources": [{"path": "news.jsonl"}]},
        "prompt": {"instruction": "Which?", "shots": 0},
        "teacher": {"model": "t1"}, "student": {"model": "s"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")  # JSON is YAML
    filled_store(tmp_path / "run" / "labels.sqlite").close()
    summary = {"teacher": "t1", "prompt": {"fingerprint": "p1"}}
    (tmp_path / "run" / "labels_summary.json").write_text(json.dumps(summary))
    return str(path)


def test_cli_labels_export_and_stats(tmp_path, capsys):
    from tailorkd.cli import main

    recipe = labelled_run(tmp_path)
    out = tmp_path / "labels.parquet"
    assert main(["labels", "export", recipe, str(out)]) == 0  # the run's teacher and prompt
    assert capsys.readouterr().out.strip() == f"3 labels -> {out}"
    frame = pd.read_parquet(out)
    assert set(frame["teacher"]) == {"t1"} and set(frame["prompt"]) == {"p1"} and len(frame) == 3
    assert main(["labels", "export", recipe, str(tmp_path / "t1.jsonl"), "--teacher", "t1"]) == 0
    assert len(read_export(tmp_path / "t1.jsonl")) == 4  # both prompts of t1
    assert main(["labels", "export", recipe, str(tmp_path / "all.jsonl"), "--all"]) == 0
    assert len(read_export(tmp_path / "all.jsonl")) == 5
    capsys.readouterr()

    assert main(["labels", "export", recipe, str(tmp_path / "labels.csv")]) == 2
    assert "labels.csv: cannot export labels to a .csv file" in capsys.readouterr().err
    # An override moves the run folder: no store there yet.
    assert main(["labels", "stats", recipe, f"output_dir={tmp_path / 'elsewhere'}"]) == 2
    assert "no label store yet; run `tailorkd label" in capsys.readouterr().err

    assert main(["labels", "stats", recipe]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].endswith("labels.sqlite: 5 labels, 3 teacher x prompt")
    blocks = text.split("\n\n")[1:]
    assert blocks[0].splitlines() == [
        "teacher    t1  (run)", "prompt     p1", "texts      3 (1 with a reason)",
        "mean       confidence 0.6667  entropy 0.8235  margin 0.4667  seconds/text 0.4167",
        "predicted  x 1  y 1  z 1"]
    assert blocks[2].splitlines()[0] == "teacher    t2" and blocks[2].splitlines()[-1] == "predicted  x 0  w 1"

    (tmp_path / "run" / "labels_summary.json").unlink()  # label stage never finished: say what to do
    assert main(["labels", "export", recipe, str(out)]) == 2
    assert "--teacher / --prompt, or export them --all" in capsys.readouterr().err


def _open_store(path: str) -> str:
    from tailorkd.labels import LabelStore

    try:
        with LabelStore(path):
            return "ok"
    except Exception as exc:  # reported to the test rather than lost in the pool
        return f"{type(exc).__name__}: {exc}"


def test_processes_opening_a_new_store_at_once_all_open_it(tmp_path):
    """Bug: two labelling processes opening a new store at the same moment raced to switch it to WAL, and the
    loser failed at once with "database is locked" (SQLite does not wait through its busy handler there)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        for round_ in range(12):
            paths = [str(tmp_path / f"round-{round_}" / "labels.sqlite")] * 8
            assert pool.map(_open_store, paths) == ["ok"] * 8
