"""data_utils' row validation (wrong-typed fields, labels, invalid UTF-8, WSC/ReCoRD structure) and
data_fingerprint. Every case writes its own small data folder in the official layout under tmp_path: no ../shared."""
import json
import sys
import types

import pytest

import data_utils as D
from data_utils import DataError


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(*objs):
    return "".join(json.dumps(o) + "\n" for o in objs)


def _refused(task_name, split, data_dir, *needles):
    """load_split raises a one-line DataError holding every needle; returns its message."""
    with pytest.raises(DataError) as e:
        D.load_split(D.get_task(task_name), split, str(data_dir))
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


CB_OK = {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}


# ------------------------------------------------------------------------------------------ wrong-typed text fields
@pytest.mark.parametrize("value, found", [(None, "null"), (["a", "b"], "list"), ({"t": "x"}, "dict"),
                                          (3, "int 3"), (2.5, "float 2.5"), (True, "bool True")])
def test_cb_text_field_of_wrong_type(tmp_path, value, found):
    path = _write(tmp_path, "super_glue/CB/train.jsonl", _jsonl(CB_OK, {**CB_OK, "premise": value, "idx": 1}))
    _refused("cb", "train", tmp_path, f"{path} line 2", "'premise'", "idx 1", found, "expected a string")


def test_every_field_of_a_multi_field_task_is_checked(tmp_path):
    row = {"premise": "p", "choice1": "a", "choice2": "b", "question": None, "label": 0, "idx": 4}
    _write(tmp_path, "super_glue/COPA/val.jsonl", _jsonl(row))
    _refused("copa", "validation", tmp_path, "'question'", "idx 4", "null")


def test_multirc_answer_text_null(tmp_path):
    obj = {"idx": 0, "passage": {"text": "t", "questions": [
        {"idx": 0, "question": "q", "answers": [{"idx": 0, "text": "a", "label": 1},
                                                {"idx": 1, "text": None, "label": 0}]}]}}
    path = _write(tmp_path, "super_glue/MultiRC/train.jsonl", _jsonl(obj))
    _refused("multirc", "train", tmp_path, f"{path} line 1", "'answer'", "null")


def test_wic_offsets_must_be_integers(tmp_path):
    row = {"word": "w", "sentence1": "a w", "sentence2": "w b", "start1": 2, "end1": 3, "start2": "0",
           "end2": 1, "label": False, "idx": 9}
    _write(tmp_path, "super_glue/WiC/train.jsonl", _jsonl(row))
    _refused("wic", "train", tmp_path, "'start2'", "idx 9", "str '0'", "non-negative integer")


def test_tsv_text_fields_stay_strings_and_load(tmp_path):
    _write(tmp_path, "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tNone\t[1]\tentailment\n")
    (row,) = D.load_split(D.get_task("rte"), "train", str(tmp_path))
    assert row == {"sentence1": "None", "sentence2": "[1]", "idx": 0, "label": 0}  # text that says None is text


# ------------------------------------------------------------------------------------------ labels
def test_cb_boolean_label_is_refused(tmp_path):
    path = _write(tmp_path, "super_glue/CB/val.jsonl", _jsonl({**CB_OK, "label": True}))
    _refused("cb", "validation", tmp_path, f"{path} line 1", "'label'", "bool True", "'entailment'")


def test_copa_boolean_label_is_refused_but_int_loads(tmp_path):
    row = {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 1, "idx": 0}
    _write(tmp_path, "super_glue/COPA/train.jsonl", _jsonl(row))
    assert D.load_split(D.get_task("copa"), "train", str(tmp_path))[0]["label"] == 1
    _write(tmp_path, "super_glue/COPA/train.jsonl", _jsonl({**row, "label": False}))
    _refused("copa", "train", tmp_path, "'label'", "bool False")


@pytest.mark.parametrize("label", [None, 1.0, ["neutral"]])
def test_cb_label_of_another_type(tmp_path, label):
    _write(tmp_path, "super_glue/CB/train.jsonl", _jsonl({**CB_OK, "label": label}))
    _refused("cb", "train", tmp_path, "'label'", type(label).__name__ if label is not None else "null")


