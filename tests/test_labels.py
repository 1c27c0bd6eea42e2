"""The SQLite label store: keyed by teacher x prompt x text, resumable, label-order safe."""

from __future__ import annotations

import math

import pytest

from tailorkd.labels import LabelStore, make_record, text_hash


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
        assert store.get("t1", "p1", [text_hash("alpha")], ["y", "x"])[text_hash("alpha")].probs == pytest.approx([0.1, 0.9])
        with pytest.raises(ValueError, match="differ"):
            store.get("t1", "p1", [text_hash("alpha")], ["x", "z"])
        # Writing the same text again replaces, never duplicates.
        store.put_batch("t1", "p1", names, [make_record("a", "alpha", [0.2, 0.8], names, 0.1)])
        assert store.count("t1", "p1") == 1
