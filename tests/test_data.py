"""data_utils: split, official-metric and error rules (the comparison with the original's golden outputs is in
test_faithfulness.py)."""
import json
import math
import sys
import types
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest

import data_utils as D
from data_utils import DataError


@lru_cache(maxsize=None)
def _load(task_name, split, data_dir):
    return D.load_split(D.get_task(task_name), split, data_dir)


# ------------------------------------------------------------------------------------------ official metrics
def test_official_multirc_f1a_and_question_em():
    task = D.get_task("multirc")
    targets = ["true</s>", "false</s>", "false</s>", "false</s>", "true</s>", "false</s>"]
    decoded = ["<pad> " + t for t in ["true</s>", "true</s>", "false</s>", "false</s>", "true</s>", "false</s>"]]
    groups = [0, 1, 0, 1, 2, 2]  # interleaved answers: question 1 has the one error
    out = D.official_metrics(task, decoded, targets, groups)
    # positives: tp 2, fp 1, fn 0 -> F1a = 2*2/(2*2+1) = 0.8, while accuracy (the original's "F1") is 5/6
    assert out["f1a"] == pytest.approx(0.8) and out["em"] == pytest.approx(2 / 3)
    assert D.evaluate(task, decoded, targets)["metric"] == pytest.approx(5 / 6)


def test_official_stsb_uses_real_scores():
    task = D.get_task("stsb")
    targets = ["1.0</s>", "2.0</s>", "3.0</s>", "4.0</s>"]
    out = D.official_metrics(task, ["<pad> 1.0</s>", "<pad> 2.0</s>", "<pad> 3.0</s>", "<pad> 10.0</s>"], targets)
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] == pytest.approx(14 / math.sqrt(250))
    # "3" and "3.0" are the same score (the original read "3" as 3.0 next to "30" for 3.0)
    out = D.official_metrics(task, ["1.0", "2.0", "3"], targets[:3])
    assert out["pearson"] == pytest.approx(1.0)
    assert D.evaluate(task, ["1.0", "2.0", "3"], targets[:3])["metric"] < 0.5
    assert D.official_metrics(task, ["1.0", "2.0", "abc"], targets[:3])["pearson"] == pytest.approx(
        np.corrcoef([1, 2, 3], [1, 2, 0])[0, 1])  # unparsable -> 0.0


def test_official_mrpc_f1_and_cb_macro_over_label_words():
    mrpc = D.get_task("mrpc")
    t = ["equivalent", "equivalent", "not_equivalent", "equivalent", "not_equivalent"]
    p = ["equivalent", "not_equivalent", "equivalent", "equivalent", "not_equivalent"]
    out = D.official_metrics(mrpc, p, t)  # tp 2, fp 1, fn 1
    assert out == {"f1": pytest.approx(4 / 6), "acc": pytest.approx(0.6)}
    cb = D.get_task("cb")
    t = ["entailment", "contradiction", "neutral", "entailment"]
    p = ["entailment", "contradiction", "", "contradiction contradiction"]
    # per class F1: entailment 2/3, contradiction 1, neutral 0; the original also averages in "" and the repeat
    assert D.official_metrics(cb, p, t) == {"acc": 0.5, "f1_macro": pytest.approx(5 / 9)}
    assert D.evaluate(cb, p, t)["metric"] == [0.5, pytest.approx(1 / 3)]


