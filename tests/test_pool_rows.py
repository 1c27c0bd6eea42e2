"""The pool read from its memory-mapped file a window at a time: PoolRows, the label store's lazy records, and
the label stage and its readers not holding the pool as Python objects."""

from __future__ import annotations

import json
import pickle
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import TOPICS, topic_rows, write_jsonl
from tailorkd.data.pool_rows import PoolRows, take_rows, windows, write_pool
from tailorkd.data.splits import frame_rows
from tailorkd.labels import LabelStore, StoredLabels, make_record, stored_probs, text_hash
from tailorkd.recipe import load_recipe
from tailorkd.stages.label import label, teacher_records
from tailorkd.stages.prepare import load_data, prepare
from tailorkd.teachers import LocalTeacher


def pool_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "text": [f"text number {i}" for i in range(n)],
                         "title": [None if i % 3 else f"title {i}" for i in range(n)]})


def test_pool_rows_read_as_the_rows_they_were_written_from(tmp_path):
    frame = pool_frame(5000)
    write_pool(frame, tmp_path / "pool.arrow")
    rows = PoolRows.open(tmp_path / "pool.arrow")
    want = frame_rows(frame)
    assert len(rows) == 5000 and rows.columns == ["id", "text", "title"]
    assert list(rows) == want and rows[0] == want[0] and rows[-1] == want[-1] and rows[2]["title"] is None
    assert [len(w) for w in rows.windows(2048)] == [2048, 2048, 904]
    assert [r for w in windows(rows, 999) for r in w] == want
    index = np.array([4999, 0, 17, 17, 2500])
    view = rows.take(index)
    assert list(view) == [want[i] for i in index] == take_rows(want, index)
    assert [r["id"] for r in view[1:3]] == ["p0", "p17"] and view.take([-1])[0] == want[2500]
    assert list(rows[10:20:3]) == want[10:20:3]
    pd.testing.assert_frame_equal(view.to_pandas(), frame.iloc[index].reset_index(drop=True))
    with pytest.raises(IndexError):
        rows[5000]
    with pytest.raises(IndexError):
        rows.take([0, 5000])
    empty = PoolRows.empty(rows.columns)
    assert len(empty) == 0 and list(empty) == [] and list(empty.windows()) == [] and empty.columns == rows.columns
    # Pickled (to a Ray actor or a spawned process) as its file and index, never as the mapped table.
    pickled = pickle.dumps(view)
    assert len(pickled) < 2000 and list(pickle.loads(pickled)) == list(view)
    assert list(pickle.loads(pickle.dumps(rows))) == want


def test_stored_labels_read_the_store_on_demand(tmp_path):
    rows = frame_rows(pool_frame(3000))
    rows.append(dict(rows[5]))  # the same text twice is one record, as in a dict
    names = ["a", "b"]
    with LabelStore(tmp_path / "labels.sqlite") as store:
        labelled = [r for i, r in enumerate(rows[:3000]) if i % 7]  # every seventh text has no label
        store.put_batch("t", "p", names, [make_record(r["id"], r["text"], [0.3, 0.7], names, 0.01) for r in labelled])
        store.put_batch("t", "other", names, [make_record(r["id"], r["text"], [0.9, 0.1], names, 0.01) for r in rows])
        found = StoredLabels(store, "t", "p", rows, names)
        assert len(found) == len(labelled) == 3000 - 429
        assert text_hash(rows[1]["text"]) in found and text_hash(rows[7]["text"]) not in found and 3 not in found
        assert found[text_hash(rows[1]["text"])].probs == [0.3, 0.7] and found.get(text_hash(rows[0]["text"])) is None
        assert sorted(found) == sorted({text_hash(r["text"]) for r in labelled})
        assert {r.predicted for r in found.values()} == {"b"}
        assert found.missing_ids() == [r["id"] for i, r in enumerate(rows[:3000]) if i % 7 == 0]
        probs, seconds = stored_probs(store, "t", "p", rows, names)
    assert np.isnan(probs[::7][:-1]).all() and np.allclose(probs[1], [0.3, 0.7]) and seconds[1] == 0.01
    # The caller's store is closed now: the mapping reads through a connection of its own.
    assert found[text_hash(rows[1]["text"])].probs == [0.3, 0.7] and sum(1 for _ in found.values()) == 2571
    assert np.isnan(probs).any(axis=1).sum() == 429


