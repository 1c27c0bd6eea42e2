"""The corpus stage in a run: relevance to the expert seeds (real MiniLM on real BBC articles), the same output
on local processes and on Ray, the hand-off to prepare, the CLI and the report's section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fake_report import fake_report
from tailorkd.cli import main
from tailorkd.corpus import build_corpus, iter_pool, read_stamp
from tailorkd.data import BBCNewsSource, read_source
from tailorkd.data.splits import frame_rows
from tailorkd.errors import TailorkdError
from tailorkd.evaluation.report import write_report
from tailorkd.models.embedder import embed_texts
from tailorkd.recipe import load_recipe
from tailorkd.recipe.corpus import CorpusConfig
from tailorkd.run_dir import RunDir
from tailorkd.stages.prepare import load_data, load_split, prepare


def pool_table(out: Path) -> pa.Table:
    return pa.concat_tables([pa.Table.from_batches([b]) for b in iter_pool(out)])


@pytest.fixture(scope="module")
def bbc() -> dict[str, list[dict]]:
    by_topic: dict[str, list[dict]] = {}
    for row in read_source(BBCNewsSource(kind="bbc_news"), Path(".")).rows:
        by_topic.setdefault(row["label"], []).append(row)
    return by_topic


def test_stage_two_keeps_texts_like_the_seeds_with_a_threshold_chosen_on_them(bbc, tmp_path):
    seeds = [r["text"] for r in bbc["business"][:6]]
    corpus = bbc["business"][10:30] + bbc["sport"][:20] + bbc["tech"][:20]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "topic": r["label"]}) + "\n"
                                              for r in corpus))
    cfg = CorpusConfig.model_validate({"inputs": [{"path": "c.jsonl", "columns": {"id": "id", "topic": "topic"}}],
                                       "workers": 1, "length": {"max_chars": None},
                                       "relevance": {"against": "seeds", "seed_quantile": 0.05, "max_length": 128}})
    funnel = build_corpus(cfg, tmp_path / "out", base_dir=tmp_path, seeds=seeds)
    relevance = funnel["relevance"]
    # The threshold is the 5% quantile of each seed's highest similarity to the other seeds.
    x = embed_texts(seeds, "minilm-l6", max_length=128)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    assert relevance["threshold"] == pytest.approx(np.quantile(sims.max(axis=1), 0.05), abs=1e-5)
    assert relevance["seeds"] == 6 and relevance["seeds_below_threshold"] == 1 and "quantile" in relevance["chosen_by"]
    kept = {topic: counts["relevance"] for topic, counts in funnel["per_topic"].items()}
    assert kept["business"] >= 14 and kept["sport"] <= 1 and kept["tech"] <= 4, kept
    assert funnel["dropped"]["irrelevant"] == funnel["overall"]["near_dedup"] - sum(kept.values())
    pool = pool_table(tmp_path / "out").to_pandas()
    assert (pool["relevance"] >= relevance["threshold"]).all()
    assert funnel["seconds"]["embed (workers)"] > 0 and relevance["pool_scores"]["median"] < relevance["threshold"]

    # Without seeds an automatic threshold cannot be chosen.
    with pytest.raises(TailorkdError, match="comparing with the seeds needs the expert seeds"):
        build_corpus(cfg, tmp_path / "none", base_dir=tmp_path, seeds=None)


def _tiny_corpus(folder: Path) -> None:
    folder.mkdir()
    rows = [{"id": f"{i}", "text": f"Report {i % 7}: port congestion delays container ships near berth {i % 7}.",
             "topic": ["ports", "chips"][i % 2]} for i in range(60)]
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    pq.write_table(pa.Table.from_pylist(rows[30:]), folder / "b.parquet")
    (folder / "c.csv").write_text("id,text,topic\n1,\"Chip, wafer shortage hits carmakers again\",chips\n"
                                  "2,too,many,fields\n")


def test_local_and_ray_engines_write_the_same_pool(tmp_path):
    ray = pytest.importorskip("ray")
    _tiny_corpus(tmp_path / "in")
    base = {"inputs": [{"path": "in", "columns": {"id": "id", "topic": "topic"}}], "batch_size": 8, "shard_rows": 10,
            "dedup": {"shingle_size": 2}}
    local = build_corpus(CorpusConfig.model_validate({**base, "workers": 2}), tmp_path / "local", base_dir=tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = build_corpus(CorpusConfig.model_validate({**base, "engine": "ray"}), tmp_path / "ray",
                              base_dir=tmp_path)
        # A user's mistake found in an actor comes back as the one-line error, not Ray's traceback.
        (tmp_path / "x.csv").write_text("id,body\n1,hello\n")
        with pytest.raises(TailorkdError, match=r"x.csv\): column 'text' \(corpus.inputs.0.columns.text\)") as info:
            build_corpus(CorpusConfig.model_validate({"inputs": [{"path": "x.csv"}], "engine": "ray"}),
                         tmp_path / "bad", base_dir=tmp_path)
        assert "\n" not in str(info.value)
    finally:
        ray.shutdown()
    assert on_ray["engine"] == "ray" and on_ray["workers"] == 2  # default: the cluster's CPUs
    assert local["fingerprint"] == on_ray["fingerprint"]
    for key in ("overall", "per_topic", "per_language", "dropped", "cleaning", "dedup", "shards"):
        assert local[key] == on_ray[key], key
    assert local["dropped"]["unreadable"] == 1 and local["dedup"]["exact"] + local["dedup"]["near"] > 0
    for name in [s["file"] for s in local["shards"]] + ["duplicates.parquet"]:
        assert pq.read_table(tmp_path / "local" / name).equals(pq.read_table(tmp_path / "ray" / name)), name
    assert (tmp_path / "local" / "rejects.jsonl").read_text() == (tmp_path / "ray" / "rejects.jsonl").read_text()


def test_ray_missing_is_a_one_line_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    _tiny_corpus(tmp_path / "in")
    monkeypatch.setattr(builtins, "__import__", no_ray)
    cfg = CorpusConfig.model_validate({"inputs": [{"path": "in"}], "engine": "ray"})
    with pytest.raises(TailorkdError, match=r"pip install 'tailorkd\[ray\]'"):
        build_corpus(cfg, tmp_path / "out", base_dir=tmp_path)


# -- in a run ------------------------------------------------------------------------------------------------
def write_recipe(tmp_path: Path, corpus: dict | None) -> Path:
    labelled = [{"id": f"{label}-{i}", "text": f"Labelled {label} text number {i} about {label} matters.",
                 "label": label} for label in ("ports", "chips") for i in range(12)]
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    raw = {
        "name": "t", "output_dir": str(tmp_path / "run"),
        "task": {"name": "t", "description": "d", "labels": [{"name": "ports"}, {"name": "chips"}]},
        "data": {"sources": [{"path": "labelled.jsonl"}], "splits": {"seed_per_class": 2, "test_size": 6}},
        "prompt": {"instruction": "Classify.", "shots": 2},
        "teacher": {"model": "m"}, "student": {"model": "s"},
    }
    if corpus is not None:
        raw["corpus"] = corpus
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_prepare_takes_the_pool_from_the_corpus_without_seed_or_test_texts(tmp_path, capsys):
    rows = [{"id": f"raw{i}", "text": f"A raw news text number {i} about berths, ships and wafers {i * 7}."}
            for i in range(40)]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_recipe(tmp_path, {"inputs": [{"path": "raw.jsonl", "columns": {"id": "id"}}], "workers": 1,
                                   "shard_rows": 15, "dedup": {"near": False}})
    recipe = load_recipe(path)
    # A labelled text that is also in the raw dump must not reach the pool: seeds and test stay unseen.
    labelled = pd.read_json(tmp_path / "labelled.jsonl", lines=True)
    leak = labelled["text"].tolist()
    (tmp_path / "raw.jsonl").write_text((tmp_path / "raw.jsonl").read_text()
                                        + "".join(json.dumps({"id": f"leak{i}", "text": t}) + "\n"
                                                  for i, t in enumerate(leak)))
    assert main(["corpus", str(path)]) == 0
    assert "corpus funnel" in capsys.readouterr().out
    run = RunDir(recipe)
    assert read_stamp(run.corpus_dir)["rows"] == 64 and len(run.corpus_shards) == 5 and run.funnel.is_file()
    data = prepare(recipe)
    seed_test = set(data.seed["text"]) | set(data.test["text"])
    pool = data.pool.to_pandas()
    assert len(seed_test) == 10 and not seed_test & set(pool["text"])
    assert len(data.pool) == 64 - 10 and pool["id"].str.startswith("corpus:raw.jsonl:").all()
    assert data.stats["corpus"]["left_out_as_seed_or_test_texts"] == 10
    assert data.stats["corpus"]["pool_from_sources"] == 0 and data.stats["splits"]["pool"]["rows"] == 54
    assert set(data.pool.columns) == {"id", "text", "title", "language", "date", "source", "origin"}
    assert pool["origin"].str.match(r"raw\.jsonl:\d+$").all()
    # The few-shot examples of classify / export read the seed split alone.
    for split in ("seed", "test"):
        assert frame_rows(load_split(recipe, split)) == data.rows(split)

    # pool: add keeps the labelled rows' leftover in the pool too; pool_size samples the whole.
    added = prepare(load_recipe(path, ["corpus.pool=add", "data.splits.pool_size=30"]))
    assert len(added.pool) == 30 and added.stats["corpus"]["pool_from_sources"] > 0
    # A new file in the corpus makes load_data build the corpus and prepare again.
    (tmp_path / "raw2.jsonl").write_text(json.dumps({"id": "new", "text": "A brand new article about ports."}) + "\n")
    newer = load_recipe(path, ["corpus.inputs.0.path=raw*.jsonl"])
    assert len(load_data(newer).pool) == 55
    assert len(load_data(newer).pool) == 55  # up to date now


def test_a_recipe_without_corpus_keeps_its_fingerprints(tmp_path, capsys):
    path = write_recipe(tmp_path, None)
    plain = RunDir(load_recipe(path))
    (tmp_path / "raw.jsonl").write_text('{"text": "x"}\n')
    with_corpus = RunDir(load_recipe(write_recipe(tmp_path, {"inputs": [{"path": "raw.jsonl"}]})))
    for stage in ("prepare", "label", "distill"):
        assert plain.fingerprint(stage) != with_corpus.fingerprint(stage)
    workers = RunDir(load_recipe(path.parent / "recipe.yaml", ["corpus.workers=3", "corpus.engine=ray"]))
    assert workers.fingerprint("prepare") == with_corpus.fingerprint("prepare")
    assert "corpus" not in plain.section_fingerprints("prepare")
    # Runs made before the corpus section existed keep their fingerprints (nothing is redone on upgrade).
    from tailorkd.recipe.fingerprint import sections_hash
    from tailorkd.run_dir import STAGE_INPUTS

    for stage in ("prepare", "label", "distill"):
        before = {name: fields for name, fields in STAGE_INPUTS[stage].items() if name != "corpus"}
        assert plain.fingerprint(stage) == sections_hash(plain.recipe, before)
    assert main(["corpus", str(write_recipe(tmp_path, None))]) == 2
    assert "the recipe has no corpus section" in capsys.readouterr().err


def test_report_has_a_corpus_section(tmp_path):
    funnel = {"steps": ["read", "cleaned", "relevance"], "overall": {"read": 10, "cleaned": 9, "relevance": 6},
              "kept": 6, "kept_share": 0.6, "per_topic": {"a": {"read": 4, "cleaned": 4, "relevance": 3},
                                                          "b": {"read": 6, "cleaned": 5, "relevance": 3}},
              "per_language": {"en": {"read": 10, "cleaned": 9, "relevance": 6}},
              "relevance": {"threshold": 0.25, "chosen_by": "fixed in the recipe"}}
    # write_report finds the run's funnel when the recipe has a corpus section.
    recipe = load_recipe(write_recipe(tmp_path, {"inputs": [{"path": "raw.jsonl"}]}))
    RunDir(recipe).funnel.parent.mkdir(parents=True)
    RunDir(recipe).funnel.write_text(json.dumps(funnel))
    report = write_report(fake_report(), recipe, RunDir(recipe).root)
    assert report["corpus"]["kept"] == 6
    text = RunDir(recipe).report_md.read_text()
    section = text[text.index("## Corpus"):]
    section = section[:section.index("\n## ", 1)]
    assert "6 of 10 texts kept (60.0%)" in section and "threshold 0.250" in section
    assert "| step | all | a | b |" in section and "| relevance | 6 | 3 | 3 |" in section
    assert "| step | all | en |" in section
    plain = load_recipe(write_recipe(tmp_path, None))
    assert "corpus" not in write_report(fake_report(), plain, RunDir(plain).root)  # a stale funnel is not shown
    assert "## Corpus" not in RunDir(plain).report_md.read_text()
