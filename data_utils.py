"""Tasks, data loading, text-to-text formatting, tokenization and metrics (ground floor: imports only errors.py).

Everything here reproduces the original implementation (github arazd/ResidualPrompts, commit 53087ca:
``t5_dataset.py`` and ``prompt_tuner2.py``); the golden files in ``shared/golden`` were recorded by running it and
``tests/test_data.py`` checks this module against them. Deliberate differences say ``differs from original:``.

Flow: ``get_task(name)`` -> ``build_splits(task, ...)`` (rows in Hugging Face format, in served order)
-> ``format_example(task, row)`` -> ``encode_batch(tokenizer, texts, max_length)`` (unpadded ids) ... the model
generates ... -> ``evaluate(task, decoded, targets, groups)``. ``data_fingerprint(splits)`` identifies the rows a
run uses (recorded with its results, compared on resume).

Every row ``load_split`` returns, from an official file or from the Hub, has passed ``_check_row``: each field the
task's formatter reads has the type the official files give it (text a str, WiC/WSC offsets an int, ReCoRD
entities/answers lists of str) and the label is a valid class id (a float score for stsb). A file that is not
UTF-8 is refused with its line and byte (``_utf8_error``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import string
import warnings
from dataclasses import dataclass

import numpy as np


from errors import DataError  # noqa: F401  (raised here, caught by train.py)


@dataclass(frozen=True)
class Task:
    name: str                 # registry key
    benchmark: str            # "glue" | "super_glue"
    hub: tuple                # (path, config) for datasets.load_dataset
    local_dir: str            # folder of the official download
    keys: tuple               # input fields, in the original's order (they become "key: value" in the source)
    label_words: tuple        # target word by class id; () where the target is not a class (stsb, record, wsc)
    target_len: int           # target tokens incl. </s>, as the original's task_to_target_len
    val_split: str            # Hub split used as "validation"
    metric: str               # the original's compute_task_metrics branch, a key of ORIGINAL_METRICS
    official: str = "same"    # the benchmark's own metric, a key of OFFICIAL_METRICS
    formatter: str = "fields"  # how a row becomes text, a key of FORMATTERS
    label_names: tuple = ()   # HF ClassLabel names (class id order); () = no class label (stsb float, record)
    reader: str = ""          # how an official file becomes HF rows, a key of READERS ("" = the benchmark's)
    files: tuple = ()         # (train, validation) file names in local_dir (() = the benchmark's)
    columns: tuple = ()       # tsv: (HF field, file column) pairs; () = the keys themselves
    label_column: str = "label"
    tsv_header: tuple = ()    # column names of a tsv without a header row (CoLA)
    hub_rename: tuple = ()    # (Hub field, our field) pairs
    k_rule: str = "any"       # few-shot: "any" cut train to k; "small" only when k <= 500; "none" never
    val_k: int | None = None  # per-class validation cut with a test subset; None = max(500, int(0.2*k))
    keep_label: int | None = None  # keep only rows with this label, before anything else (wsc)
    grouped: bool = False     # rows are answers grouped by question (multirc): validation kept in file order

    def __post_init__(self):  # every option name is checked once, here, instead of failing mid-run
        _check_name(self.benchmark, BENCHMARKS, f"benchmark of task {self.name}")
        _, reader, files = BENCHMARKS[self.benchmark]
        object.__setattr__(self, "reader", self.reader or reader)
        object.__setattr__(self, "files", self.files or files)
        for field, table in (("metric", ORIGINAL_METRICS), ("official", OFFICIAL_METRICS),
                             ("formatter", FORMATTERS), ("reader", READERS), ("k_rule", K_RULES)):
            _check_name(getattr(self, field), table, f"{field} of task {self.name}")


def _check_name(name, table, what):
    if name not in table:
        raise DataError(f"unknown {what} {name!r}: valid names are {', '.join(map(str, table))}")


# ---------------------------------------------------------------------------------------------- formatting
def _fields_text(task, row):
    return "".join(f"{k}: {row[k]} " for k in task.keys)


def _fields(task, row):
    return _fields_text(task, row), _label_word(task, row)


def _sentence(task, row):  # single-field tasks (cola, sst2): the raw sentence, no "key:" prefix
    return row[task.keys[0]], _label_word(task, row)


def _stsb(task, row):
    # The score is float32 (3.8 -> 3.799999952316284) and the original cut its str to 3 characters: "3.7".
    return _fields_text(task, row), str(row["label"])[:3]


def _record(task, row):
    return ("passage : " + str(row["passage"]) + " query: " + str(row["query"])
            + " entities: " + "; ".join(row["entities"])), "; ".join(row["answers"])


def _wsc(task, row):
    # Split on single spaces; the pronoun (span2) is starred; the target is the ONE word at span1_index
    # ("the" for "the cup"), which is what the original trained on.
    words = row["text"].split(" ")
    try:
        target = words[row["span1_index"]]
        words[row["span2_index"]] = "*" + words[row["span2_index"]] + "*"
    except IndexError:
        raise DataError(f"wsc row idx {row.get('idx')}: span index outside its text of {len(words)} words") from None
    return " ".join(words), target


def _label_word(task, row):
    label = row["label"]
    if not (isinstance(label, int) and 0 <= label < len(task.label_words)):
        raise DataError(f"{task.name} row idx {row.get('idx')}: label {label!r} has no target word "
                        f"(valid ids 0..{len(task.label_words) - 1}); unlabelled test rows cannot be formatted")
    return task.label_words[label]


FORMATTERS = {"fields": _fields, "sentence": _sentence, "stsb": _stsb, "record": _record, "wsc": _wsc}


def format_example(task: Task, row: dict) -> tuple[str, str]:
    """(source_text, target_text) exactly as the original passed them to the tokenizer; both end in " </s>"."""
    try:
        source, target = FORMATTERS[task.formatter](task, row)
    except KeyError as e:  # rows from load_split have every field; this names the one a foreign row lacks
        raise DataError(f"{task.name} row idx {row.get('idx')}: missing field {e.args[0]!r}; "
                        f"its fields are {sorted(row)}") from None
    return source.strip() + " </s>", target + " </s>"


def prediction_record(task: Task, row: dict, prediction: str, with_target: bool = True) -> dict:
    """One line of predictions_{split}.jsonl (train.py) and of scripts/predict.py's output: the row id, the model's
    input text, the target (unless the row has no label) and the prediction, without T5's special tokens."""
    source, target = format_example(task, row)
    record = {"id": row.get("idx"), "input": source.removesuffix(" </s>")}
    if with_target:
        record["target"] = target.removesuffix(" </s>")
    record["prediction"] = prediction.replace("<pad>", "").replace("</s>", "").strip()
    return record