class CheapTeacher(LocalTeacher):
    """A local teacher whose scores cost nothing: the topic named in the text, else the first."""

    def score_states(self, rows, bar=None, hidden_layers=(), pooling="last"):
        probs = np.full((len(rows), len(TOPICS)), 0.1 / (len(TOPICS) - 1))
        for i, row in enumerate(rows):
            probs[i, next((k for k, t in enumerate(TOPICS) if t in row["text"]), 0)] = 0.9
        if bar is not None:
            bar.update(len(rows))
        return probs, np.full(len(rows), 1e-3), {}


def pool_recipe(tmp_path, teacher, student, n_pool: int, chars: int):
    """A recipe with 60 labelled topic rows and ``n_pool`` unlabelled texts of ``chars`` characters each."""
    folder = tmp_path / f"pool{n_pool}"
    folder.mkdir()
    write_jsonl(folder / "news.jsonl", topic_rows(12))
    filler = "The harbour authority said the shipment would be delayed again next week. "
    write_jsonl(folder / "pool.jsonl", [{"id": f"u{i}", "text": f"{i} {TOPICS[i % len(TOPICS)]} " +
                                         (filler * (chars // len(filler) + 1))[:chars]} for i in range(n_pool)])
    raw = {"name": "pool", "seed": 3, "output_dir": str(folder / "run"),
           "task": {"name": "topic", "description": "The topic.", "labels": [{"name": t} for t in TOPICS]},
           "data": {"sources": [{"path": "news.jsonl", "columns": {"id": "id"}},
                                {"path": "pool.jsonl", "columns": {"id": "id", "label": None}}],
                    "splits": {"seed_per_class": 2, "test_size": 20, "dedupe": False}},
           "prompt": {"instruction": "Which topic?", "shots": 0, "max_text_chars": 120},
           "teacher": {"model": str(teacher), "batch_size": 4, "check": None},
           "student": {"model": str(student), "max_length": 64}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_recipe(str(path))


def test_labelling_and_its_targets_do_not_hold_the_pool(tmp_path, tiny_models):
    """Python memory (tracemalloc's peak: every Python object and NumPy array; deterministic, unlike RSS on a
    shared machine) while the label stage labels the whole pool and teacher_records reads its targets back
    grows by a small fraction of the pool's text when the pool grows five-fold: the texts stay in the
    memory-mapped file (a list of row dicts, as before, would add at least the text itself). Measured: 10.4 MB
    at 4,000 texts, 10.8 MB at 20,000 (16 MB more text)."""
    chars, sizes, peaks = 1000, (4000, 20000), {}  # both several windows of rows
    for n in sizes:
        recipe = pool_recipe(tmp_path, tiny_models["llama"], tiny_models["bert"], n, chars)
        prepare(recipe)
        teacher = CheapTeacher(recipe.teacher, recipe.task, recipe.prompt, [])
        tracemalloc.start()
        try:
            summary = label(recipe, teacher=teacher)
            rows, probs, _ = teacher_records(recipe, load_data(recipe), "pool")
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert summary["pool_labelled"] == len(rows) == n + 60 - 10 - 20
        assert not np.isnan(probs).any() and summary["abstained"] == {"pool": [], "test": []}
        first = rows[0]
        assert probs[0].argmax() == next((k for k, t in enumerate(TOPICS) if t in first["text"]), 0)
        assert sum(summary["pool_predicted_counts"].values()) == len(rows)
    added_text = (sizes[1] - sizes[0]) * chars
    growth = peaks[sizes[1]] - peaks[sizes[0]]
    assert growth < added_text / 5, json.dumps({"peaks": peaks, "added_text_bytes": added_text})
