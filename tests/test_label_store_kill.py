"""A labelling run killed with SIGKILL at random moments loses at most the batch in flight, never leaves a
partial or duplicated row, and resumes to exactly what an uninterrupted run stores.

The labelling processes are real: a tiny LLaMA ``LocalTeacher`` through ``label_rows`` with chunks of 4,
also storing pooled hidden states of two layers in shards of 8 rows.
Importing torch and transformers and building the first model takes seconds on a small machine, so one
helper process (the "zygote", this file run as a script) does that once, single-threaded, and forks a
fresh child per labelling run, which builds its own teacher and store; the test kills those children.
"""

from __future__ import annotations

import json
import math
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run as a script too
# conftest (which imports torch) is imported where needed: the put_batch loop starts in a blink without it.

CHUNK = 4
HIDDEN_LAYERS = (1, -1)
ROWS_PER_SHARD = 8
ROWS_PER_TOPIC = 40  # 198 texts to label (2 are shots): about 50 chunks
TWO_PROCESS_ROWS_PER_TOPIC = 12  # 58 texts: 15 chunks, 8 shards
SEED = 20240611


# -- the labelling job (run in a forked child) -------------------------------------------------------
def teacher_and_rows(model_dir: str, per_topic: int = ROWS_PER_TOPIC):
    from helpers import TOPICS, topic_rows
    from tailorkd.recipe import PromptConfig, TaskConfig, TeacherConfig
    from tailorkd.teachers import LocalTeacher

    task = TaskConfig(name="topic", description="The topic of a news item.",
                      labels=[{"name": t, "description": f"{t} news"} for t in TOPICS])
    rows = topic_rows(per_topic)
    shots = [rows[0], rows[per_topic * 3]]  # one business, one sport example
    teacher = LocalTeacher(TeacherConfig(model=model_dir, batch_size=CHUNK, device="cpu"), task,
                           PromptConfig(instruction="Which topic?", shots=2, max_text_chars=120), shots)
    return teacher, [r for r in rows if r not in shots]


def label_job(model_dir: str, store_path: str, gate: str | None = None, per_topic: str | None = None) -> None:
    import torch

    from tailorkd.labels import LabelStore
    from tailorkd.teachers import label_rows

    torch.set_num_threads(1)  # as in the zygote (and the results do not depend on how many)
    teacher, rows = teacher_and_rows(model_dir, int(per_topic or ROWS_PER_TOPIC))
    scored = hold_first_chunk(teacher, gate) if gate not in (None, "-") else None  # "-": no gate
    with LabelStore(store_path) as store:
        label_rows(teacher, rows, store, chunk=CHUNK, hidden_layers=HIDDEN_LAYERS, rows_per_shard=ROWS_PER_SHARD)
    if scored is not None:
        Path(f"{gate}.scored-{os.getpid()}").write_text(json.dumps(scored))


def hold_first_chunk(teacher, gate: str) -> list[int]:
    """Make the teacher's first scoring wait until the test opens the gate (creates ``<gate>.open``) after
    announcing itself (``<gate>.arrived-<pid>``): by then label_rows has read what is done and opened its
    hidden-state writer. Returns the list that the size of each chunk it scores is appended to."""
    score_states, scored = teacher.score_states, []

    def gated(part, *args, **kwargs):
        if not scored:
            Path(f"{gate}.arrived-{os.getpid()}").touch()
            deadline = time.monotonic() + 600  # against a hang only: the test opens the gate or fails first
            while not Path(f"{gate}.open").exists():
                assert time.monotonic() < deadline, f"{gate}: never opened"
                time.sleep(0.01)
        scored.append(len(part))
        return score_states(part, *args, **kwargs)

    teacher.score_states = gated
    return scored