# ---------------------------------------------------------------------------------------------- tokenization
def encode(tokenizer, text: str, max_length: int) -> list[int]:
    return encode_batch(tokenizer, [text], max_length)[0]


def encode_batch(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Unpadded ids by the 2022 sentencepiece T5Tokenizer rule (transformers 4.20), in one batched call.

    The texts already end in "</s>" (parsed as eos). The 2022 tokenizer reserved one place for eos, cut to
    ``max_length - 1`` ids when too long, and appended eos only if the ids did not already end with it; today's
    tokenizer always appends one (two eos, silently), so we encode without special tokens and apply that rule.
    """
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    unique = list(dict.fromkeys(texts))  # targets repeat a few label words: tokenize each string once
    done = {}
    for text, ids in zip(unique, tokenizer(unique, add_special_tokens=False, verbose=False)["input_ids"]):
        if len(ids) + 1 > max_length:
            ids = ids[:max_length - 1]
        done[text] = ids if ids and ids[-1] == eos else ids + [eos]
    return [list(done[t]) for t in texts]


# ---------------------------------------------------------------------------------------------- loading
def _found(value):
    """A value's type and (short) repr for an error message: "null", "bool True", "list ['a', 'b']"."""
    if value is None:
        return "null (None)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _bool_labels(task):
    """The official files write this task's labels as JSON booleans (boolq, multirc, wic, wsc)."""
    return task.label_names == _TF


def _label_id(task, raw, where):
    """HF class id of a label as the official files write it (string, 0/1, "0"/"1"; a JSON boolean only where the
    official files use booleans); stsb: the score, a real number (or its string), as float32 like the GLUE script."""
    if not task.label_names:  # stsb: the GLUE script stores the score as float32
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise DataError(f"{where}: field 'label' (the score) is {_found(raw)}, expected a real number "
                            f"(or its string); write it as the official file does")
        try:
            with np.errstate(over="ignore"):
                score = float(np.float32(raw))
        except (TypeError, ValueError):
            raise DataError(f"{where}: score {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{where}: score {raw!r} is not a finite float32 number; expected a real number")
        return score
    if isinstance(raw, bool):
        if not _bool_labels(task):  # a CB `true` is not "class 1": refused, not guessed
            raise DataError(f"{where}: field 'label' is {_found(raw)}, expected one of {list(task.label_names)} "
                            f"(or an id 0..{len(task.label_names) - 1}): {task.name} labels are not booleans, "
                            f"write them as the official file does")
        raw = int(raw)
    elif not isinstance(raw, (str, int)):
        raise DataError(f"{where}: field 'label' is {_found(raw)}, expected one of {list(task.label_names)} "
                        f"(or an id 0..{len(task.label_names) - 1}); write it as the official file does")
    elif isinstance(raw, str) and raw in task.label_names:
        return task.label_names.index(raw)
    elif isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
        raw = int(raw)
    if isinstance(raw, int) and 0 <= raw < len(task.label_names):
        return raw
    raise DataError(f"{where}: label {raw!r} is outside the {task.name} label set "
                    f"{list(task.label_names)} (or ids 0..{len(task.label_names) - 1})")


# The one validation layer: every row load_split returns passes _check_row, whether it came from an official file
# (each reader calls it per row, naming file and line) or from the Hub (named by split and position).
_INT_FIELDS = frozenset(("start1", "end1", "start2", "end2",  # wic: character offsets of the word
                         "span1_index", "span2_index"))       # wsc: word indices into the text
_STR_LIST_FIELDS = frozenset(("entities", "answers"))         # record


def _read_fields(task):
    """The row fields the task's formatter reads (ReCoRD's target is its answers)."""
    return task.keys + ("answers",) if task.formatter == "record" else task.keys


def _type_ok(field, value):
    if field in _INT_FIELDS:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if field in _STR_LIST_FIELDS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def _expected(field):
    if field in _INT_FIELDS:
        return "a non-negative integer"
    return "a list of strings" if field in _STR_LIST_FIELDS else "a string"


def _check_value(task, field, value, where, idx):
    if not _type_ok(field, value):
        raise DataError(f"{where}: field {field!r} of {task.name} row idx {idx} is {_found(value)}, expected "
                        f"{_expected(field)}; correct that row or use the official "
                        f"{BENCHMARKS[task.benchmark][0]} file")


def _check_row(task, row, where):
    """Refuse a row whose fields or label the formatter would silently mistreat (None -> "None", a list -> its
    repr, a string index -> a crash): every field it reads must have the official type (see _type_ok), the
    label a valid class id (an int, never a bool) or, for stsb, a finite float. Fields absent from the row are the
    readers' concern (``_need``, the tsv header check) and format_example's (a Hub row). Returns the row."""
    idx = row.get("idx")
    for field in _read_fields(task):
        if field in row:
            _check_value(task, field, row[field], where, idx)
    if task.formatter == "record":  # no label: the target is the answers
        return row
    label = row.get("label")
    if task.label_names:
        ok = isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(task.label_names)
        expected = f"a class id 0..{len(task.label_names) - 1}"
    else:
        ok = isinstance(label, (int, float)) and not isinstance(label, bool) and math.isfinite(label)
        expected = "a real number"
    if not ok:
        raise DataError(f"{where}: field 'label' of {task.name} row idx {idx} is {_found(label)}, expected "
                        f"{expected}; correct that row or use the official {BENCHMARKS[task.benchmark][0]} file")
    return row


def _utf8_error(path):
    """DataError naming the line and byte of the first invalid UTF-8 sequence in ``path``."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return DataError(f"{path} line {line}: invalid UTF-8 at byte {col} of the line (byte offset {e.start} of "
                         f"the file: {data[e.start:e.end]!r}, {e.reason}); re-download the file or save it as UTF-8")
    return DataError(f"{path}: invalid UTF-8 (the file changed while it was read); re-download it")


def _read_tsv(task, path):
    """As the datasets GLUE script read the TSVs: tab-delimited, QUOTE_NONE, idx = data row number."""
    columns = task.columns or tuple((k, k) for k in task.keys)
    rows = []
    # utf-8-sig skips MRPC's byte-order mark (the GLUE script seeked past its 3 bytes).
    with open(path, encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, fieldnames=task.tsv_header or None, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []  # [] for an empty file: reported below as empty
        missing = [c for c in [c for _, c in columns] + [task.label_column] if header and c not in header]
        if missing:
            raise DataError(f"{path}: header lacks column(s) {missing}; "
                            f"is this the official GLUE {task.local_dir} file?")
        for n, rec in enumerate(reader):
            row = {ours: rec[col] for ours, col in columns}
            if None in row.values() or rec[task.label_column] is None:
                # A short line: the GLUE script (hence the Hub copy the original loaded) skips it; so do we.
                continue
            where = f"{path} line {reader.line_num}"
            row["idx"] = n
            row["label"] = _label_id(task, rec[task.label_column], where)
            rows.append(_check_row(task, row, where))
    return rows


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON in {path} line {n}: {e.msg} (column {e.colno})") from None


def _need(obj, key, where, kind=None):
    """obj[key], refused with a DataError when obj is not an object, lacks key, or (kind given) holds another type."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing field {key!r}; is this the official SuperGLUE file?")
    value = obj[key]
    if kind is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
        raise DataError(f"{where}: field {key!r} is {_found(value)}, expected {_KIND_NAMES[kind]}; "
                        f"is this the official SuperGLUE file?")
    return value


