"""Reading files of each format: column and label mappings, rejects with their file and line, and the
whole-file errors."""

import json
from pathlib import Path

import pandas as pd
import pytest

from tailorkd.data import DataConfig, read_source
from tailorkd.data.config import ColumnMap
from tailorkd.data.readers import MappingLabeler, read_file
from tailorkd.errors import TailorkdError

TASK = ["risk", "caution", "safe"]


def source(spec: dict):
    return DataConfig.model_validate({"sources": [spec]}).sources[0]


def read(spec: dict, base: Path, task=TASK, max_reject_fraction=0.9, key="data.sources.0"):
    return read_source(source(spec), base, key=key, task_labels=task, max_reject_fraction=max_reject_fraction)


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def by_line(rejects):
    return {r["line"]: r for r in rejects}


# ---------------------------------------------------------------------------------------------- JSONL


def test_jsonl_column_and_label_mapping(tmp_path):
    lines = [
        {
            "uid": 7,
            "body": "  Flood warning for the valley  ",
            "head": "Warning",
            "lang": "en",
            "day": "2024-01-02",
            "cat": "danger",
        },
        {"uid": "a8", "body": "All clear", "cat": "ok", "lang": ""},
        {"uid": 9, "body": "Cat pictures", "cat": "offtopic"},
        {"uid": 10, "body": "Sandbags available at the hall", "cat": "advice"},
        {"uid": 11, "body": "No label on this one"},
        {"uid": 12, "body": "Blank label", "cat": "  "},
    ]
    write(tmp_path / "news.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    spec = {
        "path": "news.jsonl",
        "columns": {"text": "body", "id": "uid", "title": "head", "language": "lang", "date": "day", "label": "cat"},
        "labels": {"danger": "risk", "ok": "safe", "advice": "caution", "offtopic": None},
    }
    res = read(spec, tmp_path)
    assert res.rejects == []
    assert res.excluded == {"offtopic": 1}
    assert res.unlabelled == 2
    assert res.records == 6
    first, second, third, no_label, blank = res.rows
    assert first == {
        "id": "7",
        "text": "Flood warning for the valley",
        "title": "Warning",
        "language": "en",
        "date": "2024-01-02",
        "label": "risk",
        "source": "news",
        "origin": f"{tmp_path / 'news.jsonl'}:1",
    }
    assert second["id"] == "a8" and second["label"] == "safe" and second["language"] is None
    assert second["title"] is None and second["date"] is None
    assert third["label"] == "caution" and third["origin"].endswith("news.jsonl:4")
    assert no_label["label"] is None and blank["label"] is None


def test_jsonl_rejects_with_lines(tmp_path):
    raw = (
        b'{"text": "good one", "label": "risk"}\n'  # 1
        b"\n"  # 2: blank, skipped
        b'{"text": "broken", "label": \n'  # 3: malformed
        b'["a", "list"]\n'  # 4: not an object
        b'{"label": "risk"}\n'  # 5: no text
        b'{"text": "   ", "label": "risk"}\n'  # 6: empty text
        b'{"text": "odd label", "label": "weird"}\n'  # 7: not in mapping
        b'{"text": "caf\xe9 latin-1 byte", "label": "safe"}\n'  # 8: undecodable as utf-8
        b'{"text": ["x"], "label": "safe"}\n'  # 9: text not a string
        b'{"text": "fine again", "label": "safe"}\r\n'  # 10: CRLF is fine
    )
    (tmp_path / "r.jsonl").write_bytes(raw)
    res = read({"path": "r.jsonl", "labels": {"risk": "risk", "safe": "safe"}}, tmp_path)
    assert [r["id"] for r in res.rows] == ["r:1", "r:10"]
    rejects = by_line(res.rejects)
    assert sorted(rejects) == [3, 4, 5, 6, 7, 8, 9]
    assert rejects[3]["reason"].startswith("malformed JSON")
    assert "not a JSON object" in rejects[4]["reason"]
    assert rejects[5]["reason"] == "missing text (column 'text')"
    assert rejects[6]["reason"] == "empty text (column 'text')"
    assert "'weird'" in rejects[7]["reason"] and "not in the labels mapping" in rejects[7]["reason"]
    assert rejects[8]["reason"] == "undecodable bytes for encoding utf-8"
    assert "list" in rejects[9]["reason"]
    for r in res.rejects:
        assert r["file"] == str(tmp_path / "r.jsonl")
        assert r["position"] == "line"
        assert set(r) == {"file", "line", "position", "reason", "raw"}
    assert rejects[7]["raw"] == '{"text": "odd label", "label": "weird"}'