def zygote(model_dir: str) -> None:
    """Read ``label MODEL STORE`` / ``wait PID`` lines; answer a child's pid / its wait status."""
    import threading

    import torch
    from tqdm import tqdm

    # One thread: no OpenMP worker pool exists to be broken by fork. Building a teacher once imports
    # everything transformers loads lazily.
    torch.set_num_threads(1)
    # Progress bars: tqdm's default lock includes a semaphore shared with every process forked from here,
    # so a child killed while drawing a bar left it taken and the next child hung at its first bar; and
    # no monitor thread, which could hold the lock at a fork.
    tqdm.monitor_interval = 0
    tqdm.set_lock(threading.RLock())
    teacher_and_rows(model_dir)
    assert threading.active_count() == 1, threading.enumerate()  # a fork copies the calling thread only
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "label":
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    label_job(*args)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    code = 1
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            print(pid, flush=True)
        elif cmd == "wait":
            _, status = os.waitpid(int(args[0]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)


# -- a loop of huge put_batch calls (a plain subprocess: no torch needed) ----------------------------
def put_batch_loop(store_path: str, batch: int, prefix: str) -> None:
    from tailorkd.labels import LabelStore, make_record

    rng = random.Random(0)
    names = ["x", "y", "z"]

    def records(i: int):  # built inside put_batch's transaction, so that most of the call is the transaction
        for j in range(batch):
            w = [rng.random() + 1e-3 for _ in names]
            yield make_record(f"{prefix}-{i}-{j}", f"text {prefix}-{i}-{j}", [v / sum(w) for v in w], names, 0.001)

    with LabelStore(store_path) as store:
        for i in range(10_000):
            print(f"begin {i}", flush=True)
            t0 = time.perf_counter()
            store.put_batch("t", "p", names, records(i))
            print(f"end {i} {time.perf_counter() - t0:.4f}", flush=True)


# -- checks ------------------------------------------------------------------------------------------
def stored_rows(store_path: Path) -> dict[str, tuple]:
    if not store_path.exists():  # killed before the store was opened
        return {}
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # The label schema is made in one transaction (the hidden-state index in a later one).
        assert tables in (set(), {"meta", "labels"}, {"meta", "labels", "hidden_index"}), tables
        if not tables:
            return {}
        dupes = conn.execute("SELECT teacher, prompt, text_hash, COUNT(*) FROM labels GROUP BY 1, 2, 3 "
                             "HAVING COUNT(*) > 1").fetchall()
        assert dupes == []
        rows = conn.execute("SELECT text_hash, text_id, label_names, probs, predicted, confidence, entropy, margin "
                            "FROM labels").fetchall()
    finally:
        conn.close()
    return {r[0]: r[1:] for r in rows}


def check_complete(rows: dict[str, tuple], names: list[str], text_ids: dict[str, str]) -> None:
    """Every stored row is whole: M probabilities summing to 1, predicted = argmax, statistics consistent."""
    for h, (tid, label_names, probs, predicted, confidence, entropy, margin) in rows.items():
        probs = json.loads(probs)
        assert json.loads(label_names) == names and len(probs) == len(names)
        assert text_ids[h] == tid
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-6)  # softmax in float32
        best = max(range(len(probs)), key=probs.__getitem__)
        assert predicted == names[best] and confidence == probs[best]
        assert math.isclose(entropy, -sum(p * math.log(p) for p in probs if p > 0), abs_tol=1e-12)
        assert math.isclose(margin, probs[best] - sorted(probs)[-2], abs_tol=1e-12)


def stored_hidden(store_path: Path, hashes: list[str] | None = None) -> tuple[int, dict[int, np.ndarray] | None]:
    """Check the hidden-state index (every row has its label and an existing shard, whole shards only);
    return its row count and, for ``hashes``, the stored states."""
    from tailorkd.hidden_states import HiddenStateReader
    from tailorkd.labels import LabelStore

    if not store_path.exists():
        return 0, None
    conn = sqlite3.connect(store_path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='hidden_index'").fetchone():
            return 0, None
        index = conn.execute("SELECT teacher, prompt, text_hash, shard FROM hidden_index").fetchall()
        unlabelled = conn.execute("SELECT COUNT(*) FROM hidden_index h LEFT JOIN labels l "
                                  "USING (prompt, text_hash) WHERE l.text_hash IS NULL").fetchone()[0]
    finally:
        conn.close()
    assert unlabelled == 0, "a hidden state without its label"
    assert len(index) % ROWS_PER_SHARD == 0 or hashes is not None, f"{len(index)} indexed rows: a partial shard"
    assert all((store_path.parent / shard).is_file() for *_, shard in index)
    if hashes is None or not index:
        return len(index), None
    (teacher, prompt), = {(t, p) for t, p, _, _ in index}
    with LabelStore(store_path) as store:
        return len(index), HiddenStateReader(store, teacher, prompt).get(hashes, HIDDEN_LAYERS)


def count_rows(store_path: Path) -> int:
    """Rows committed so far, read without creating the file or waiting on the writer."""
    if not store_path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=0.1)
        try:
            return conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet, or locked for a moment
        return 0


class Zygote:
    def __init__(self, model_dir: str, log: Path):
        self.log = open(log, "w")
        # No tokenizer thread pool either, for the same reason as one torch thread.
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, __file__, "zygote", model_dir], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=HERE.parent, env=env)
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.log.close()