_KIND_NAMES = {list: "a list", dict: "an object", str: "a string", int: "an integer"}


def _read_jsonl(task, path):
    rows = []  # HF's super_glue script kept only the task's fields, idx and label (not e.g. WiC's "version")
    for n, obj in _jsonl(path):
        where = f"{path} line {n}"
        if isinstance(obj, dict) and isinstance(obj.get("target"), dict):
            # WSC nests its spans under "target"; they are taken as written (HF's _fix_wst not applied: golden).
            obj = {**obj, **obj["target"]}
        row = {k: _need(obj, k, where) for k in task.keys + ("idx",)}
        row["label"] = _label_id(task, _need(obj, "label", where), where)
        rows.append(_check_row(task, row, where))
    return rows


def _read_multirc(task, path):
    rows = []  # one row per answer option, as HF's super_glue script flattened passage -> questions -> answers
    for n, obj in _jsonl(path):
        where = f"{path} line {n}"
        passage = _need(obj, "passage", where, dict)
        for q in _need(passage, "questions", where, list):
            for a in _need(q, "answers", where, list):
                row = {"paragraph": _need(passage, "text", where), "question": _need(q, "question", where),
                       "answer": _need(a, "text", where),
                       "idx": {"paragraph": obj.get("idx"), "question": q.get("idx"), "answer": a.get("idx")},
                       "label": _label_id(task, _need(a, "label", where), where)}
                rows.append(_check_row(task, row, where))
    return rows


