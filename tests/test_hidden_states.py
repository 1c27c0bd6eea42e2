"""Hidden-state shards: float16 safetensors beside the label store, indexed in it; durable and resumable.

The kill test runs this file as a script: a labelling loop in the documented call order (add, put_batch,
flush) that the test SIGKILLs at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from tailorkd import hidden_states
from tailorkd.errors import TailorkdError
from tailorkd.hidden_states import HiddenStateReader, HiddenStateWriter, shard_folder_key
from tailorkd.labels import LabelStore, make_record, text_hash

LAYERS = [0, -1]
HIDDEN = 48


def states_of(indices, layers=LAYERS, hidden=HIDDEN) -> dict[int, np.ndarray]:
    """Deterministic [B, H] states per layer: row i of layer l is a function of (i, l) alone."""
    idx = np.asarray(indices, dtype=np.float64)[:, None]
    return {layer: np.sin(idx * 0.37 + np.arange(hidden) * 0.05 + layer).astype(np.float32) * 3 for layer in layers}


def as_fp16(arrays: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {layer: arr.astype(np.float16).astype(np.float32) for layer, arr in arrays.items()}


def hashes_of(indices) -> list[str]:
    return [text_hash(f"text {i}") for i in indices]


def shard_files(store: LabelStore, teacher="t", prompt="p") -> list[str]:
    folder = store.path.parent / "hidden" / shard_folder_key(teacher, prompt)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_roundtrip_in_any_order_across_shards(tmp_path):
    import torch

    with LabelStore(tmp_path / "labels.sqlite") as store:
        writer = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=5)
        for start in (0, 4, 8):  # batches of 4: numpy, torch, numpy
            idx = list(range(start, start + 4))
            states = states_of(idx)
            if start == 4:
                states = {layer: torch.from_numpy(arr) for layer, arr in states.items()}
            assert writer.add(hashes_of(idx), states) == 4
            writer.flush()
        assert writer.buffered == 2 and shard_files(store) == ["shard-00000.safetensors", "shard-00001.safetensors"]
        writer.close()
        files = shard_files(store)
        assert files == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]

        # Each shard holds one float16 tensor per layer and nothing else.
        folder = store.path.parent / "hidden" / shard_folder_key("t", "p")
        with safe_open(str(folder / files[0]), framework="np") as f:
            assert sorted(f.keys()) == ["layer.-1", "layer.0"]
            assert f.get_tensor("layer.0").dtype == np.float16 and f.get_tensor("layer.0").shape == (5, HIDDEN)
        with safe_open(str(folder / files[2]), framework="np") as f:
            assert f.get_tensor("layer.-1").shape == (2, HIDDEN)

        reader = HiddenStateReader(store, "t", "p")
        assert reader.done_hashes() == set(hashes_of(range(12)))
        order = [11, 0, 7, 3, 5, 10, 1]
        got = reader.get(hashes_of(order), LAYERS)
        want = as_fp16(states_of(order))
        assert list(got) == LAYERS
        for layer in LAYERS:
            assert got[layer].dtype == np.float32 and got[layer].shape == (len(order), HIDDEN)
            np.testing.assert_array_equal(got[layer], want[layer])
        only_last = reader.get(hashes_of([2, 2]), [-1])  # one layer; a text asked twice comes twice
        np.testing.assert_array_equal(only_last[-1], as_fp16(states_of([2, 2]))[-1])

        with pytest.raises(TailorkdError, match=r"labels\.sqlite: 1 of 2 texts have no stored hidden states"):
            reader.get(hashes_of([0, 99]), LAYERS)
        with pytest.raises(TailorkdError, match=r"has no layer 3"):
            reader.get(hashes_of([0]), [3])
        with pytest.raises(TailorkdError, match="no stored hidden states for teacher 't', prompt 'other'"):
            HiddenStateReader(store, "t", "other").get(hashes_of([0]), LAYERS)

        # A bfloat16 tensor (what a bf16 teacher gives) is stored as its float16 rounding.
        bf16 = {layer: torch.from_numpy(arr).to(torch.bfloat16) for layer, arr in states_of([0, 1]).items()}
        with HiddenStateWriter(store, "t", "bf16", LAYERS) as writer:
            writer.add(hashes_of([0, 1]), bf16)
        got = HiddenStateReader(store, "t", "bf16").get(hashes_of([0, 1]), LAYERS)
        for layer in LAYERS:
            np.testing.assert_array_equal(got[layer], bf16[layer].float().numpy().astype(np.float16).astype(np.float32))


def test_writer_rejects_what_it_cannot_store_faithfully(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        writer = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=4)
        with pytest.raises(ValueError, match=r"layers \[0\], but this writer stores layers \[0, -1\]"):
            writer.add(hashes_of([0]), {0: np.zeros((1, HIDDEN))})
        with pytest.raises(ValueError, match=r"shape \(2, 48\); expected \[1, H\]"):
            writer.add(hashes_of([0]), states_of([0, 1]))
        writer.add(hashes_of([0]), states_of([0]))
        with pytest.raises(ValueError, match="hidden size 8 differs from the 48"):
            writer.add(hashes_of([1]), states_of([1], hidden=8))
        big = states_of([1])
        big[-1][0, 3] = 1e6
        with pytest.raises(ValueError, match=r"layer -1 .*not finite in float16 \(largest magnitude 1000000"):
            writer.add(hashes_of([1]), big)
        # A text already buffered (or stored) is taken once.
        assert writer.add(hashes_of([0, 1, 1]), states_of([0, 1, 1])) == 1
        assert writer.buffered == 2
        with pytest.raises(ValueError, match="without repeats"):
            HiddenStateWriter(store, "t", "p", [0, 0])


def test_resume_skips_stored_rows_and_loses_only_the_buffer(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        writer = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=4)
        writer.add(hashes_of(range(7)), states_of(range(7)))
        assert writer.flush() == 4 and writer.buffered == 3
        # The process dies here: the 3 buffered rows were never made durable.
    with LabelStore(path) as store:
        writer = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=4)
        assert writer.done_hashes() == set(hashes_of(range(4)))
        assert writer.add(hashes_of(range(10)), states_of(range(10))) == 6  # 0..3 are skipped
        writer.close()
        reader = HiddenStateReader(store, "t", "p")
        assert reader.done_hashes() == set(hashes_of(range(10)))
        got = reader.get(hashes_of(range(10)), LAYERS)
        for layer, want in as_fp16(states_of(range(10))).items():
            np.testing.assert_array_equal(got[layer], want)
        assert len(shard_files(store)) == 3  # 4 + 4 + 2 rows


def test_orphan_shards_are_ignored_then_removed_and_failed_writes_leave_none(tmp_path, monkeypatch):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        with HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=4) as writer:
            writer.add(hashes_of(range(4)), states_of(range(4)))
        folder = path.parent / "hidden" / shard_folder_key("t", "p")
        # What a crash between renaming a shard and committing its index leaves, and a half-written file.
        save_file({"layer.0": np.full((4, HIDDEN), 7, np.float16), "layer.-1": np.full((4, HIDDEN), 7, np.float16)},
                  str(folder / "shard-00001.safetensors"))
        (folder / ".shard-00002.safetensors.tmp-999").write_bytes(b"half a shard")
        (folder / ".tmpbfAtft").write_bytes(b"")  # what safetensors' save_file (used before) left when killed
        reader = HiddenStateReader(store, "t", "p")
        np.testing.assert_array_equal(reader.get(hashes_of(range(4)), [0])[0], as_fp16(states_of(range(4)))[0])

        writer = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=4)  # opening cleans up
        assert shard_files(store) == ["shard-00000.safetensors"]
        writer.add(hashes_of(range(4, 8)), states_of(range(4, 8)))
        writer.flush()
        assert shard_files(store) == ["shard-00000.safetensors", "shard-00001.safetensors"]
        np.testing.assert_array_equal(reader.get(hashes_of([7, 0]), [-1])[-1], as_fp16(states_of([7, 0]))[-1])

        # A second writer (another process) that opened before texts 8..11 were indexed: its shard leaves
        # them out, and when nothing is left it writes none.
        intruder = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=4)
        writer.add(hashes_of(range(8, 12)), states_of(range(8, 12)))
        writer.flush()
        assert intruder.add(hashes_of(range(8, 12)), states_of(range(8, 12))) == 4  # its view is stale
        assert intruder.flush() == 0
        assert shard_files(store) == [f"shard-0000{i}.safetensors" for i in range(3)]
        assert intruder.done_hashes() >= set(hashes_of(range(8, 12)))
        intruder.add(hashes_of(range(12, 14)), states_of(range(12, 14)))
        writer.add(hashes_of(range(10, 14)), states_of(range(10, 14)))  # 10, 11 are indexed: skipped
        assert writer.flush(final=True) == 2 and intruder.flush(final=True) == 0
        assert intruder.done_hashes(hashes_of([12, 99])) == set(hashes_of([12]))  # read afresh from the index
        assert store.conn.execute("SELECT COUNT(*) FROM hidden_index").fetchone()[0] == 14
        assert shard_files(store) == [f"shard-0000{i}.safetensors" for i in range(4)]
        np.testing.assert_array_equal(reader.get(hashes_of(range(8, 14)), [0])[0], as_fp16(states_of(range(8, 14)))[0])

        # A shard that fails on the way (here its folder's fsync) is removed again: the index is unchanged
        # and no file is left behind.
        def failing_fsync(folder):
            raise OSError("disk gone")

        monkeypatch.setattr(hidden_states, "fsync_dir", failing_fsync)
        intruder.add(hashes_of(range(14, 18)), states_of(range(14, 18)))
        with pytest.raises(OSError, match="disk gone"):
            intruder.flush()
        monkeypatch.undo()
        assert shard_files(store) == [f"shard-0000{i}.safetensors" for i in range(4)]
        assert store.conn.execute("SELECT COUNT(*) FROM hidden_index").fetchone()[0] == 14

        # An index row whose file went missing (deleted by hand) is an error naming store and shard.
        (folder / "shard-00002.safetensors").unlink()
        with pytest.raises(TailorkdError, match=r"labels\.sqlite: hidden-state shard .*shard-00002.* is missing"):
            reader.get(hashes_of([9]), LAYERS)


# -- kill -9 while writing ----------------------------------------------------------------------------
KILL_TEXTS = 2000
KILL_CHUNK = 8
KILL_SHARD_ROWS = 32


def labelling_loop(store_path: str) -> None:
    """What label_rows does with hidden states, in the documented order; resumes what is missing."""
    names = ["x", "y"]
    with LabelStore(store_path) as store:
        writer = HiddenStateWriter(store, "t", "p", LAYERS, rows_per_shard=KILL_SHARD_ROWS)
        labelled, stored = store.done_hashes("t", "p"), writer.done_hashes()
        todo = [i for i in range(KILL_TEXTS) if not {text_hash(f"text {i}")} <= (labelled & stored)]
        for start in range(0, len(todo), KILL_CHUNK):
            idx = todo[start : start + KILL_CHUNK]
            writer.add(hashes_of(idx), states_of(idx))
            store.put_batch("t", "p", names, [make_record(str(i), f"text {i}", [0.25, 0.75], names, 0.0) for i in idx])
            writer.flush()
        writer.close()


def check_consistent(store_path: Path) -> tuple[int, int]:
    """Index rows point at whole shards holding the right values, and each has its label. Returns
    (indexed rows, orphan shards: renamed but not indexed, temporary files: hidden ones)."""
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    has_index = conn.execute("SELECT 1 FROM sqlite_master WHERE name='hidden_index'").fetchone()
    index = conn.execute("SELECT text_hash, shard, row FROM hidden_index").fetchall() if has_index else []
    unlabelled = conn.execute("SELECT COUNT(*) FROM hidden_index h LEFT JOIN labels l USING (teacher, prompt, "
                              "text_hash) WHERE l.text_hash IS NULL").fetchone()[0] if has_index else 0
    conn.close()
    assert unlabelled == 0
    shards = {shard for _, shard, _ in index}
    for shard in shards:
        assert (store_path.parent / shard).is_file()
    number = {text_hash(f"text {i}"): i for i in range(KILL_TEXTS)}
    if index:
        with LabelStore(store_path) as store:
            hashes = [h for h, _, _ in index]
            got = HiddenStateReader(store, "t", "p").get(hashes, LAYERS)
        want = as_fp16(states_of([number[h] for h in hashes]))
        for layer in LAYERS:
            np.testing.assert_array_equal(got[layer], want[layer])
    folder = store_path.parent / "hidden" / shard_folder_key("t", "p")
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    renamed = {f"hidden/{shard_folder_key('t', 'p')}/{n}" for n in names if not n.startswith(".")}
    return len(index), len(renamed - shards), sum(n.startswith(".") for n in names)


def count_indexed(store_path: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=0.1)
        try:
            return conn.execute("SELECT COUNT(*) FROM hidden_index").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_kill_during_writing_leaves_a_consistent_index_and_resumes(tmp_path):
    rng = random.Random(7)
    store = tmp_path / "labels.sqlite"
    rounds = []
    for round_ in range(4):
        before = count_indexed(store)
        proc = subprocess.Popen([sys.executable, __file__, str(store)], stderr=subprocess.PIPE, text=True)
        target = before + rng.randint(1, 4) * KILL_SHARD_ROWS
        deadline = time.monotonic() + 120  # against a hang only: a loaded machine is slow to start
        while count_indexed(store) < target:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the loop finished before the kill"
        proc.stderr.close()
        indexed, orphans, temporary = check_consistent(store)
        assert indexed % KILL_SHARD_ROWS == 0 and indexed >= target  # whole shards only, none lost
        rounds.append((indexed, orphans, temporary))
    assert rounds[-1][0] < KILL_TEXTS
    done = subprocess.run([sys.executable, __file__, str(store)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert check_consistent(store) == (KILL_TEXTS, 0, 0)  # complete; the left-overs were removed
    print(f"(indexed rows, orphan shards, temporary files) after each kill: {rounds}")


if __name__ == "__main__":
    labelling_loop(sys.argv[1])
