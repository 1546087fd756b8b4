"""The one JSON Lines reader behind corpus files, labelled files and metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from training.data.corpus import DataError, iter_documents
from training.data.jsonl import read_jsonl
from training.data.labelled import LabelledDataError, read_labelled
from training.run.metrics import read_metrics


def test_lines_are_numbered_from_one_and_blank_ones_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a dog"}\n\n   \n[1, 2]\n"x"\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"text": "a dog"}), (4, [1, 2]), (5, "x")]


def test_a_bad_line_is_the_callers_error_naming_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(KeyError, match=r"c\.jsonl:2: invalid JSON \(Expecting value\)"):
        list(read_jsonl(path, error=KeyError))
    # Each reader raises its own domain error with the same words.
    with pytest.raises(DataError, match=r"c\.jsonl:2: invalid JSON"):
        list(iter_documents(path))
    labelled = tmp_path / "l.jsonl"
    labelled.write_text('{"label": "x", "text": "hi"}\nnope\n', encoding="utf-8")
    with pytest.raises(LabelledDataError, match=r"l\.jsonl:2: invalid JSON"):
        read_labelled(labelled)


def test_metrics_skip_a_torn_line_and_a_missing_file_has_none(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "train_lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1}]
    assert read_metrics(tmp_path / "nothing.jsonl") == []


def test_a_line_separator_inside_a_json_string_does_not_split_the_record(tmp_path):
    # U+2028 is legal unescaped inside a JSON string; only "\n" ends a JSON Lines record.
    path = tmp_path / "l.jsonl"
    rows = [{"label": "x", "text": "one\u2028two"}, {"label": "y", "text": "three"}]
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    assert [e.text for e in read_labelled(path)] == ["one\u2028two", "three"]
