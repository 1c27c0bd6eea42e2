"""Loading all sources, deterministic stratified splits, and writing/reading them back."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tailorkd.data import (
    POOL_FIELDS,
    RECORD_FIELDS,
    DataConfig,
    SplitConfig,
    drop_duplicate_texts,
    load_prepared,
    load_records,
    make_splits,
    prepare_data,
)
from tailorkd.data.splits import SCHEMA_VERSION, allocate, frame_rows
from tailorkd.errors import TailorkdError

TASK = ["risk", "caution", "safe"]


def records(counts: dict[str | None, int], prefix: str = "r") -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        for i in range(n):
            rid = f"{prefix}{label or 'none'}{i:05d}"
            rows.append(
                {
                    "id": rid,
                    "text": f"text of {rid}",
                    "title": None,
                    "language": "en",
                    "date": None,
                    "label": label,
                    "source": "synthetic",
                    "origin": f"synthetic:{len(rows) + 1}",
                }
            )
    return pd.DataFrame(rows, columns=list(RECORD_FIELDS))


def ids(frame: pd.DataFrame) -> list[str]:
    return list(frame["id"])


def label_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in frame["label"].value_counts().items()}


# ---------------------------------------------------------------------------------------------- make_splits


def test_splits_are_disjoint_stratified_and_cover_everything():
    recs = records({"risk": 100, "caution": 60, "safe": 40, None: 25})
    seed, pool, test = make_splits(recs, SplitConfig(seed_per_class=4, test_size=50), TASK, seed=7)
    assert label_counts(seed) == {"risk": 4, "caution": 4, "safe": 4}
    # test: proportional to what is left after the seed set (96, 56, 36 of 188: 25.5, 14.9, 9.6)
    assert label_counts(test) == {"risk": 25, "caution": 15, "safe": 10}
    assert len(test) == 50
    assert set(ids(seed)).isdisjoint(ids(test))
    assert set(ids(seed)).isdisjoint(ids(pool)) and set(ids(test)).isdisjoint(ids(pool))
    assert sorted(ids(seed) + ids(test) + ids(pool)) == sorted(ids(recs))
    assert len(set(ids(pool))) == len(pool)


def test_pool_has_no_labels_and_unlabelled_rows_only_go_there():
    recs = records({"risk": 30, "caution": 30, "safe": 30, None: 40})
    seed, pool, test = make_splits(recs, SplitConfig(test_size=30), TASK, seed=1)
    assert "label" not in pool.columns
    assert list(pool.columns) == list(POOL_FIELDS)
    assert list(seed.columns) == list(RECORD_FIELDS) and list(test.columns) == list(RECORD_FIELDS)
    unlabelled = set(recs.loc[recs["label"].isna(), "id"])
    assert unlabelled <= set(ids(pool))
    assert seed["label"].notna().all() and test["label"].notna().all()


def test_same_records_and_seed_give_the_same_splits_in_any_row_order():
    recs = records({"risk": 50, "caution": 20, "safe": 30, None: 10})
    cfg = SplitConfig(seed_per_class=3, test_size=20)
    first = make_splits(recs, cfg, TASK, seed=11)
    shuffled = recs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = make_splits(shuffled, cfg, list(reversed(TASK)), seed=11)
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    other = make_splits(recs, cfg, TASK, seed=12)
    assert set(ids(other[0])) != set(ids(first[0]))


def test_test_set_has_every_label_when_it_can():
    recs = records({"risk": 500, "caution": 6, "safe": 300})
    _, _, test = make_splits(recs, SplitConfig(seed_per_class=4, test_size=10), TASK, seed=0)
    counts = label_counts(test)
    assert counts["caution"] >= 1 and sum(counts.values()) == 10


def test_allocate_is_exact():
    assert allocate(10, {"a": 5, "b": 5}, ["a", "b"]) == {"a": 5, "b": 5}
    assert allocate(3, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"]) == {"a": 1, "b": 1, "c": 1}
    assert allocate(2, {"a": 1, "b": 1, "c": 1}, ["a", "b", "c"]) == {"a": 1, "b": 1, "c": 0}
    assert allocate(5, {"a": 1000, "b": 1, "c": 0}, ["a", "b", "c"]) == {"a": 4, "b": 1, "c": 0}
    assert allocate(0, {"a": 3}, ["a"]) == {"a": 0}
    quota = allocate(200, {"a": 2108, "b": 5902, "c": 9056}, ["a", "b", "c"])
    assert sum(quota.values()) == 200 and quota == {"a": 25, "b": 69, "c": 106}


def test_too_few_rows_for_the_seed_quota():
    recs = records({"risk": 10, "caution": 3, "safe": 10})
    with pytest.raises(TailorkdError, match=r"label 'caution' has 3 labelled row\(s\).*seed_per_class=4"):
        make_splits(recs, SplitConfig(seed_per_class=4, test_size=5), TASK, seed=0)
    recs = records({"risk": 10, "safe": 10})
    with pytest.raises(TailorkdError, match="'caution' has 0"):
        make_splits(recs, SplitConfig(seed_per_class=1, test_size=5), TASK, seed=0)


def test_no_rows_left_for_a_label_in_the_test_set():
    recs = records({"risk": 10, "caution": 4, "safe": 10})
    with pytest.raises(TailorkdError, match="no labelled rows left for the test set"):
        make_splits(recs, SplitConfig(seed_per_class=4, test_size=6), TASK, seed=0)


def test_test_size_larger_than_what_is_left():
    recs = records({"risk": 10, "caution": 10, "safe": 10})
    with pytest.raises(TailorkdError, match=r"test_size=40.*only 18"):
        make_splits(recs, SplitConfig(seed_per_class=4, test_size=40), TASK, seed=0)


def test_pool_size_caps_the_pool_with_a_sample():
    recs = records({"risk": 100, "caution": 100, "safe": 100, None: 100})
    cfg = SplitConfig(seed_per_class=2, test_size=30, pool_size=50)
    seed, pool, test = make_splits(recs, cfg, TASK, seed=5)
    assert len(pool) == 50 and len(seed) == 6 and len(test) == 30
    assert set(ids(pool)).isdisjoint(ids(seed) + ids(test))
    _, pool2, _ = make_splits(recs, cfg, TASK, seed=5)
    assert ids(pool) == ids(pool2)
    big = make_splits(recs, SplitConfig(seed_per_class=2, test_size=30, pool_size=10_000), TASK, seed=5)[1]
    assert len(big) == 400 - 36


def test_unknown_labels_and_repeated_ids_are_errors():
    recs = records({"risk": 10, "caution": 10, "safe": 10})
    bad = recs.copy()
    bad.loc[0, "label"] = "other"
    with pytest.raises(TailorkdError, match="'other'"):
        make_splits(bad, SplitConfig(seed_per_class=1, test_size=3), TASK, seed=0)
    bad = recs.copy()
    bad.loc[1, "id"] = bad.loc[0, "id"]
    with pytest.raises(TailorkdError, match="unique"):
        make_splits(bad, SplitConfig(seed_per_class=1, test_size=3), TASK, seed=0)


def test_dedupe_keeps_the_first_text():
    recs = records({"risk": 5, "caution": 5, "safe": 5})
    recs.loc[7, "text"] = recs.loc[2, "text"]  # a caution row repeats a risk row's text
    recs.loc[14, "text"] = recs.loc[13, "text"]  # same label
    deduped, dropped, conflicting = drop_duplicate_texts(recs)
    assert dropped == 2 and conflicting == 1
    assert recs.loc[7, "id"] not in set(deduped["id"]) and recs.loc[2, "id"] in set(deduped["id"])
    seed, pool, test = make_splits(recs, SplitConfig(seed_per_class=1, test_size=3), TASK, seed=0)
    assert len(seed) + len(pool) + len(test) == 13
    seed, pool, test = make_splits(recs, SplitConfig(seed_per_class=1, test_size=3, dedupe=False), TASK, seed=0)
    assert len(seed) + len(pool) + len(test) == 15


def test_splitting_28k_rows_is_fast():
    recs = records({"risk": 6000, "caution": 2000, "safe": 10000, None: 10000})
    start = time.perf_counter()
    seed, pool, test = make_splits(recs, SplitConfig(), TASK, seed=3)
    assert time.perf_counter() - start < 3.0
    assert len(seed) + len(pool) + len(test) == 28000


# ---------------------------------------------------------------------------------------------- from files to disk


def write_sources(base: Path) -> dict:
    rng = np.random.default_rng(0)
    labels = ["danger", "advice", "fine", "spam"]
    with open(base / "a.jsonl", "w", encoding="utf-8") as f:
        for i in range(120):
            f.write(json.dumps({"id": f"a{i}", "body": f"jsonl text {i}", "tag": labels[int(rng.integers(4))]}) + "\n")
        f.write("not json\n")
        # the same text as a later row of b.csv (with another label): that later row is dropped
        f.write(json.dumps({"id": "a-dup", "body": "csv text 1", "tag": "fine"}) + "\n")
    with open(base / "b.csv", "w", encoding="utf-8") as f:
        f.write("text,label\n")
        for i in range(60):
            f.write(f"csv text {i},{['risk', 'caution', 'safe'][i % 3]}\n")
    (base / "c.txt").write_text("".join(f"unlabelled line {i}\n" for i in range(30)), encoding="utf-8")
    (base / "d.jsonl").write_text('{"id": "a5", "body": "same id as a5 in a.jsonl"}\n', encoding="utf-8")
    return {
        "sources": [
            {
                "path": "a.jsonl",
                "columns": {"text": "body", "id": "id", "label": "tag"},
                "labels": {"danger": "risk", "advice": "caution", "fine": "safe", "spam": None},
            },
            {"path": "b.csv", "name": "bee"},
            {"path": "c.txt", "columns": {"label": None}},
            {"path": "d.jsonl", "columns": {"text": "body", "id": "id", "label": None}},
        ],
        "splits": {"seed_per_class": 3, "test_size": 30},
    }


def test_load_records_combines_sources(tmp_path):
    cfg = DataConfig.model_validate(write_sources(tmp_path))
    recs, rejects, stats = load_records(cfg, TASK, tmp_path)
    assert list(recs.columns) == list(RECORD_FIELDS)
    assert set(recs["source"]) == {"a", "bee", "c"}
    assert stats["schema_version"] == SCHEMA_VERSION == 2
    assert [s["name"] for s in stats["sources"]] == ["a", "bee", "c", "d"]
    a_stats = stats["sources"][0]
    assert a_stats["rejects"] == 1 and a_stats["records"] == 122 and a_stats["format"] == "jsonl"
    assert a_stats["excluded"]["spam"] == stats["excluded_by_raw_label"]["spam"] > 0
    assert stats["sources"][2]["unlabelled"] == 30
    # the repeated id in d.jsonl is a reject at its own line
    dup = [r for r in rejects if "duplicate id" in r["reason"]]
    assert len(dup) == 1 and dup[0]["file"] == str(tmp_path / "d.jsonl") and dup[0]["line"] == 1
    assert stats["duplicate_ids"] == 1 and stats["rejects"] == 2
    assert stats["rows"] == len(recs) == sum(stats["rows_per_source"].values())
    assert stats["unlabelled"] == 30
    assert sum(stats["labels"].values()) + 30 == len(recs)


def test_prepare_data_writes_and_reads_back(tmp_path):
    cfg = DataConfig.model_validate(write_sources(tmp_path))
    out = tmp_path / "out"
    prepared = prepare_data(cfg, TASK, out, seed=13, base_dir=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["seed.parquet", "pool.arrow", "test.parquet", "rejects.jsonl", "stats.json"]
    )
    stats = json.loads((out / "stats.json").read_text())
    assert stats == prepared.stats
    assert stats["schema_version"] == 2 and stats["seed"] == 13
    assert stats["duplicates_dropped"] == 1 and stats["duplicates_with_other_label"] == 1
    every = pd.concat([prepared.seed, prepared.test, prepared.pool.to_pandas()])
    assert "a-dup" in set(every["id"]) and "bee:3" not in set(every["id"])
    assert stats["splits"]["seed"] == {"rows": 9, "labels": {"risk": 3, "caution": 3, "safe": 3}}
    assert stats["splits"]["test"]["rows"] == 30 and sum(stats["splits"]["test"]["labels"].values()) == 30
    assert stats["splits"]["pool"]["unlabelled"] == 30
    assert stats["splits"]["pool"]["rows"] == stats["rows_after_dedupe"] - 39
    assert [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()] == prepared.rejects

    back = load_prepared(out)
    for name in ("seed", "pool", "test"):
        got, want = back.frame(name), prepared.frame(name)
        assert list(got.columns) == list(want.columns)
        assert got.astype(object).where(got.notna(), None).to_dict("records") == want.astype(object).where(
            want.notna(), None
        ).to_dict("records")
    assert "label" not in back.pool.columns
    assert back.rejects == prepared.rejects and back.stats == prepared.stats

    again = prepare_data(cfg, TASK, out, seed=13, base_dir=tmp_path)
    pd.testing.assert_frame_equal(again.seed, prepared.seed)
    pd.testing.assert_frame_equal(again.pool.to_pandas(), prepared.pool.to_pandas())
    assert back.rows("pool")[3] == list(back.pool)[3] == frame_rows(prepared.frame("pool"))[3]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_load_prepared_errors(tmp_path):
    with pytest.raises(TailorkdError, match="missing or incomplete"):
        load_prepared(tmp_path / "nothing")
    cfg = DataConfig.model_validate(write_sources(tmp_path))
    out = tmp_path / "out"
    prepare_data(cfg, TASK, out, seed=1, base_dir=tmp_path)
    (out / "stats.json").unlink()
    with pytest.raises(TailorkdError, match="stats.json"):
        load_prepared(out)
    (out / "stats.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(TailorkdError, match="schema_version"):
        load_prepared(out)


@pytest.mark.parametrize("name, kind", [("pool.arrow", "an Arrow file"), ("seed.parquet", "a Parquet file"),
                                        ("test.parquet", "a Parquet file"), ("rejects.jsonl", "JSON lines")])
def test_a_damaged_split_is_a_one_line_error_naming_it_and_the_way_out(tmp_path, name, kind):
    cfg = DataConfig.model_validate(write_sources(tmp_path))
    out = tmp_path / "out"
    prepare_data(cfg, TASK, out, seed=1, base_dir=tmp_path)
    whole = (out / name).read_bytes()
    (out / name).write_bytes(whole[: len(whole) // 2] + b"{cut")
    with pytest.raises(TailorkdError) as info:
        load_prepared(out)
    message = str(info.value)
    assert message.startswith(f"{out / name}: not {kind}") and "\n" not in message
    assert message.endswith("run `tailorkd prepare RECIPE --force` to make the splits again from the sources")


def test_prepare_names_a_damaged_pool_and_force_makes_it_again(tmp_path, capsys):
    from tailorkd.cli import main
    from test_pipeline import make_recipe

    recipe = make_recipe(tmp_path, "unused-teacher", "unused-student")
    assert main(["prepare", recipe]) == 0
    pool = tmp_path / "run" / "data" / "pool.arrow"
    whole = pool.read_bytes()
    pool.write_bytes(b"not an arrow file")
    capsys.readouterr()
    assert main(["prepare", recipe]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {pool}: not an Arrow file (") and "--force" in error and "\n" not in error
    assert main(["prepare", recipe, "--force"]) == 0
    assert pool.read_bytes() == whole  # the same splits: made again from the same sources


def test_no_usable_rows(tmp_path):
    (tmp_path / "x.txt").write_text("a@gone\nb@gone\n", encoding="utf-8")
    cfg = DataConfig.model_validate({"sources": [{"path": "x.txt", "labels": {"gone": None}}]})
    with pytest.raises(TailorkdError, match="no usable rows"):
        load_records(cfg, TASK, tmp_path)


def test_detect_language_fills_only_missing_languages_and_is_repeatable():
    from tailorkd.data.splits import detect_languages

    frame = pd.DataFrame({
        "id": ["a", "b", "c", "d"],
        "text": ["Terremoto in Emilia, crollate due chiese e una torre", "Flood warning for Brisbane tonight, stay "
                 "away from the river", "http://t.co/x", "Ya viene el huracán, prepárense"],
        "language": [None, None, None, "es"],
    })
    first = detect_languages(frame)
    assert first["language"].tolist() == ["it", "en", "unknown", "es"]
    assert detect_languages(frame)["language"].tolist() == first["language"].tolist()
    assert frame["language"].isna().sum() == 3  # the input is not changed


def test_prepare_data_records_detected_languages_per_split(tmp_path):
    raw = write_sources(tmp_path)
    cfg = DataConfig.model_validate({**raw, "detect_language": True})
    prepared = prepare_data(cfg, TASK, tmp_path / "out", seed=13, base_dir=tmp_path)
    assert prepared.test["language"].notna().all() and prepared.pool.to_pandas()["language"].notna().all()
    langs = prepared.stats["languages"]
    assert sum(langs["test"].values()) == len(prepared.test) and set(langs) == {"seed", "pool", "test"}
    # Off by default; it is part of the data section, so it changes what the splits were made with.
    assert DataConfig.model_validate(raw).model_dump()["detect_language"] is False
    assert cfg.model_dump()["detect_language"] is True