def test_json_nested_too_deeply_is_a_reject_not_a_traceback(tmp_path):
    rows = [json.dumps({"text": "first"}), "[" * 100_000, '{"a":' * 50_000, json.dumps({"text": "last"})]
    write(tmp_path / "deep.jsonl", "\n".join(rows) + "\n")
    res = read({"path": "deep.jsonl", "columns": {"label": None}}, tmp_path)
    assert [r["text"] for r in res.rows] == ["first", "last"]
    assert [(r["line"], r["reason"]) for r in res.rejects] == [(2, "malformed JSON: nested too deeply"),
                                                              (3, "malformed JSON: nested too deeply")]


def test_lone_surrogates_reject_their_row_or_are_shown_as_replacement_characters(tmp_path):
    rows = ['{"id": "a\\ud800", "text": "Id with a lone surrogate"}', '{"id": "b", "text": "Text \\ud800 here"}',
            '{"id": "c", "text": "Fine", "title": "t\\udc00", "date": "2024\\ud83d"}']
    write(tmp_path / "s.jsonl", "\n".join(rows) + "\n")
    res = read({"path": "s.jsonl", "columns": {"id": "id", "title": "title", "date": "date", "label": None}}, tmp_path)
    assert [(r["line"], r["reason"]) for r in res.rejects] == [
        (1, "id (column 'id') holds a lone surrogate (not valid Unicode)"),
        (2, "text holds a lone surrogate (not valid Unicode)")]
    assert [(r["id"], r["title"], r["date"]) for r in res.rows] == [("c", "t\ufffd", "2024\ufffd")]


def test_raw_is_cut_to_200_chars(tmp_path):
    write(tmp_path / "long.jsonl", json.dumps({"text": "", "pad": "x" * 500}) + "\n" + '{"text": "ok"}\n')
    res = read({"path": "long.jsonl", "columns": {"label": None}}, tmp_path)
    assert len(res.rejects[0]["raw"]) == 200


def test_jsonl_missing_column_everywhere_is_a_file_error(tmp_path):
    write(tmp_path / "m.jsonl", '{"body": "a", "label": "risk"}\n{"body": "b", "label": "safe", "x": 1}\n')
    with pytest.raises(TailorkdError) as info:
        read({"path": "m.jsonl"}, tmp_path)
    msg = str(info.value)
    assert "'text'" in msg and "columns.text" in msg and str(tmp_path / "m.jsonl") in msg
    assert "'body'" in msg and "'label'" in msg and "'x'" in msg


def test_jsonl_that_is_not_jsonl_is_too_many_rejects(tmp_path):
    write(tmp_path / "csv.jsonl", "text,label\nhello,risk\n")
    with pytest.raises(TailorkdError, match=r"(?s)2 of 2 records.*line 1: malformed JSON"):
        read({"path": "csv.jsonl"}, tmp_path)


def test_identity_labels_must_be_task_labels(tmp_path):
    write(
        tmp_path / "i.jsonl",
        '{"text": "a", "label": "risk"}\n{"text": "b", "label": "RISK"}\n{"text": "c", "label": "safe"}\n',
    )
    res = read({"path": "i.jsonl"}, tmp_path)
    assert [r["label"] for r in res.rows] == ["risk", "safe"]
    (rej,) = res.rejects
    assert rej["line"] == 2 and "'RISK' is not a task label" in rej["reason"] and "labels:" in rej["reason"]


def test_mapping_to_a_label_outside_the_task_is_an_error(tmp_path):
    write(tmp_path / "t.jsonl", '{"text": "a", "label": "x"}\n')
    with pytest.raises(TailorkdError) as info:
        read({"path": "t.jsonl", "labels": {"x": "danger"}}, tmp_path)
    msg = str(info.value)
    assert "data.sources.0.labels" in msg and "'t'" in msg and "'danger'" in msg and "risk, caution, safe" in msg