def test_killed_labelling_keeps_whole_batches_and_resumes_to_the_uninterrupted_result(tiny_models, tmp_path):
    from helpers import TOPICS, topic_rows
    from tailorkd.labels import text_hash

    rng = random.Random(SEED)
    all_rows = topic_rows(ROWS_PER_TOPIC)
    shots = [all_rows[0], all_rows[ROWS_PER_TOPIC * 3]]
    rows = [r for r in all_rows if r not in shots]
    text_ids = {text_hash(r["text"]): r["id"] for r in rows}
    model = str(tiny_models["llama"])
    store = tmp_path / "labels.sqlite"
    log = tmp_path / "zygote.log"
    zygote_proc = Zygote(model, log)
    kills = []
    try:
        for round_ in range(5):
            before = count_rows(store)
            pid = zygote_proc.ask(f"label {model} {store}")
            if round_ == 0:  # anywhere in start-up or the first chunks
                time.sleep(rng.uniform(0.0, 0.3))
                seen = count_rows(store)
            else:  # once it has written a few more rows, plus a random delay
                target = before + rng.randint(1, 2 * CHUNK)
                deadline = time.monotonic() + 120  # against a hang only: a loaded machine is slow to start
                while (seen := count_rows(store)) < target:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.02))
            os.kill(pid, signal.SIGKILL)
            status = zygote_proc.ask(f"wait {pid}")
            assert status == -signal.SIGKILL, \
                f"round {round_}: the run ended before the kill ({status})\n{log.read_text()}"
            stored = stored_rows(store)
            kills.append((seen, len(stored)))
            assert len(stored) >= seen, "a committed batch was lost"
            assert len(stored) % CHUNK == 0, f"a partial batch was stored: {len(stored)} rows"
            check_complete(stored, TOPICS, text_ids)
            hidden_rows, _ = stored_hidden(store)
            kills[-1] += (hidden_rows,)
        assert len(stored) < len(rows), "the kills came too late to interrupt anything"

        # Resume to completion; then the same job uninterrupted into a fresh store.
        assert zygote_proc.ask(f"wait {zygote_proc.ask(f'label {model} {store}')}") == 0, log.read_text()
        fresh = tmp_path / "fresh.sqlite"
        assert zygote_proc.ask(f"wait {zygote_proc.ask(f'label {model} {fresh}')}") == 0, log.read_text()
    finally:
        zygote_proc.close()
    resumed, reference = stored_rows(store), stored_rows(fresh)
    assert set(resumed) == set(reference) == set(text_ids)
    check_complete(resumed, TOPICS, text_ids)
    for h, ref in reference.items():
        assert resumed[h][0] == ref[0] and resumed[h][3] == ref[3]  # text id, predicted
        assert json.loads(resumed[h][2]) == pytest.approx(json.loads(ref[2]), abs=1e-6)
    order = sorted(text_ids)
    (n_resumed, states), (n_reference, reference_states) = stored_hidden(store, order), stored_hidden(fresh, order)
    assert n_resumed == n_reference == len(rows)
    for layer in HIDDEN_LAYERS:  # float16 on disk: equal up to its rounding
        np.testing.assert_allclose(states[layer], reference_states[layer], rtol=2e-3, atol=1e-4)
    print(f"labels seen before each kill / labels, hidden states stored after it: {kills}")


def wait_for_arrivals(gate: Path, n: int, log: Path) -> None:
    deadline = time.monotonic() + 300  # a fork builds its teacher in seconds; this only stops a wait for a dead one
    while len(list(gate.parent.glob(f"{gate.name}.arrived-*"))) < n:
        assert time.monotonic() < deadline, f"{gate}: fewer than {n} labelling processes arrived\n{log.read_text()}"
        time.sleep(0.01)