def test_boolq_boolean_labels_still_load(tmp_path):  # the official BoolQ/WiC/WSC/MultiRC files write booleans
    rows = [{"question": "q", "passage": "p", "idx": i, "label": b} for i, b in enumerate((True, False))]
    _write(tmp_path, "super_glue/BoolQ/val.jsonl", _jsonl(*rows))
    assert [r["label"] for r in D.load_split(D.get_task("boolq"), "validation", str(tmp_path))] == [1, 0]


@pytest.mark.parametrize("score", ["nan", "inf", "abc"])
def test_stsb_score_must_be_a_real_number(tmp_path, score):
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = _write(tmp_path, "glue/STS-B/dev.tsv", head + "0\tg\tf\ty\t0\ts\ts\ta\tb\t3.8\n"
                  + f"1\tg\tf\ty\t1\ts\ts\ta\tb\t{score}\n")
    _refused("stsb", "validation", tmp_path, f"{path} line 3", score)


def test_hub_rows_pass_the_same_check(monkeypatch):
    rows = [{"premise": "p", "hypothesis": "h", "label": 1, "idx": 0},
            {"premise": None, "hypothesis": "h", "label": 1, "idx": 1}]

    class Fake:
        def to_list(self):
            return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: Fake()))
    with pytest.raises(DataError) as e:
        D.load_split(D.get_task("cb"), "train")
    assert "\n" not in str(e.value) and "'premise'" in str(e.value) and "row 1" in str(e.value)
    rows[1] = {"premise": "p", "hypothesis": "h", "label": True, "idx": 1}  # a bool is not a class id
    with pytest.raises(DataError, match="'label' .* bool True"):
        D.load_split(D.get_task("cb"), "train")


def test_format_example_names_a_missing_field():
    with pytest.raises(DataError, match="cb row idx 3: missing field 'hypothesis'"):
        D.format_example(D.get_task("cb"), {"premise": "p", "label": 0, "idx": 3})


# ------------------------------------------------------------------------------------------ invalid UTF-8
def test_invalid_utf8_in_jsonl_names_line_and_byte(tmp_path):
    good = json.dumps(CB_OK).encode()
    path = _write(tmp_path, "super_glue/CB/train.jsonl", good + b"\n" + b'{"premise": "caf\xe9"' + b"\n")
    _refused("cb", "train", tmp_path, f"{path} line 2", "invalid UTF-8", "byte 17 of the line",
             f"byte offset {len(good) + 1 + 16}")