def _entity_span(entity, text, where):
    """(start, end) of a ReCoRD entity, both inclusive character offsets into the passage text."""
    start, end = _need(entity, "start", where, int), _need(entity, "end", where, int)
    if not 0 <= start <= end or start >= len(text):
        raise DataError(f"{where}: span start {start} end {end} is outside the passage text of {len(text)} "
                        f"characters; is this the official SuperGLUE file?")
    return start, end


def _read_record(task, path):
    rows = []  # one row per query, with HF's fields passage/query/entities/answers
    for n, obj in _jsonl(path):
        where = f"{path} line {n}"
        passage = _need(obj, "passage", where, dict)
        text = _need(passage, "text", f"{where} passage", str)
        spans = [_entity_span(e, text, f"{where} passage entity {i}")
                 for i, e in enumerate(_need(passage, "entities", where, list))]
        # differs from original: HF's script returned the entities as a python set (order varied with the hash
        # seed); we keep first-appearance order so that the source text is reproducible.
        entities = list(dict.fromkeys(text[s:e + 1] for s, e in sorted(spans, key=lambda span: span[0])))
        for j, qa in enumerate(_need(obj, "qas", where, list)):
            at = f"{where} qas {j}"
            answers = [_need(a, "text", f"{at} answer {i}", str) for i, a in enumerate(
                _need(qa, "answers", at, list) if isinstance(qa, dict) and "answers" in qa else [])]
            row = {"passage": text, "query": _need(qa, "query", at), "entities": entities,
                   "answers": sorted(set(answers)), "idx": {"passage": obj.get("idx"), "query": qa.get("idx")}}
            rows.append(_check_row(task, row, at))
    return rows


READERS = {"tsv": _read_tsv, "jsonl": _read_jsonl, "multirc_jsonl": _read_multirc, "record_jsonl": _read_record}
BENCHMARKS = {"glue": ("GLUE", "tsv", ("train.tsv", "dev.tsv")),  # (title, reader, (train, validation) files)
              "super_glue": ("SuperGLUE", "jsonl", ("train.jsonl", "val.jsonl"))}


def _local_path(task, split, data_dir):
    title = BENCHMARKS[task.benchmark][0]
    fname = task.files[split == "validation"]
    under_root = os.path.join(data_dir, task.benchmark, task.local_dir, fname)
    under_bench = os.path.join(data_dir, task.local_dir, fname)  # data_dir is the benchmark folder itself
    for path in (under_root, under_bench):
        if os.path.isfile(path):
            return path
    expected = under_bench if os.path.isdir(os.path.join(data_dir, task.local_dir)) else under_root
    raise DataError(f"missing data file {expected}: download {title} ({task.local_dir}/{fname}) "
                    f"or drop --data_dir to use the Hub")


def _load_hub(task, split):
    import datasets  # lazily: the offline path and the metrics must not need it
    hub_split = task.val_split if split == "validation" else "train"
    try:
        ds = datasets.load_dataset(*task.hub, split=hub_split)
    except Exception as e:  # network, auth, renamed repos: one line with the way out
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"cannot load {'/'.join(task.hub)} split {hub_split} from the Hugging Face Hub "
                        f"({type(e).__name__}: {msg}): check the connection or pass --data_dir") from None
    rename = dict(task.hub_rename)
    where = f"{'/'.join(task.hub)} split {hub_split} (Hugging Face Hub) row"
    return [_check_row(task, {rename.get(k, k): v for k, v in row.items()}, f"{where} {i}")
            for i, row in enumerate(ds.to_list())]


def load_split(task: Task, split: str, data_dir: str | None = None) -> list[dict]:
    """Rows of "train" or "validation" in Hugging Face format (integer class ids, stsb float32 score as float),
    each checked by ``_check_row`` whatever its source; a file that is not valid UTF-8 raises DataError."""
    if split not in ("train", "validation"):
        raise DataError(f"unknown split {split!r}: valid splits are train, validation")
    if data_dir is None:
        return _load_hub(task, split)
    path = _local_path(task, split, data_dir)
    try:
        rows = READERS[task.reader](task, path)
    except UnicodeDecodeError:  # raised by the text-mode file: a one-line error with the line and byte instead
        raise _utf8_error(path) from None
    if not rows:
        raise DataError(f"empty data file {path}: it holds no {task.name} rows; re-download it")
    return rows