# ------------------------------------------------------------------------------------------ split rules
def synthetic(per_class_train, per_class_val, grouped=False):
    """A loader giving rows with labels 0..C-1 in the given counts (stsb-like rows get a float label)."""
    def make(counts, split):
        rows = []
        for label, n in enumerate(counts):
            for _ in range(n):
                i = len(rows)
                rows.append({"premise": f"{split} {i}", "hypothesis": "h", "label": label, "idx": i})
        if grouped:  # multirc-like: 3 answers per question, in file order
            rows = [{"paragraph": "p", "question": f"q{i // 3}", "answer": str(i), "label": r["label"],
                     "idx": {"paragraph": 0, "question": i // 3, "answer": i}} for i, r in enumerate(rows)]
        return rows

    def loader(task, split, data_dir):
        return make(per_class_train if split == "train" else per_class_val, split)
    return loader


def counts(rows):
    return dict(sorted(Counter(r["label"] for r in rows).items()))


def test_k_per_class_on_large_and_small_tasks():
    loader = synthetic([50, 30, 5], [40, 40, 40])
    s = D.build_splits(D.get_task("mnli"), select_k_per_class=10, loader=loader)
    assert counts(s["train"]) == {0: 10, 1: 10, 2: 5} and counts(s["val"]) == {0: 40, 1: 40, 2: 40}
    s = D.build_splits(D.get_task("rte_superglue"), select_k_per_class=16, loader=synthetic([50, 30], [9, 9]))
    assert counts(s["train"]) == {0: 16, 1: 16}
    s = D.build_splits(D.get_task("rte_superglue"), select_k_per_class=600, loader=synthetic([700, 30], [9, 9]))
    assert counts(s["train"]) == {0: 700, 1: 30}  # small tasks are cut only when k <= 500
    s = D.build_splits(D.get_task("cb"), select_k_per_class=4, get_test_subset=True, loader=loader)
    assert counts(s["train"]) == {0: 50, 1: 30, 2: 5}  # cb, copa, wsc, wsc_bool: never cut
    s = D.build_splits(D.get_task("stsb"), select_k_per_class=7, loader=synthetic([50, 30], [5, 5]))
    assert len(s["train"]) == 7  # no classes: k rows of the whole set


def test_validation_cut_with_a_test_subset():
    loader = synthetic([10, 10, 10], [600, 600, 7])
    s = D.build_splits(D.get_task("mnli"), get_test_subset=True, loader=loader)
    # the original's quirk: k = -1 still cuts validation to max(500, int(-0.2)) = 500 per class
    assert Counter(r["label"] for r in s["val"] + s["test"]) == {0: 500, 1: 500, 2: 7}
    assert len(s["val"]) == 1007 // 2 and len(s["test"]) == 1007 - 1007 // 2
    s = D.build_splits(D.get_task("mnli"), select_k_per_class=3000, get_test_subset=True,
                       loader=synthetic([10], [700, 700]))
    assert counts(s["val"] + s["test"]) == {0: 600, 1: 600}  # max(500, int(0.2 * 3000))
    s = D.build_splits(D.get_task("sst2"), select_k_per_class=5000, get_test_subset=True,
                       loader=synthetic([10], [700, 700]))
    assert counts(s["val"] + s["test"]) == {0: 400, 1: 400}  # sst2: 400 whatever k
    s = D.build_splits(D.get_task("mnli"), loader=loader)
    assert len(s["val"]) == 1207 and s["test"] is None  # no test subset: validation is never cut


def test_test_subset_halves_the_shuffled_validation():
    loader = synthetic([4, 4], [11, 10])
    full = D.build_splits(D.get_task("rte_superglue"), loader=loader)["val"]
    s = D.build_splits(D.get_task("rte_superglue"), get_test_subset=True, loader=loader)
    assert s["val"] == full[:10] and s["test"] == full[10:]
    assert full != loader(None, "validation", None)  # it was shuffled


def test_limit_val_set_per_class_keeps_served_order():
    loader = synthetic([4, 4], [30, 8])
    full = D.build_splits(D.get_task("rte_superglue"), loader=loader)["val"]
    s = D.build_splits(D.get_task("rte_superglue"), limit_val_set=5, loader=loader)
    assert counts(s["val"]) == {0: 5, 1: 5}
    positions = [full.index(r) for r in s["val"]]
    assert positions == sorted(positions)
    half = D.build_splits(D.get_task("rte_superglue"), get_test_subset=True, loader=loader)
    s = D.build_splits(D.get_task("rte_superglue"), limit_val_set=5, get_test_subset=True, loader=loader)
    assert counts(s["val"]) == {c: min(5, n) for c, n in counts(half["val"]).items()}  # cut after the halving
    assert s["test"] == half["test"]  # the test part is not limited


def test_multirc_groups_stay_consistent():
    task = D.get_task("multirc")
    s = D.build_splits(task, limit_val_set=4, loader=synthetic([6, 6], [12, 12], grouped=True))
    assert s["val_groups"] == D.question_groups(s["val"])
    assert s["val_official_groups"] == D.official_question_groups(s["val"])
    assert counts(s["val"]) == {0: 4, 1: 4}
    assert D.official_question_groups([{"idx": {"paragraph": 0, "question": q}} for q in (1, 2, 1)]) == [0, 1, 0]
    assert D.question_groups([{"paragraph": "p", "question": q} for q in "aab a".replace(" ", "")]) == [0, 0, 1, 2]
    s = D.build_splits(task, get_test_subset=True, loader=synthetic([6, 6], [12, 12], grouped=True))
    assert s["val_groups"] is None and s["test_official_groups"] is not None  # shuffled: the original had no EM


def test_data_seed_determinism():
    loader = synthetic([40, 40], [30, 30])
    task = D.get_task("boolq")
    a = D.build_splits(task, select_k_per_class=8, data_seed=0, loader=loader)
    b = D.build_splits(task, select_k_per_class=8, data_seed=0, loader=loader)
    c = D.build_splits(task, select_k_per_class=8, data_seed=1, loader=loader)
    assert a == b and a["train"] != c["train"] and a["val"] != c["val"]
    served = [r["idx"] for r in D.build_splits(task, loader=loader)["train"]]
    assert served == np.random.default_rng(0).permutation(80).tolist()  # datasets' shuffle(seed=0)


# ------------------------------------------------------------------------------------------ loading and errors
def test_data_dir_may_be_the_benchmark_folder(data_dir):
    rows = D.load_split(D.get_task("cb"), "validation", str(data_dir / "super_glue"))
    assert rows == _load("cb", "validation", str(data_dir))


def _one_line(e):
    return "\n" not in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="missing data file") as e:
        D.load_split(D.get_task("cb"), "validation", str(tmp_path))
    assert str(tmp_path / "super_glue" / "CB" / "val.jsonl") in str(e.value) and _one_line(e)
    (tmp_path / "CoLA").mkdir()  # a benchmark folder given directly: the path under it is named
    with pytest.raises(DataError, match=str(tmp_path / "CoLA" / "dev.tsv")):
        D.load_split(D.get_task("cola"), "validation", str(tmp_path))


def _write(tmp_path, rel, text):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_malformed_jsonl_names_file_and_line(tmp_path):
    good = json.dumps({"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0})
    path = _write(tmp_path, "super_glue/CB/train.jsonl", good + "\n" + good + "\n{not json\n")
    with pytest.raises(DataError, match=f"{path} line 3") as e:
        D.load_split(D.get_task("cb"), "train", str(tmp_path))
    assert _one_line(e)
    _write(tmp_path, "super_glue/CB/train.jsonl", good + "\n" + json.dumps({"premise": "p", "label": "neutral"}))
    with pytest.raises(DataError, match="line 2: missing field 'hypothesis'"):
        D.load_split(D.get_task("cb"), "train", str(tmp_path))


def test_label_outside_the_set(tmp_path):
    bad = json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0})
    path = _write(tmp_path, "super_glue/CB/val.jsonl", bad + "\n")
    want = rf"{path} line 1: label 'maybe' is outside .*'entailment', 'contradiction', 'neutral'"
    with pytest.raises(DataError, match=want):
        D.load_split(D.get_task("cb"), "validation", str(tmp_path))
    path = _write(tmp_path, "glue/RTE/dev.tsv",
                  "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tperhaps\n")
    with pytest.raises(DataError, match=rf"{path} line 3: label 'perhaps'"):
        D.load_split(D.get_task("rte"), "validation", str(tmp_path))
    path = _write(tmp_path, "glue/SST-2/dev.tsv", "sentence\tlabel\nfine \t2\n")
    with pytest.raises(DataError, match="label 2 is outside"):
        D.load_split(D.get_task("sst2"), "validation", str(tmp_path))


def test_empty_file(tmp_path):
    path = _write(tmp_path, "super_glue/CB/train.jsonl", "")
    with pytest.raises(DataError, match=f"empty data file {path}"):
        D.load_split(D.get_task("cb"), "train", str(tmp_path))
    _write(tmp_path, "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n")  # header only
    with pytest.raises(DataError, match="empty data file"):
        D.load_split(D.get_task("rte"), "train", str(tmp_path))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(DataError, match="unknown task 'cbb'.*cb, copa") as e:
        D.get_task("cbb")
    assert all(name in str(e.value) for name in D.TASKS) and _one_line(e)
    with pytest.raises(DataError, match="valid splits are train, validation"):
        D.load_split(D.get_task("cb"), "test", "/nonexistent")
    with pytest.raises(DataError, match="unknown metric of task x 'f1'.*mcc"):
        D.Task("x", "glue", ("a", "b"), "X", ("s",), ("n", "p"), 2, "validation", "f1")


def test_registry_covers_the_originals_tasks():
    assert set(D.TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_mismatched", "qnli", "rte", "wnli",
                            "boolq", "cb", "copa", "multirc", "record", "rte_superglue", "wic", "wsc", "wsc_bool"}
    original_target_len = {"rte": 5, "mrpc": 5, "sst2": 2, "qqp": 5, "cola": 5, "qnli": 5, "mnli": 5, "stsb": 3,
                           "wic": 2, "boolq": 2, "copa": 2, "wsc": 3, "wsc_bool": 2, "cb": 5, "multirc": 5,
                           "record": 10, "rte_superglue": 5}
    assert all(D.TASKS[n].target_len == v for n, v in original_target_len.items())


def test_record_rows_and_text(tmp_path):
    passage = {"text": "@highlight Obama met Merkel in Paris.", "entities": [
        {"start": 21, "end": 26}, {"start": 11, "end": 15}, {"start": 31, "end": 35}, {"start": 11, "end": 15}]}
    qas = [{"query": "@placeholder met Merkel", "idx": 7, "answers": [{"start": 11, "end": 15, "text": "Obama"}] * 2}]
    _write(tmp_path, "super_glue/ReCoRD/val.jsonl", json.dumps({"idx": 3, "passage": passage, "qas": qas}) + "\n")
    task = D.get_task("record")
    (row,) = D.load_split(task, "validation", str(tmp_path))
    assert row == {"passage": passage["text"], "query": "@placeholder met Merkel",
                   "entities": ["Obama", "Merkel", "Paris"],  # first appearance, repeats dropped
                   "answers": ["Obama"], "idx": {"passage": 3, "query": 7}}
    assert D.format_example(task, row) == (
        "passage : @highlight Obama met Merkel in Paris. query: @placeholder met Merkel "
        "entities: Obama; Merkel; Paris </s>",
        "Obama </s>")


def test_hub_path_renames_and_maps_splits(monkeypatch):
    calls = []

    class Fake:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if path == "down":
            raise ConnectionError("no route to host\nmore lines")
        return Fake([{"question": "q", "sentence": "s", "label": 1, "idx": 0}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert D.load_split(D.get_task("qnli"), "validation") == [{"text1": "q", "text2": "s", "label": 1, "idx": 0}]
    D.load_split(D.get_task("mnli_mismatched"), "validation")
    assert calls == [("nyu-mll/glue", "qnli", "validation"), ("nyu-mll/glue", "mnli", "validation_mismatched")]
    down = D.Task("down", "glue", ("down", "x"), "X", ("s",), ("n", "p"), 2, "validation", "acc")
    with pytest.raises(DataError, match="ConnectionError: no route to host\\): check the connection") as e:
        D.load_split(down, "train")
    assert _one_line(e)


def test_invalid_split_options_are_refused():
    for kw in ({"select_k_per_class": 0}, {"limit_val_set": -5}):
        with pytest.raises(DataError, match=f"{next(iter(kw))} must be -1 .* or a positive number"):
            D.build_splits(D.get_task("cb"), loader=synthetic([3], [3]), **kw)
