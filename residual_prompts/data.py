"""Data: text-to-text formatting, tokenization, loading (Hub or official files, every row checked), splits and
few-shot selection, and the data fingerprint (ground floor: imports only errors.py; tasks are residual_prompts.tasks).

Everything here reproduces the original implementation (github arazd/ResidualPrompts, commit 53087ca:
``t5_dataset.py`` and ``prompt_tuner2.py``); the golden files in ``shared/golden`` were recorded by running it and
``tests/test_data.py`` checks this module against them. Deliberate differences say ``differs from original:``.

Flow: ``tasks.get_task(name)`` -> ``build_splits(task, ...)`` (rows in Hugging Face format, in served order)
-> ``format_example(task, row)`` -> ``encode_batch(tokenizer, texts, max_length)`` (unpadded ids) ... the model
generates ... -> ``metrics.evaluate(task, decoded, targets, groups)``. ``data_fingerprint(splits)`` identifies the
rows a run uses (recorded with its results, compared on resume).

Every row ``load_split`` returns, from an official file or from the Hub, has passed ``check_row``: each field the
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
import warnings

from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    from .tasks import Task

BOOL_LABEL_NAMES = ("False", "True")  # HF ClassLabel names of the tasks whose official files write JSON booleans

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
    return task.label_names == BOOL_LABEL_NAMES


def label_id(task, raw, where):
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


# The one validation layer: every row load_split returns passes check_row, whether it came from an official file
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


def check_row(task, row, where):
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
            row["label"] = label_id(task, rec[task.label_column], where)
            rows.append(check_row(task, row, where))
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
        row["label"] = label_id(task, _need(obj, "label", where), where)
        rows.append(check_row(task, row, where))
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
                       "label": label_id(task, _need(a, "label", where), where)}
                rows.append(check_row(task, row, where))
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
            rows.append(check_row(task, row, at))
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
    raise DataError(f"missing data file {expected}: download {title} ({task.local_dir}/{fname}; python "
                    f"scripts/get_data.py DIR --tasks {task.name} writes it) or drop --data_dir to use the Hub")


def _load_hub(task, split):
    import datasets  # lazily: the offline path and the metrics must not need it
    hub_split = task.val_split if split == "validation" else "train"
    try:
        ds = datasets.load_dataset(*task.hub, split=hub_split)
    except Exception as e:  # network, auth, renamed repos: one line with the way out
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"cannot load {'/'.join(task.hub)} split {hub_split} from the Hugging Face Hub "
                        f"({type(e).__name__}: {msg}): check the connection, or pass --data_dir DIR with the official "
                        f"files (python scripts/get_data.py DIR writes them where the Hub is reachable)") from None
    rename = dict(task.hub_rename)
    where = f"{'/'.join(task.hub)} split {hub_split} (Hugging Face Hub) row"
    return [check_row(task, {rename.get(k, k): v for k, v in row.items()}, f"{where} {i}")
            for i, row in enumerate(ds.to_list())]


def load_split(task: Task, split: str, data_dir: str | None = None) -> list[dict]:
    """Rows of "train" or "validation" in Hugging Face format (integer class ids, stsb float32 score as float),
    each checked by ``check_row`` whatever its source; a file that is not valid UTF-8 raises DataError."""
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