# ---------------------------------------------------------------------------------------------- splits
K_RULES = ("any", "small", "none")  # see Task.k_rule


def few_shot_sizes(task: Task, select_k_per_class: int, get_test_subset: bool) -> tuple[int, int]:
    """(k for train, k for validation) per class, -1 = all: the original's get_tasks_data_dict rules."""
    k = select_k_per_class
    if task.k_rule == "any":
        # Quirk kept: with k = -1 and a test subset, max(500, int(-0.2)) = 500 cuts validation to 500 per class.
        k_val = task.val_k if task.val_k is not None else max(500, int(0.2 * k))
    else:
        k = k if (task.k_rule == "small" and k <= 500) else -1
        k_val = -1
    return k, (k_val if get_test_subset else -1)


def _pick(task, rows, k, seed):
    """Indices of min(k, n_class) random rows per label (per dataset where there are no classes)."""
    # differs from original: it drew with numpy's unseeded global RNG; we draw from a RandomState(data_seed).
    rng = np.random.RandomState(seed)
    if not rows:
        return np.zeros(0, np.int64)
    if not task.label_words:  # stsb, record, wsc: the target is not a class
        return rng.choice(len(rows), min(k, len(rows)), replace=False)
    labels = np.array([r["label"] for r in rows])
    return np.concatenate([rng.choice(np.flatnonzero(labels == lab), min(k, int((labels == lab).sum())),
                                      replace=False) for lab in sorted(set(labels.tolist()))]).astype(np.int64)


def _select(task, rows, k, seed):
    idx = _pick(task, rows, k, seed)
    np.random.RandomState(seed).shuffle(idx)  # the original: np.random.seed(0); np.random.shuffle(idx)
    return [rows[i] for i in idx]


def question_groups(rows: list[dict]) -> list[int]:
    """Original's save_multirc_questions_idx: runs of consecutive equal (paragraph, question) -> 0, 1, 2, ..."""
    groups, prev = [], None
    for r in rows:
        key = (r["paragraph"], r["question"])
        groups.append(groups[-1] + (key != prev) if groups else 0)
        prev = key
    return groups


def official_question_groups(rows: list[dict]) -> list[int]:
    """One id per (paragraph idx, question idx), wherever its answers sit: the official MultiRC question."""
    ids = {}
    return [ids.setdefault((r["idx"]["paragraph"], r["idx"]["question"]), len(ids)) for r in rows]