def test_invalid_utf8_in_tsv_names_line_and_byte(tmp_path):
    path = _write(tmp_path, "glue/RTE/dev.tsv",
                  b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\xff\tb\tentailment\n")
    _refused("rte", "validation", tmp_path, f"{path} line 3", "invalid UTF-8", "byte 4 of the line")


# ------------------------------------------------------------------------------------------ WSC and ReCoRD
WSC_OK = {"text": "Mark told Pete he was late .", "idx": 7, "label": True,
          "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 3, "span2_text": "he"}}


@pytest.mark.parametrize("task", ["wsc", "wsc_bool"])
@pytest.mark.parametrize("field, value", [("span1_index", "0"), ("span2_index", "3"), ("span2_index", -1),
                                          ("span1_index", True)])
def test_wsc_span_index_must_be_an_integer(tmp_path, task, field, value):
    row = {**WSC_OK, "target": {**WSC_OK["target"], field: value}}
    _write(tmp_path, "super_glue/WSC/train.jsonl", _jsonl(row))
    _refused(task, "train", tmp_path, f"'{field}'", "idx 7", "non-negative integer")


def test_wsc_text_null(tmp_path):
    _write(tmp_path, "super_glue/WSC/val.jsonl", _jsonl({**WSC_OK, "text": None}))
    _refused("wsc", "validation", tmp_path, "'text'", "idx 7", "null")


def test_wsc_valid_row_loads_and_formats(tmp_path):
    _write(tmp_path, "super_glue/WSC/val.jsonl", _jsonl(WSC_OK))
    (row,) = D.load_split(D.get_task("wsc"), "validation", str(tmp_path))
    assert D.format_example(D.get_task("wsc"), row) == ("Mark told Pete *he* was late . </s>", "Mark </s>")


def _record(entities=({"start": 0, "end": 4},), qas=None, **passage):
    passage = {"text": "Obama met Merkel.", "entities": list(entities), **passage}
    qas = [{"query": "@placeholder met Merkel", "idx": 1, "answers": [{"start": 0, "end": 4, "text": "Obama"}]}] \
        if qas is None else qas
    return {"idx": 0, "passage": passage, "qas": qas}


@pytest.mark.parametrize("obj, needles", [
    (_record(entities=[{"end": 4}]), ("entity 0", "'start'")),
    (_record(entities=[{"start": 0, "end": 4}, {"start": 10}]), ("entity 1", "'end'")),
    (_record(entities=[{"start": "0", "end": 4}]), ("'start'", "str '0'")),
    (_record(entities=[{"start": 40, "end": 44}]), ("start 40", "outside the passage")),
    (_record(qas=[{"idx": 1, "answers": []}]), ("qas 0", "'query'")),
    (_record(qas=[{"idx": 1, "query": None}]), ("'query'", "null")),
    (_record(qas=[{"idx": 1, "query": "q", "answers": [{"start": 0}]}]), ("answer 0", "'text'")),
    (_record(text=None), ("'text'", "null")),
    ({"idx": 0, "qas": []}, ("'passage'",)),
])
def test_record_structure(tmp_path, obj, needles):
    path = _write(tmp_path, "super_glue/ReCoRD/train.jsonl", _jsonl(obj))
    _refused("record", "train", tmp_path, f"{path} line 1", *needles)


# ------------------------------------------------------------------------------------------ data_fingerprint
def _boolq(root, n_per_class=12, change=None):
    rows = [{"question": f"q{i}", "passage": f"p{i}", "idx": i, "label": i % 2 == 0} for i in range(2 * n_per_class)]
    if change is not None:
        rows[change]["passage"] += " (edited)"
    for fname in ("train.jsonl", "val.jsonl"):
        _write(root, f"super_glue/BoolQ/{fname}", _jsonl(*rows))
    return str(root)


def _fp(data_dir, **kw):
    return D.data_fingerprint(D.build_splits(D.get_task("boolq"), data_dir, **kw))


def test_fingerprint_is_stable_across_loads(tmp_path):
    a = _fp(_boolq(tmp_path / "a"))
    assert a == _fp(_boolq(tmp_path / "a")) == _fp(_boolq(tmp_path / "b"))  # the folder's path is not hashed
    assert len(a) == 64 and int(a, 16) >= 0


def test_fingerprint_changes_with_a_row_text(tmp_path):
    assert _fp(_boolq(tmp_path / "a")) != _fp(_boolq(tmp_path / "b", change=5))


def test_fingerprint_changes_with_the_selection(tmp_path):
    data = _boolq(tmp_path)
    full, k4 = _fp(data), _fp(data, select_k_per_class=4)
    assert len({full, k4, _fp(data, select_k_per_class=5), _fp(data, select_k_per_class=4, data_seed=1),
                _fp(data, get_test_subset=True), _fp(data, limit_val_set=3)}) == 6
    assert k4 == _fp(data, select_k_per_class=4)


def test_fingerprint_covers_order_and_test_part():
    row = {"premise": "p", "hypothesis": "h", "label": 0, "idx": 0}
    other = {**row, "idx": 1}
    base = {"train": [row, other], "val": [row], "test": None}
    fp = D.data_fingerprint(base)
    assert fp != D.data_fingerprint({**base, "train": [other, row]})
    assert fp != D.data_fingerprint({**base, "test": []})
    assert fp != D.data_fingerprint({**base, "val": [{**row, "label": 1}]})
    assert fp == D.data_fingerprint({**base, "val_groups": [0]})  # derived lists are not hashed on their own