def test_numeric_labels_match_text_keys(tmp_path):
    write(tmp_path / "n.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1.0}\n{"text": "c", "label": "1"}\n')
    res = read({"path": "n.jsonl", "labels": {0: "safe", 1: "risk"}}, tmp_path)
    assert [r["label"] for r in res.rows] == ["safe", "risk", "risk"]


# ---------------------------------------------------------------------------------------------- CSV / TSV


CSV_TEXT = (
    " id , text ,label\n"  # 1: header names get stripped
    '1,"plain text",risk\n'  # 2
    '2,"a quoted text\nthat spans\nthree lines",safe\n'  # 3-5
    "3,after the multi-line record,caution\n"  # 6
    "\n"  # 7: blank
    "4,too,many,fields\n"  # 8
    '5,"comma, inside quotes",safe\n'  # 9
    "6,,risk\n"  # 10: empty text
    "7\n"  # 11: too few fields
    "8,last one,unknown\n"  # 12: label not in task labels
)


def test_csv_multiline_record_and_line_numbers(tmp_path):
    write(tmp_path / "c.csv", CSV_TEXT)
    res = read({"path": "c.csv", "columns": {"id": "id"}}, tmp_path)
    rows = {r["id"]: r for r in res.rows}
    assert sorted(rows) == ["1", "2", "3", "5"]
    assert rows["2"]["text"] == "a quoted text\nthat spans\nthree lines"
    assert rows["1"]["origin"].endswith("c.csv:2")
    assert rows["2"]["origin"].endswith("c.csv:3")
    assert rows["3"]["origin"].endswith("c.csv:6")
    assert rows["5"]["origin"].endswith("c.csv:9") and rows["5"]["text"] == "comma, inside quotes"
    rejects = by_line(res.rejects)
    assert sorted(rejects) == [8, 10, 11, 12]
    assert rejects[8]["reason"] == "wrong number of fields: expected 3, got 4"
    assert rejects[8]["raw"] == "4,too,many,fields"
    assert rejects[10]["reason"].startswith("empty text")
    assert rejects[11]["reason"] == "wrong number of fields: expected 3, got 1"
    assert "'unknown'" in rejects[12]["reason"]


def test_csv_line_numbers_match_the_file(tmp_path):
    """Every row's origin line holds the start of its record, CRLF endings included."""
    texts = [f"row {i}" if i % 3 else f'"row {i}\r\nsecond line"' for i in range(30)]
    body = "text,label\r\n" + "".join(f"{t},safe\r\n" for t in texts)
    path = write(tmp_path / "crlf.csv", body)
    res = read({"path": "crlf.csv"}, tmp_path)
    assert len(res.rows) == 30 and not res.rejects
    physical = path.read_text(encoding="utf-8").split("\n")
    for row in res.rows:
        line = int(row["origin"].rsplit(":", 1)[1])
        assert physical[line - 1].lstrip('"').startswith(row["text"].split("\n")[0])
    assert res.rows[0]["text"] == "row 0\nsecond line"  # line ends inside a text become "\n"


def test_csv_undecodable_record_and_latin1_encoding(tmp_path):
    data = "text,label\ncaf\xe9 ol\xe9,safe\nplain,risk\n".encode("latin-1")
    (tmp_path / "l.csv").write_bytes(data)
    res = read({"path": "l.csv"}, tmp_path)
    assert [r["text"] for r in res.rows] == ["plain"]
    assert res.rejects[0]["line"] == 2 and res.rejects[0]["reason"] == "undecodable bytes for encoding utf-8"
    res = read({"path": "l.csv", "encoding": "latin-1"}, tmp_path)
    assert [r["text"] for r in res.rows] == ["café olé", "plain"]


def test_csv_bom_and_semicolon_separator(tmp_path):
    (tmp_path / "b.csv").write_bytes("\ufefftext;label\nhello;risk\n".encode("utf-8"))
    res = read({"path": "b.csv", "separator": ";"}, tmp_path)
    assert res.rows[0]["text"] == "hello" and res.rows[0]["label"] == "risk"


def test_missing_csv_column_error_lists_the_columns(tmp_path):
    write(tmp_path / "h.csv", "Tweet ID,Tweet Text,Category\n1,hello,risk\n")
    with pytest.raises(TailorkdError) as info:
        read({"path": "h.csv", "columns": {"text": "Tweet Text", "id": "Tweet ID"}}, tmp_path)
    msg = str(info.value)
    assert "column 'label' (columns.label)" in msg
    assert str(tmp_path / "h.csv") in msg and "data.sources.0" in msg
    assert "'Tweet ID', 'Tweet Text', 'Category'" in msg
    assert "columns.label: null" in msg


def test_csv_without_labels(tmp_path):
    write(tmp_path / "u.csv", "text\nfirst\nsecond\n")
    res = read({"path": "u.csv", "columns": {"label": None}}, tmp_path)
    assert [(r["id"], r["label"]) for r in res.rows] == [("u:2", None), ("u:3", None)]
    assert res.unlabelled == 2


def test_tsv(tmp_path):
    write(tmp_path / "t.tsv", "label\tsentence\nrisk\tstorm, heavy rain\nsafe\tsunny\textra\ncaution\tcareful\n")
    res = read({"path": "t.tsv", "columns": {"text": "sentence"}}, tmp_path)
    assert [(r["text"], r["label"]) for r in res.rows] == [("storm, heavy rain", "risk"), ("careful", "caution")]
    assert res.rejects[0]["line"] == 3 and "expected 2, got 3" in res.rejects[0]["reason"]


# ---------------------------------------------------------------------------------------------- Parquet


def test_parquet(tmp_path):
    frame = pd.DataFrame(
        {
            "doc": ["first", None, "third", "  ", "fifth"],
            "y": [1, 0, 2, 1, 0],
            "key": ["k1", "k2", "k3", "k4", "k5"],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", None, "2024-01-04", "2024-01-05"]),
        }
    )
    frame.to_parquet(tmp_path / "p.parquet")
    spec = {
        "path": "p.parquet",
        "columns": {"text": "doc", "label": "y", "id": "key", "date": "when"},
        "labels": {0: "safe", 1: "risk"},
    }
    res = read(spec, tmp_path)
    assert [(r["id"], r["label"]) for r in res.rows] == [("k1", "risk"), ("k5", "safe")]
    assert res.rows[0]["date"].startswith("2024-01-01")
    assert res.rows[1]["origin"].endswith("p.parquet:5")
    rejects = by_line(res.rejects)
    assert sorted(rejects) == [2, 3, 4]
    assert all(r["position"] == "row" for r in res.rejects)
    assert rejects[2]["reason"].startswith("missing text")
    assert "'2'" in rejects[3]["reason"]
    assert rejects[4]["reason"].startswith("empty text")
    assert '"key": "k3"' in rejects[3]["raw"]


def test_parquet_missing_column(tmp_path):
    pd.DataFrame({"text": ["a"], "category": ["risk"]}).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(TailorkdError, match=r"column 'label' \(columns.label\).*'text', 'category'"):
        read({"path": "q.parquet"}, tmp_path)


def test_not_a_parquet_file(tmp_path):
    write(tmp_path / "fake.parquet", "text,label\n")
    with pytest.raises(TailorkdError, match="as Parquet"):
        read({"path": "fake.parquet"}, tmp_path)


# ---------------------------------------------------------------------------------------------- lines


def test_lines_split_on_the_last_separator(tmp_path):
    write(
        tmp_path / "s.txt",
        "Mail me at x@y.org about it@safe\n"  # 1
        "no separator here\n"  # 2
        "\n"  # 3
        "Profit fell@risk\r\n"  # 4
        "@caution\n"  # 5: empty text
        "Unlabelled line@\n"  # 6: empty label -> unlabelled
        "Shares rose@positive",  # 7: no final newline
    )
    res = read({"path": "s.txt", "labels": {"safe": "safe", "risk": "risk", "caution": "caution"}}, tmp_path)
    assert [(r["id"], r["text"], r["label"]) for r in res.rows] == [
        ("s:1", "Mail me at x@y.org about it", "safe"),
        ("s:4", "Profit fell", "risk"),
        ("s:6", "Unlabelled line", None),
    ]
    rejects = by_line(res.rejects)
    assert sorted(rejects) == [2, 5, 7]
    assert rejects[2]["reason"].startswith("wrong number of fields: no separator '@'")
    assert rejects[5]["reason"].startswith("empty text")
    assert "'positive'" in rejects[7]["reason"]


def test_lines_other_separator_and_no_labels(tmp_path):
    write(tmp_path / "a.txt", "one ||| risk\ntwo ||| safe\n")
    res = read({"path": "a.txt", "separator": " ||| "}, tmp_path)
    assert [(r["text"], r["label"]) for r in res.rows] == [("one", "risk"), ("two", "safe")]
    res = read({"path": "a.txt", "columns": {"label": None}}, tmp_path)
    assert [(r["text"], r["label"]) for r in res.rows] == [("one ||| risk", None), ("two ||| safe", None)]


def test_lines_latin1_file(tmp_path):
    (tmp_path / "f.txt").write_bytes("Net sales \xa3 5m@safe\n".encode("latin-1"))
    res = read({"path": "f.txt", "encoding": "latin-1"}, tmp_path)
    assert res.rows[0]["text"] == "Net sales £ 5m"


# ---------------------------------------------------------------------------------------------- whole-file errors


def test_too_many_rejects_names_the_file_and_shows_rejects(tmp_path):
    write(tmp_path / "bad.txt", "good@risk\nbad one\nbad two\nbad three\n")
    with pytest.raises(TailorkdError) as info:
        read({"path": "bad.txt"}, tmp_path, max_reject_fraction=0.5)
    msg = str(info.value)
    assert str(tmp_path / "bad.txt") in msg
    assert "3 of 4 records (75%)" in msg and "max_reject_fraction=0.5" in msg
    assert "line 2: wrong number of fields" in msg and "'bad one'" in msg and "line 4" in msg
    # at the limit it is fine
    res = read({"path": "bad.txt"}, tmp_path, max_reject_fraction=0.75)
    assert len(res.rows) == 1


def test_excluded_rows_are_not_rejects(tmp_path):
    write(tmp_path / "e.txt", "a@x\nb@x\nc@x\nd@risk\n")
    res = read({"path": "e.txt", "labels": {"x": None, "risk": "risk"}}, tmp_path, max_reject_fraction=0.0)
    assert res.excluded == {"x": 3} and not res.rejects and len(res.rows) == 1


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(TailorkdError) as info:
        read({"path": "nowhere.csv"}, tmp_path, key="data.sources.3")
    assert "data.sources.3.path" in str(info.value) and str(tmp_path / "nowhere.csv") in str(info.value)


def test_empty_file_is_an_error(tmp_path):
    write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(TailorkdError, match="no records"):
        read({"path": "empty.jsonl"}, tmp_path)
    write(tmp_path / "header.csv", "text,label\n")
    with pytest.raises(TailorkdError, match="no records"):
        read({"path": "header.csv"}, tmp_path)


def test_absolute_path_ignores_base_dir(tmp_path):
    path = write(tmp_path / "abs.jsonl", '{"text": "x", "label": "safe"}\n')
    res = read({"path": str(path)}, Path("/nonexistent"))
    assert res.rows[0]["text"] == "x"


def test_read_file_directly_with_id_builder(tmp_path):
    path = write(tmp_path / "d.csv", "k,t\n1,one\n2,two\n")
    res = read_file(
        path,
        "csv",
        columns=ColumnMap(text="t", id="k", label=None),
        labeler=MappingLabeler("k", {"1": "a", "2": None}),
        source_name="d",
        make_id=lambda raw, line: f"d/{raw}@{line}",
        constants={"language": "fi"},
    )
    assert [(r["id"], r["label"], r["language"]) for r in res.rows] == [("d/1@2", "a", "fi")]
    assert res.excluded == {"2": 1}