def test_two_labelling_processes_on_one_store_store_each_text_once(tiny_models, tmp_path):
    """Two label_rows processes (with hidden states) on the same rows and store both finish, and each text
    is stored once, with its label and hidden state. Each process is held at its first chunk, after it has
    read what is done, until the test lets it go: the overlap does not depend on timing."""
    from helpers import TOPICS, topic_rows
    from tailorkd.hidden_states import shard_folder_key
    from tailorkd.labels import text_hash

    per_topic = TWO_PROCESS_ROWS_PER_TOPIC
    all_rows = topic_rows(per_topic)
    shots = [all_rows[0], all_rows[per_topic * 3]]
    rows = [r for r in all_rows if r not in shots]
    text_ids = {text_hash(r["text"]): r["id"] for r in rows}
    model = str(tiny_models["llama"])
    log = tmp_path / "zygote.log"
    zygote_proc = Zygote(model, log)
    try:
        # One overtakes the other: B waits at its first chunk while A labels everything; B's first chunk
        # is then stored already (its shard leaves those texts out), and B skips every later chunk.
        # Each store in a folder of its own: its shards go beside it.
        overtaken, gate = tmp_path / "overtaken" / "labels.sqlite", tmp_path / "gate-overtaken"
        b = zygote_proc.ask(f"label {model} {overtaken} {gate} {per_topic}")
        wait_for_arrivals(gate, 1, log)
        a = zygote_proc.ask(f"label {model} {overtaken} - {per_topic}")
        assert zygote_proc.ask(f"wait {a}") == 0, log.read_text()
        Path(f"{gate}.open").touch()
        assert zygote_proc.ask(f"wait {b}") == 0, log.read_text()
        assert json.loads(Path(f"{gate}.scored-{b}").read_text()) == [CHUNK]

        # Side by side: both have read an empty store before either labels anything.
        together, gate = tmp_path / "together" / "labels.sqlite", tmp_path / "gate-together"
        pids = [zygote_proc.ask(f"label {model} {together} {gate} {per_topic}") for _ in range(2)]
        wait_for_arrivals(gate, 2, log)
        Path(f"{gate}.open").touch()
        assert [zygote_proc.ask(f"wait {pid}") for pid in pids] == [0, 0], log.read_text()
        scored = [sum(json.loads(Path(f"{gate}.scored-{pid}").read_text())) for pid in pids]
    finally:
        zygote_proc.close()

    order = sorted(text_ids)
    reference = stored_rows(overtaken)
    _, reference_states = stored_hidden(overtaken, order)
    for store in (overtaken, together):
        stored = stored_rows(store)  # one row per (teacher, prompt, text): checked there
        assert set(stored) == set(text_ids)
        check_complete(stored, TOPICS, text_ids)
        for h, ref in reference.items():
            assert json.loads(stored[h][2]) == pytest.approx(json.loads(ref[2]), abs=1e-5)  # other batches
        n_hidden, states = stored_hidden(store, order)  # the index's primary key: at most one row per text
        assert n_hidden == len(rows)
        for layer in HIDDEN_LAYERS:
            np.testing.assert_allclose(states[layer], reference_states[layer], rtol=2e-3, atol=1e-4)
        conn = sqlite3.connect(store)
        (teacher, prompt), = conn.execute("SELECT DISTINCT teacher, prompt FROM hidden_index").fetchall()
        shards = {Path(s).name for (s,) in conn.execute("SELECT DISTINCT shard FROM hidden_index")}
        conn.close()
        folder = store.parent / "hidden" / shard_folder_key(teacher, prompt)
        assert {p.name for p in folder.iterdir()} == shards, "a shard no index row names, or a temporary file"
    print(f"texts scored by each of the processes side by side: {scored} (of {len(rows)})")


def test_kill_during_put_batch_leaves_all_or_none_of_the_batch(tmp_path):
    batch = 5_000
    rng = random.Random(SEED)
    store = tmp_path / "labels.sqlite"
    outcomes = []
    for round_ in range(4):
        before = count_rows(store)
        proc = subprocess.Popen([sys.executable, __file__, "put_batch_loop", str(store), str(batch), f"r{round_}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent)
        durations = []
        while True:  # let one batch pass to learn how long a call takes, then kill inside the next one
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            kind, i, *rest = line.split()
            if kind == "end":
                durations.append(float(rest[0]))
            elif durations:
                time.sleep(rng.uniform(0.05, 0.95) * durations[-1])
                break
        proc.kill()
        proc.wait()
        # Where the kill struck is the last line printed, not the one read above: on a loaded machine this
        # process may wake late, or read a line the loop printed a while ago.
        last = [line.split() for line in proc.stdout.read().splitlines() if line.strip()]
        kind, i, *_ = last[-1] if last else (kind, i)
        in_flight = int(i) if kind == "begin" else int(i) + 1  # after "end i", batch i + 1 had not begun
        proc.stdout.close()
        proc.stderr.close()
        conn = sqlite3.connect(store)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        added = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] - before
        conn.close()
        # Batches 0..in_flight-1 were committed; the one in flight is all there or not at all.
        allowed = (in_flight * batch, (in_flight + 1) * batch) if kind == "begin" else (in_flight * batch,)
        assert added in allowed, f"round {round_}: {added} rows added, batch {in_flight} of {batch} rows was in flight"
        outcomes.append((in_flight, added // batch - in_flight, round(durations[-1], 3)))
    print(f"(batch in flight, whether it was committed) per kill: {outcomes}")


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    if mode == "zygote":
        zygote(arguments[0])
    elif mode == "put_batch_loop":
        put_batch_loop(arguments[0], int(arguments[1]), arguments[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