def build_splits(task: Task, data_dir=None, select_k_per_class=-1, get_test_subset=False,
                 limit_val_set=-1, data_seed=0, loader=load_split) -> dict:
    """Rows in served order: {"train", "val", "test" (None without a test subset), "val_groups", "test_groups"
    (the original's multirc question runs, None where it had none), "val_official_groups", "test_official_groups"}.
    """
    for flag, value in (("select_k_per_class", select_k_per_class), ("limit_val_set", limit_val_set)):
        if value == 0 or value < -1:  # refused rather than guessed: 0 would leave no data
            raise DataError(f"{flag} must be -1 (all rows) or a positive number of rows per class, not {value}")
    k, k_val = few_shot_sizes(task, select_k_per_class, get_test_subset)
    splits = {}
    for name, split, kk in (("train", "train", k), ("val", "validation", k_val)):
        rows = loader(task, split, data_dir)
        if task.keep_label is not None:  # wsc trains on the label-1 rows only (the right referent is the target)
            rows = [r for r in rows if r["label"] == task.keep_label]
        if kk != -1:
            rows = _select(task, rows, kk, data_seed)
        if name == "val" and task.grouped and kk == -1:
            val_ordered = True  # answers of one question must stay together for the original's exact match
        else:  # datasets' shuffle(seed=0) is this permutation
            val_ordered = False
            rows = [rows[i] for i in np.random.default_rng(data_seed).permutation(len(rows))]
        splits[name] = rows
    out = {"train": splits["train"], "val": splits["val"], "test": None}
    if get_test_subset:
        n = len(splits["val"])
        out["val"], out["test"] = splits["val"][:n // 2], splits["val"][n // 2:]
    if limit_val_set > 0:
        # New (the original parsed --limit_val_set and ignored it): at most N per class, served order kept.
        keep = np.sort(_pick(task, out["val"], limit_val_set, data_seed))
        out["val"] = [out["val"][i] for i in keep]
    for part in ("val", "test"):
        rows = out[part]
        out[f"{part}_groups"] = question_groups(rows) if (val_ordered and rows is not None) else None
        out[f"{part}_official_groups"] = official_question_groups(rows) if (task.grouped and rows is not None) else None
    return out


def _json_default(value):  # numpy scalars from a custom loader hash as the Python numbers they equal
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a row holds {type(value).__name__} {value!r}, which data_fingerprint cannot hash")


def data_fingerprint(splits: dict) -> str:
    """A stable sha256 hex digest of the rows a run actually uses, to refuse a resume against other data.

    ``splits`` is ``build_splits``' dict. Covered: for "train", "val" and "test" (a missing or None part is
    recorded as absent, so a run with a test subset differs from one without), the number of rows and every row in
    served order, each as ``json.dumps(row, sort_keys=True)``: its ids (idx), input texts and label. It therefore
    changes with the data files' content, the task's fields, and the selection: select_k_per_class, data_seed,
    get_test_subset, limit_val_set, WSC's label filter. The question-group lists are not hashed on their own: they
    follow from the rows and their order. Not covered: the tokenizer, sequence lengths, or any row field a
    formatter ignores beyond what the row dict holds (everything it holds is hashed). Independent of the hash seed,
    the platform and the path of the data folder.
    """
    h = hashlib.sha256(b"data_fingerprint v1\n")
    for part in ("train", "val", "test"):
        rows = splits.get(part)
        h.update(f"{part} {'absent' if rows is None else len(rows)}\n".encode())
        for row in rows or ():
            h.update(json.dumps(row, sort_keys=True, separators=(",", ":"), default=_json_default).encode())
            h.update(b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- evaluation
_ARTICLES = re.compile(r"\b(a|an|the|)\b", re.UNICODE)  # the empty alternative is the original's: it puts a
# space at every word boundary ("x;y" -> "x ; y" when ";" is kept), which the record metric relies on.


def normalize_text(s: str, keep: tuple = ()) -> str:
    """The original's normalize_text: lower, drop <pad>/</s>, ASCII punctuation (even "_" and "."), articles,
    and collapse whitespace. ``keep``: punctuation to keep (";" for record)."""
    s = s.lower().replace("<pad>", "").replace("</s>", "")
    s = "".join(ch for ch in s if ch not in string.punctuation or ch in keep)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _score(x, faithful_errors):
    if any(c.isalpha() for c in x):
        return 0.0
    try:
        return float(x)
    except ValueError:
        if faithful_errors:
            raise
        # differs from original: "" or "25 30" crashed its validation; they count as 0.0 like letters do.
        return 0.0


def preprocess_outputs(task: Task, decoded: list[str], targets: list[str],
                       faithful_errors: bool = False) -> tuple[list, list]:
    """The original's preprocess_outputs; returns (y_true, y_pred) in that order, like the original.
    stsb: numbers as normalized ("3.7" -> 37.0); anything with a letter -> 0.0."""
    keep = (";",) if task.metric == "record" else ()  # record's gold answers are ";"-separated
    y_true = [normalize_text(x, keep) for x in targets]
    y_pred = [normalize_text(x, keep) for x in decoded]
    if task.metric == "pearson":
        y_true = [_score(x, faithful_errors) for x in y_true]
        y_pred = [_score(x, faithful_errors) for x in y_pred]
    return y_true, y_pred


def _sk():  # scikit-learn is imported on first use, so that importing this module stays fast
    from sklearn import metrics
    return metrics


def _acc(y_true, y_pred):
    return float(np.sum([p == t for p, t in zip(y_pred, y_true)]) / np.float64(len(y_true)))


def _pearson(y_true, y_pred):
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant predictions: NaN, as the original
        return float(np.corrcoef(y_true, y_pred)[0, 1])


def _group_em(y_true, y_pred, groups):
    """Fraction of groups whose every row is right (the original: one group per distinct id)."""
    if len(groups) != len(y_true):
        raise ValueError(f"{len(groups)} question groups for {len(y_true)} predictions")
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    wrong = np.bincount(inv, weights=[p != t for p, t in zip(y_pred, y_true)])
    return float(np.mean(wrong == 0))


def _multirc(y_true, y_pred, groups, training):
    f1 = float(_sk().f1_score(y_true, y_pred, average="micro"))  # the original's "F1": micro = accuracy
    return (_group_em(y_true, y_pred, groups), f1) if groups is not None and not training else f1


def _token_f1(pred, truth):  # the original's compute_f1: SETS of tokens, not SQuAD's multisets
    p, t = normalize_text(pred).split(), normalize_text(truth).split()
    if not p or not t:
        return int(p == t)
    common = len(set(p) & set(t))
    return 0 if common == 0 else 2 * (common / len(p)) * (common / len(t)) / (common / len(p) + common / len(t))


def _record_metric(y_true, y_pred, groups=None, training=False):  # best match among the ";"-separated answers
    em = sum(max(int(normalize_text(p) == normalize_text(a)) for a in t.split(";")) for p, t in zip(y_pred, y_true))
    f1 = sum(max(_token_f1(p, a) for a in t.split(";")) for p, t in zip(y_pred, y_true))
    return em / len(y_true), f1 / len(y_true)


# metric name -> fn(y_true, y_pred, groups, training): the branches of the original's compute_task_metrics
ORIGINAL_METRICS = {
    "mcc": lambda t, p, g, tr: float(_sk().matthews_corrcoef(t, p)),
    "pearson": lambda t, p, g, tr: _pearson(t, p),
    # macro-F1 over every label seen: out-of-label predictions count as extra classes
    "acc_f1macro": lambda t, p, g, tr: (_acc(t, p), float(_sk().f1_score(t, p, average="macro"))),
    "multirc": _multirc,
    "record": _record_metric,
    "acc": lambda t, p, g, tr: _acc(t, p),
}


def original_metric(task: Task, y_true, y_pred, groups=None, training=False):
    """The original's compute_task_metrics on preprocess_outputs' lists: a float, or a tuple of two."""
    return ORIGINAL_METRICS[task.metric](y_true, y_pred, groups, training)


def _official_stsb(task, decoded, targets, groups):
    def score(s):  # the real score, not the original's dot-stripped number; unparsable counts 0.0 (its letter
        try:        # rule), so a model that babbles is penalised instead of crashing the run
            return float(s.replace("<pad>", "").replace("</s>", "").strip())
        except ValueError:
            return 0.0
    from scipy.stats import spearmanr
    y_true, y_pred = [score(x) for x in targets], [score(x) for x in decoded]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: NaN
        return {"pearson": _pearson(y_true, y_pred), "spearman": float(spearmanr(y_true, y_pred)[0])}


def _official_binary(task, decoded, targets, groups):
    """mrpc, qqp: F1 of the positive class (label word 1) and accuracy. multirc: F1a (the same F1 over all
    answer options, positive "true") and, given question groups, EM = fraction of questions answered all right."""
    y_true, y_pred = preprocess_outputs(task, decoded, targets)
    pos = normalize_text(task.label_words[1])
    f1 = float(_sk().f1_score([t == pos for t in y_true], [p == pos for p in y_pred], zero_division=0.0))
    out = {"f1a" if task.grouped else "f1": f1, "acc": _acc(y_true, y_pred)}
    if task.grouped and groups is not None:
        out["em"] = _group_em(y_true, y_pred, groups)
    return out


def _official_cb(task, decoded, targets, groups):  # macro-F1 over the 3 label words: other outputs are errors
    y_true, y_pred = preprocess_outputs(task, decoded, targets)
    labels = [normalize_text(w) for w in task.label_words]
    return {"acc": _acc(y_true, y_pred),
            "f1_macro": float(_sk().f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0.0))}


_SAME_NAMES = {"mcc": ("mcc",), "pearson": ("pearson",), "acc": ("acc",), "record": ("em", "f1"),
               "acc_f1macro": ("acc", "f1_macro"), "multirc": ("em", "f1")}


def _official_same(task, decoded, targets, groups):  # where the original's metric is the benchmark's
    y_true, y_pred = preprocess_outputs(task, decoded, targets)
    values = np.atleast_1d(original_metric(task, y_true, y_pred, groups)).tolist()
    return dict(zip(_SAME_NAMES[task.metric], values))


OFFICIAL_METRICS = {"same": _official_same, "stsb": _official_stsb, "binary": _official_binary, "cb": _official_cb}


def official_metrics(task: Task, decoded: list[str], targets: list[str], groups=None) -> dict[str, float]:
    """The benchmark's metric where the original's differs (multirc EM/F1a, stsb on real scores, mrpc/qqp F1,
    cb macro-F1 over its 3 labels); elsewhere the original's values under their names. groups: official ones."""
    return OFFICIAL_METRICS[task.official](task, decoded, targets, groups)


def evaluate(task: Task, decoded: list[str], targets: list[str], groups=None, official_groups=None,
             training=False, faithful_errors=False) -> dict:
    """{"score": mean of the original metric's values (the early-stopping score; NaN possible),
    "metric": the original metric (float or list), "official": official_metrics(...)}."""
    y_true, y_pred = preprocess_outputs(task, decoded, targets, faithful_errors=faithful_errors)
    values = [float(v) for v in np.atleast_1d(original_metric(task, y_true, y_pred, groups, training))]
    return {"score": float(np.mean(values)), "metric": values if len(values) > 1 else values[0],
            "official": official_metrics(task, decoded, targets, official_groups)}


def constant_score(task: Task, targets: list[str], groups=None, max_labels: int = 10):
    """What "no signal" scores on these rows: the best early-stopping score of a constant prediction (one label for
    every row), tried for each label that occurs. Correlation metrics (Pearson, Matthews) give 0 for a constant;
    None when the rows hold more than ``max_labels`` distinct targets (free text)."""
    if task.metric == "pearson":
        return 0.0
    labels = sorted(set(targets))
    if not labels or len(labels) > max_labels:
        return None
    scores = [evaluate(task, [t] * len(targets), targets, groups=groups)["score"] for t in labels]
    return float(max(0.0 if math.isnan(v) else v for v in scores))


# ---------------------------------------------------------------------------------------------- registry
# Last in the file: each Task checks its option names against the tables above when it is built.
_GLUE, _SG = ("nyu-mll/glue",), ("aps/super_glue",)
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("false", "true")
_TF = ("False", "True")


def _t(name, benchmark, hub, local_dir, keys, label_words, target_len, metric="acc", val_split="validation",
       label_names=None, **kw):
    # label_names default to the label words: true for every GLUE task whose tsv writes strings or 0/1
    return Task(name, benchmark, hub, local_dir, keys, label_words, target_len, val_split, metric,
                label_names=label_words if label_names is None else label_names, **kw)


_MNLI = dict(columns=(("premise", "sentence1"), ("hypothesis", "sentence2")), label_column="gold_label")
_REGISTRY = [
    _t("cola", "glue", _GLUE + ("cola",), "CoLA", ("sentence",), ("not_acceptable", "acceptable"), 5, "mcc",
       label_names=("unacceptable", "acceptable"), formatter="sentence", k_rule="small",
       tsv_header=("source", "label", "original_label", "sentence")),  # CoLA's tsv has no header row
    _t("sst2", "glue", _GLUE + ("sst2",), "SST-2", ("sentence",), ("negative", "positive"), 2,
       formatter="sentence", val_k=400),
    _t("mrpc", "glue", _GLUE + ("mrpc",), "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), 5,
       official="binary", k_rule="small", label_column="Quality",
       columns=(("sentence1", "#1 String"), ("sentence2", "#2 String"))),
    _t("qqp", "glue", _GLUE + ("qqp",), "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), 5,
       official="binary", label_column="is_duplicate"),
    _t("stsb", "glue", _GLUE + ("stsb",), "STS-B", ("sentence1", "sentence2"), (), 3, "pearson",
       official="stsb", formatter="stsb", label_column="score"),
    # differs from original: it loaded mnli from LysandreJik/glue-mnli-train; its mnli_mismatched had no target
    # length and crashed (5 here, as mnli).
    _t("mnli", "glue", _GLUE + ("mnli",), "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
       5, val_split="validation_matched", files=("train.tsv", "dev_matched.tsv"), **_MNLI),
    _t("mnli_mismatched", "glue", _GLUE + ("mnli",), "MNLI", ("premise", "hypothesis"),
       ("entailment", "neutral", "contradiction"), 5, val_split="validation_mismatched",
       files=("train.tsv", "dev_mismatched.tsv"), **_MNLI),
    # The original loaded SetFit/qnli, whose fields are text1/text2; GLUE's question/sentence are renamed to them.
    _t("qnli", "glue", _GLUE + ("qnli",), "QNLI", ("text1", "text2"), _NLI2, 5,
       columns=(("text1", "question"), ("text2", "sentence")),
       hub_rename=(("question", "text1"), ("sentence", "text2"))),
    _t("rte", "glue", _GLUE + ("rte",), "RTE", ("sentence1", "sentence2"), _NLI2, 5, k_rule="small"),
    # differs from original: it had no label words and no target length for wnli and crashed on every row;
    # GLUE's ids are 0 not_entailment, 1 entailment, and we use rte's target length.
    _t("wnli", "glue", _GLUE + ("wnli",), "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), 5),
    _t("boolq", "super_glue", _SG + ("boolq",), "BoolQ", ("passage", "question"), _BOOL, 2, label_names=_TF),
    _t("cb", "super_glue", _SG + ("cb",), "CB", ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"),
       5, "acc_f1macro", official="cb", k_rule="none"),
    # COPA's answer index is verbalized false/true: a quirk that defines the paper's COPA numbers.
    _t("copa", "super_glue", _SG + ("copa",), "COPA", ("choice1", "choice2", "premise", "question"), _BOOL, 2,
       label_names=("choice1", "choice2"), k_rule="none"),
    _t("multirc", "super_glue", _SG + ("multirc",), "MultiRC", ("question", "answer", "paragraph"), _BOOL, 5,
       "multirc", official="binary", label_names=_TF, reader="multirc_jsonl", grouped=True),
    _t("record", "super_glue", _SG + ("record",), "ReCoRD", ("passage", "query", "entities"), (), 10, "record",
       formatter="record", label_names=(), reader="record_jsonl"),
    _t("rte_superglue", "super_glue", _SG + ("rte",), "RTE", ("premise", "hypothesis"), _NLI2, 5, k_rule="small"),
    _t("wic", "super_glue", _SG + ("wic",), "WiC",
       ("start1", "end1", "sentence1", "start2", "end2", "sentence2", "word"), _BOOL, 2, label_names=_TF),
    _t("wsc", "super_glue", _SG + ("wsc",), "WSC", ("span1_text", "span1_index", "span2_text", "span2_index", "text"),
       (), 3, formatter="wsc", label_names=_TF, k_rule="none", keep_label=1),
    _t("wsc_bool", "super_glue", _SG + ("wsc",), "WSC",
       ("span1_text", "span1_index", "span2_text", "span2_index", "text"), _BOOL, 2, label_names=_TF, k_rule="none"),
]
TASKS: dict[str, Task] = {t.name: t for t in _REGISTRY}


def get_task(name: str) -> Task:
    """The registry entry; an unknown name raises DataError listing the valid ones."""
    _check_name(name, TASKS, "task")
    return TASKS[name]
