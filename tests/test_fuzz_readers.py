"""Property tests (Hypothesis) of every reader of input files: the corpus stage's shards, the signals feed (read
by the corpus stage's reader), the data sources, the prepared splits and the dashboard's signals folder.

Whatever the bytes (random, cut short, in another encoding, with blank lines, embedded newlines, odd dates),
a reader gives rows and rejects, each reject naming its file and the physical 1-based line its record starts
on, or a one-line TailorkdError naming the file; never another exception; and what a store held before is
still there afterwards. The budget is tests/conftest.py's Hypothesis profile (``make fuzz`` runs a long one).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import write_signals
from tailorkd.corpus.read import read_shard
from tailorkd.dashboard import read_signals_folder
from tailorkd.data import DataConfig, load_prepared, prepare_data
from tailorkd.data.config import ColumnMap
from tailorkd.data.readers import NoLabels, read_file
from tailorkd.errors import TailorkdError
from tailorkd.recipe.corpus import CorpusInput
from tailorkd.recipe.signals import SignalColumns
from tailorkd.signals import SignalStore, feed_days, read_feed

# Text a feed may hold: any Unicode but lone surrogates, with line separators and control characters.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
WORDS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30).filter(lambda t: t.strip())
DAYS = st.dates(date(1900, 1, 1), date(2099, 12, 31))
SECONDS = st.integers(315532800, 4102444799)  # Unix seconds in [1980, 2100)


def written(suffix: str, data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / f"feed{suffix}"
    path.write_bytes(data)
    return path


def attempt(path: Path, read):
    """What ``read()`` gives, or None after a one-line TailorkdError that names ``path``: any other exception
    fails the test."""
    try:
        return read()
    except TailorkdError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message, message
        return None
    finally:
        shutil.rmtree(path.parent, ignore_errors=True) if path.parent.name.startswith("fuzz-") else None


def lines_of(data: bytes) -> int:
    return data.count(b"\n") + 1


def corpus_rows(path: Path, fmt: str) -> list[dict]:
    spec = CorpusInput(path=str(path), columns={"id": "id", "date": "date", "topic": "topic"})
    return [row for table in read_shard(0, path, fmt, spec, batch_size=7) for row in table.to_pylist()]


def feed_rows(path: Path) -> tuple[list[dict], list[dict]]:
    articles, rejects = [], []
    for _, batch, rejected in read_feed([path], SignalColumns(), batch_size=7):
        articles += batch
        rejects += rejected
    return articles, rejects


def data_rows(path: Path, fmt: str) -> tuple[list[dict], list[dict]]:
    result = read_file(path, fmt, columns=ColumnMap(id=None if fmt == "lines" else "id", label=None),
                       labeler=NoLabels(), source_name="fuzz")
    return result.rows, result.rejects


def gz(data: bytes, cut: int | None = None) -> bytes:
    packed = gzip.compress(data, mtime=0)
    return packed if cut is None else packed[: cut % (len(packed) + 1)]


def parquet_bytes(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("text", pa.string()),
                                                                 ("date", pa.string())])), sink)
    return sink.getvalue()


# -- random bytes and truncations: rows, rejects or a one-line error, never another exception ---------------
FORMATS = [(".jsonl", "jsonl"), (".csv", "csv"), (".jsonl.gz", "jsonl"), (".csv.gz", "csv"), (".parquet", "parquet")]


def check_lines(found: list[dict], data: bytes, key: str = "line", file: Path | None = None) -> None:
    for item in found:
        assert 1 <= item[key] <= lines_of(data), item
        if file is not None:
            assert item["file"] == str(file)


VALID = {
    "jsonl": ('{"id": "a", "text": "Storm warning", "date": "2024-01-01", "topic": "floods"}\n\n'
              '{"id": "b", "text": "Two\\nlines \u00e9", "date": 1704067200}\n').encode(),
    "csv": ('id,text,date,topic\r\na,"Storm, warning",2024-01-01,floods\r\n\r\n'
            'b,"Two\nlines \u00e9",1704067200,\r\n').encode(),
}


@st.composite
def mutated(draw, fmt: str) -> bytes:
    """A valid file of ``fmt`` (repeated), then bytes inserted, deleted or changed at random places."""
    if fmt == "parquet":
        data = bytearray(parquet_bytes([{"id": "a", "text": "Storm warning", "date": "2024-01-01"}]))
    else:
        data = bytearray(VALID[fmt] * draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        change = draw(st.sampled_from(["insert", "delete", "replace"]))
        if change == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif change == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
    return bytes(data)


@given(choice=st.data(), cut=st.integers(0, 10_000), packed=st.booleans())
@pytest.mark.parametrize("suffix, fmt", FORMATS)
def test_corpus_and_signals_readers_survive_any_bytes(suffix, fmt, choice, cut, packed):
    data = choice.draw(st.one_of(st.binary(max_size=600), mutated(fmt)), label="data")
    content = gz(data, cut if packed else None) if suffix.endswith(".gz") else data
    rows = attempt(path := written(suffix, content), lambda: corpus_rows(path, fmt))
    if rows is not None and fmt != "parquet":
        check_lines(rows, data, key="row")
    found = attempt(path := written(suffix, content), lambda: feed_rows(path))
    if found is not None and fmt != "parquet":
        check_lines(found[0] + found[1], data, file=path)


@given(choice=st.data())
@pytest.mark.parametrize("suffix, fmt", [(".jsonl", "jsonl"), (".csv", "csv"), (".tsv", "tsv"), (".txt", "lines"),
                                         (".parquet", "parquet")])
def test_data_readers_survive_any_bytes(suffix, fmt, choice):
    base = {"tsv": "csv", "lines": "csv"}.get(fmt, fmt)
    data = choice.draw(st.one_of(st.binary(max_size=600), mutated(base), st.sampled_from([b"", b"id,text\n"])),
                       label="data")
    found = attempt(path := written(suffix, data), lambda: data_rows(path, fmt))
    if found is not None and fmt != "parquet":
        check_lines(found[1], data, file=path)
        assert all(1 <= int(row["origin"].rsplit(":", 1)[1]) <= lines_of(data) for row in found[0])


@given(texts=st.lists(TEXT, min_size=1, max_size=12), cut=st.integers(0, 10_000), junk=st.binary(max_size=8))
def test_a_damaged_parquet_feed_is_a_one_line_error(texts, cut, junk):
    whole = parquet_bytes([{"id": str(i), "text": t, "date": "2024-01-01"} for i, t in enumerate(texts)])
    content = whole[: cut % len(whole)] + junk  # cut short: the footer is gone
    assert attempt(path := written(".parquet", content), lambda: corpus_rows(path, "parquet")) is None
    assert attempt(path := written(".parquet", content), lambda: feed_rows(path)) is None


# -- structured files: each reject at its record's first line, each row at its own ---------------------------
RECORDS = st.lists(st.one_of(
    st.tuples(st.just("good"), WORDS, DAYS),
    st.tuples(st.just("empty"), st.sampled_from(["", "  ", "\t"]), DAYS),
    st.tuples(st.just("blank"), st.sampled_from(["", "   ", "\r"]), st.none()),
    st.tuples(st.just("malformed"), st.sampled_from(["{not json", '{"text": "open', "[1, 2]", "42", "nul",
                                                     "[" * 5000, '{"a":' * 5000]), st.none()),
), max_size=15)


@given(records=RECORDS, crlf=st.booleans(), bom=st.booleans())
def test_jsonl_rows_and_rejects_carry_their_physical_line(records, crlf, bom):
    lines, good, bad = [], {}, set()
    for number, (kind, value, day) in enumerate(records, start=1):
        if kind in ("good", "empty"):
            lines.append(json.dumps({"id": f"r{number}", "text": value, "date": day.isoformat()}, ensure_ascii=False))
            (good.__setitem__(f"r{number}", number) if kind == "good" else bad.add(number))
        else:
            lines.append(value)
            bad.update([number] if kind == "malformed" else [])
    data = ("\ufeff" if bom else "") + ("\r\n" if crlf else "\n").join(lines) + "\n"
    content = data.encode("utf-8")
    for suffix, packed in ((".jsonl", content), (".jsonl.gz", gz(content))):
        rows = attempt(path := written(suffix, packed), lambda: corpus_rows(path, "jsonl"))
        if rows is None:  # only when no row at all could be read
            assert not good and bad
            continue
        assert {r["doc_id"]: r["row"] for r in rows if r["reject"] is None} == good
        assert {r["row"] for r in rows if r["reject"] is not None} == bad
        found = attempt(path := written(suffix, packed), lambda: feed_rows(path))
        assert {a["id"]: a["line"] for a in found[0]} == good
        assert {r["line"] for r in found[1]} == bad
    found = attempt(path := written(".jsonl", content), lambda: data_rows(path, "jsonl"))
    if found is not None:
        assert {r["id"]: int(r["origin"].rsplit(":", 1)[1]) for r in found[0]} == good
        assert {r["line"] for r in found[1]} == bad


CELLS = st.text(st.characters(exclude_categories=("Cs",)), max_size=25)


@given(rows=st.lists(st.tuples(WORDS, CELLS, DAYS), max_size=12), blank_after=st.sets(st.integers(0, 12)),
       crlf=st.booleans())
def test_csv_records_start_at_their_physical_line_whatever_newlines_they_hold(rows, blank_after, crlf):
    out = io.StringIO()
    end = "\r\n" if crlf else "\n"
    # Minimal quoting quotes a field holding a character of the line end: with "\n" alone, a lone "\r" would be
    # left bare, which is malformed CSV (a reject: see the corpus tests), so all fields are quoted then.
    writer = csv.writer(out, lineterminator=end, quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
    writer.writerow(["id", "text", "topic", "date"])
    starts = {}
    for i, (text, topic, day) in enumerate(rows):
        if i in blank_after:
            out.write(end)
        starts[f"c{i}"] = out.getvalue().count("\n") + 1
        writer.writerow([f"c{i}", text, topic, day.isoformat()])
    content = out.getvalue().encode("utf-8")
    for suffix, packed in ((".csv", content), (".csv.gz", gz(content))):
        got = attempt(path := written(suffix, packed), lambda: corpus_rows(path, "csv"))
        assert {r["doc_id"]: r["row"] for r in got if r["reject"] is None} == starts
        articles, rejects = attempt(path := written(suffix, packed), lambda: feed_rows(path))
        assert {a["id"]: a["line"] for a in articles} == starts and not rejects
    found = attempt(path := written(".csv", content), lambda: data_rows(path, "csv"))
    if found is not None:
        assert {r["id"]: int(r["origin"].rsplit(":", 1)[1]) for r in found[0]} == starts


@given(texts=st.lists(WORDS, min_size=2, max_size=10), bad=st.integers(0, 9), encoding=st.sampled_from(
    ["latin-1", "cp1252", "utf-16"]))
def test_bytes_of_another_encoding_reject_their_own_line_only(texts, bad, encoding):
    bad %= len(texts)
    lines = [json.dumps({"id": f"r{i}", "text": t, "date": "2024-01-01"}, ensure_ascii=False).encode()
             for i, t in enumerate(texts)]
    lines[bad] = json.dumps({"id": f"r{bad}", "text": "caf\u00e9 \u00e0 la cr\u00e8me", "date": "2024-01-01"},
                            ensure_ascii=False).encode("cp1252")  # not UTF-8
    content = b"\n".join(lines) + b"\n"
    rows = attempt(path := written(".jsonl", content), lambda: corpus_rows(path, "jsonl"))
    assert [r["row"] for r in rows if r["reject"] is not None] == [bad + 1]
    assert "undecodable" in next(r["reject"] for r in rows if r["reject"] is not None)
    articles, rejects = attempt(path := written(".jsonl", content), lambda: feed_rows(path))
    assert [r["line"] for r in rejects] == [bad + 1] and len(articles) == len(texts) - 1
    rows, rejects = attempt(path := written(".jsonl", content), lambda: data_rows(path, "jsonl"))
    assert [r["line"] for r in rejects] == [bad + 1] and len(rows) == len(texts) - 1
    # A whole file in another encoding: rejects or a one-line error, never a traceback.
    other = "\n".join(json.dumps({"id": i, "text": t, "date": "2024-01-01"}, ensure_ascii=False)
                      for i, t in enumerate(texts)).encode(encoding, errors="replace")
    attempt(path := written(".jsonl", other), lambda: feed_rows(path))
    attempt(path := written(".csv", other), lambda: feed_rows(path))
    attempt(path := written(".jsonl", other), lambda: data_rows(path, "jsonl"))


# -- dates --------------------------------------------------------------------------------------------------
def utc_day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d")


@given(values=st.lists(st.one_of(
    DAYS.map(lambda d: (d.isoformat(), d.isoformat())),
    SECONDS.map(lambda s: (s, utc_day(s))),
    SECONDS.map(lambda s: (str(s), utc_day(s))),
    st.tuples(SECONDS, st.integers(1, 999)).map(lambda p: (f"{p[0]}.{p[1]:03d}", utc_day(p[0]))),
    st.integers(4102444800, 10**15).map(lambda s: (s, None)),  # beyond 2100 (e.g. milliseconds)
    st.sampled_from([("now", None), ("today", None), ("", None), ("not a day", None), ("-5", None),
                     ("1850-06-01", None), ("2024-13-45", None)]),
    TEXT.map(lambda t: (t, ...)),  # anything: a day in range or no day, never an exception
), max_size=20))
def test_feed_dates_follow_one_rule(values):
    lines = [json.dumps({"id": f"d{i}", "text": "A story.", "date": v}) for i, (v, _) in enumerate(values)]
    content = ("\n".join(lines) + "\n").encode()
    found = attempt(path := written(".jsonl", content), lambda: feed_rows(path))
    if found is None:  # a file in which no row has a date at all
        assert all(not str(v).strip() for v, _ in values)
        return
    articles, rejects = found
    days = {a["id"]: a["day"] for a in articles}
    for i, (_, want) in enumerate(values):
        got = days.get(f"d{i}")
        if want is not ...:
            assert got == want, (values[i], got)
        elif got is not None:
            assert "1900-01-01" <= got <= "2099-12-31"
    assert len(days) + len(rejects) == len(values)
    assert feed_days([str(v) if not isinstance(v, str) else v for v, _ in values]) == [
        days.get(f"d{i}") for i in range(len(values))]


# -- stores and folders: damaged files are named, and nothing stored before is lost ---------------------------
def score(articles: list[dict]) -> list[dict]:
    return [{**a, "label": "risk", "confidence": 0.9, "severity": "high", "probabilities": [0.9, 0.1]}
            for a in articles]


@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".jsonl.gz"]),
       cut=st.integers(0, 10_000))
def test_reading_a_bad_feed_into_a_store_keeps_what_it_held(data, suffix, cut):
    folder = Path(tempfile.mkdtemp(prefix="store-"))
    try:
        earlier = folder / "earlier.jsonl"
        earlier.write_text('{"id": "e1", "text": "Flood warning", "date": "2024-01-01"}\n{broken\n'
                           '{"id": "e2", "text": "All clear", "date": 1704153600}\n', encoding="utf-8")
        with SignalStore(folder / "signals.sqlite", ["risk", "safe"]) as store:
            for path, articles, rejects in read_feed([earlier], SignalColumns(), 7):
                store.put(score(articles), "m", rejects, file=path, first=True)
            before, earlier_rejects = store.frame("m").set_index("key")[["id", "day", "text"]], store.rejects()
            assert list(before["id"]) == ["e1", "e2"] and [r["line"] for r in earlier_rejects] == [2]
            bad = folder / f"new{suffix}"
            bad.write_bytes(gz(data, cut) if suffix.endswith(".gz") else data)
            try:
                for path, articles, rejects in read_feed([bad], SignalColumns(), 7):
                    store.put(score([a for a in articles if a["id"] not in ("e1", "e2")]), "m", rejects, file=path,
                              first=True)
            except TailorkdError as exc:
                assert "\n" not in str(exc) and str(bad) in str(exc)
            after = store.frame("m").set_index("key")
            assert after.loc[before.index, ["id", "day", "text"]].equals(before)
            assert [r for r in store.rejects() if r["file"] == str(earlier)] == earlier_rejects
            assert store.files()[0] == str(earlier)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("prepared")
    (base / "news.jsonl").write_text("".join(
        json.dumps({"id": f"n{i}", "text": f"news story number {i} of the day", "label": ["risk", "safe"][i % 2]})
        + "\n" for i in range(40)), encoding="utf-8")
    cfg = DataConfig.model_validate({"sources": [{"path": "news.jsonl", "columns": {"id": "id"}}],
                                     "splits": {"seed_per_class": 2, "test_size": 6}})
    prepare_data(cfg, ["risk", "safe"], base / "data", seed=1, base_dir=base)
    return base / "data"


# Any JSON value in any field, lone surrogates (escaped, as JSON allows) included.
ANY_TEXT = st.text(st.characters(), max_size=20) | st.text(st.characters(categories=["Cs", "Ll"]), max_size=6)
ANY_VALUE = st.one_of(st.none(), ANY_TEXT, st.integers(), st.floats(), st.booleans(),
                      st.lists(st.integers(), max_size=2), st.dictionaries(ANY_TEXT, st.integers(), max_size=2))


@given(rows=st.lists(st.fixed_dictionaries({
    "id": ANY_VALUE, "text": ANY_VALUE | WORDS, "title": ANY_VALUE, "date": ANY_VALUE, "language": ANY_VALUE,
    "label": st.sampled_from(["risk", "safe", "", "other"]) | ANY_VALUE}), max_size=12))
def test_prepared_splits_take_any_json_values_and_read_back_the_same(rows):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        anchors = [{"id": f"anchor-{label}", "text": f"a {label} story", "label": label} for label in ("risk", "safe")]
        (folder / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*anchors, *rows]), encoding="ascii")
        cfg = DataConfig.model_validate({"sources": [{"path": "news.jsonl", "columns": {
            "id": "id", "title": "title", "date": "date", "language": "language"}}], "max_reject_fraction": 1.0,
            "splits": {"seed_per_class": 1, "test_size": 0}})
        try:
            made = prepare_data(cfg, ["risk", "safe"], folder / "data", seed=1, base_dir=folder)
        except TailorkdError as exc:
            assert "\n" not in str(exc)
            return
        back = load_prepared(folder / "data")
        assert back.pool.to_pandas().equals(made.pool.to_pandas()) and back.rejects == made.rejects
        assert all(r["file"] == str(folder / "news.jsonl") for r in made.rejects)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@given(name=st.sampled_from(["pool.arrow", "seed.parquet", "test.parquet", "rejects.jsonl", "stats.json"]),
       cut=st.integers(0, 100_000), junk=st.binary(max_size=16))
def test_damaged_prepared_splits_are_named_errors(prepared, name, cut, junk):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-")) / "data"
    shutil.copytree(prepared, folder)
    whole = (folder / name).read_bytes()
    (folder / name).write_bytes(whole[: cut % (len(whole) + 1)] + junk)
    try:
        back = load_prepared(folder)
    except TailorkdError as exc:
        assert "\n" not in str(exc) and str(folder) in str(exc)
        if name != "stats.json":
            assert str(folder / name) in str(exc)
    else:
        assert len(list(back.pool)) == len(back.pool) and len(back.seed) == 4
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def signals_folder(tmp_path_factory) -> Path:
    return write_signals(tmp_path_factory.mktemp("signals") / "signals")


@given(name=st.sampled_from(["daily.parquet", "alerts.jsonl", "summary.json"]), cut=st.integers(0, 100_000),
       junk=st.binary(max_size=16))
def test_a_damaged_signals_folder_is_a_named_error(signals_folder, name, cut, junk):
    folder = Path(tempfile.mkdtemp(prefix="fuzz-")) / "signals"
    shutil.copytree(signals_folder, folder)
    whole = (folder / name).read_bytes()
    (folder / name).write_bytes(whole[: cut % (len(whole) + 1)] + junk)
    try:
        read_signals_folder(folder)
    except TailorkdError as exc:
        assert "\n" not in str(exc) and str(folder / name) in str(exc)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
