"""Lay out the GLUE / SuperGLUE files that train.py --data_dir reads, from the Hugging Face Hub copies.

    python scripts/get_data.py data/                                # SuperGLUE: data/super_glue/<Task>/*.jsonl
    python scripts/get_data.py data/ --tasks cb,copa,rte_superglue  # some tasks
    python scripts/get_data.py data/ --tasks glue                   # GLUE: data/glue/<Task>/*.tsv
    python train.py --task cb --data_dir data/ ...                  # then, on any machine, with no network

Run it where the Hub is reachable (a login node), then copy DIR to machines without network. It loads what train.py
loads without --data_dir (nyu-mll/glue, aps/super_glue, with the `datasets` library: the Hugging Face cache is
used, and filled) and writes, for each task, the training and validation files in the layout of the benchmarks'
own downloads (docs/USAGE.md, "Models and data offline"):

    super_glue/<Task>/train.jsonl, val.jsonl   Task: BoolQ CB COPA MultiRC ReCoRD RTE WiC WSC
    glue/<Task>/train.tsv, dev.tsv             Task: CoLA SST-2 MRPC QQP STS-B MNLI QNLI RTE WNLI
                                               (MNLI: dev_matched.tsv, dev_mismatched.tsv; CoLA without a header)

Labels are written as the official files write them (CB/RTE/QNLI/MNLI label names, BoolQ/WiC/WSC booleans,
MultiRC/COPA and the other GLUE tasks 0/1 ids, STS-B the score); MultiRC and ReCoRD are nested again (passage ->
questions -> answers; passage -> entities, qas) and WSC's spans go under "target". Columns or fields the Hub copies
do not carry (GLUE's pair ids, genres and parses; ReCoRD answer offsets of answers that are no entity) are left
out or empty; train.py does not read them. Each file is written to a temporary name, read back with train.py's own
reader (data_utils.load_split) and compared row by row with the Hub rows, then renamed into place. Existing files
are kept (--overwrite 1 replaces them); test splits (unlabelled) are not written.

--tasks: task names (python train.py --help), or superglue (default: its 8 benchmarks), glue, all.
Exit codes: 0 done, 1 a written file did not read back as the Hub rows (a bug: please report), 2 bad input or the
Hub not reachable (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data_utils  # noqa: E402
from residual_prompts.errors import EXIT_BAD_INPUT, EXIT_FAILED  # noqa: E402
from data_utils import TASKS  # noqa: E402

GROUPS = {"superglue": [t for t in TASKS if TASKS[t].benchmark == "super_glue"],
          "glue": [t for t in TASKS if TASKS[t].benchmark == "glue"], "all": list(TASKS)}
# The official GLUE headers (the columns train.py reads are filled; the others are left empty). CoLA has none.
GLUE_HEADERS = {
    "SST-2": ("sentence", "label"),
    "MRPC": ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
    "QQP": ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
    "STS-B": ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"),
    "MNLI": ("index", "promptID", "pairID", "genre", "sentence1", "sentence2", "gold_label"),
    "QNLI": ("index", "question", "sentence", "label"),
    "RTE": ("index", "sentence1", "sentence2", "label"),
    "WNLI": ("index", "sentence1", "sentence2", "label"),
}
GLUE_NAMED_LABELS = ("MNLI", "QNLI", "RTE")  # GLUE files that write label names; the others write 0/1


class GetDataError(Exception):
    """One line naming the problem and the way out (exit 2)."""


class MismatchError(Exception):
    """A written file does not read back as the Hub rows (exit 1)."""


# ---------------------------------------------------------------------------------------------- what to write
def select_tasks(text):
    names = []
    for part in (p.strip() for p in text.split(",")):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in TASKS:
            names.append(part)
        else:
            raise GetDataError(f"--tasks: unknown task or group {part!r}; valid: {', '.join(GROUPS)}, "
                               f"{', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def plan(tasks, out_dir):
    """[(path, task, split)], one per file: tasks that share a file (wsc/wsc_bool, mnli/mnli_mismatched) once."""
    files = {}
    for name in tasks:
        task = TASKS[name]
        for split, fname in zip(("train", "validation"), task.files):
            files.setdefault(os.path.join(out_dir, task.benchmark, task.local_dir, fname), (task, split))
    return [(path, task, split) for path, (task, split) in files.items()]


# ---------------------------------------------------------------------------------------------- the Hub
def _offline():
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_rows(task, split):
    """The Hub rows of a task's split (as data_utils reads them without --data_dir: its field names)."""
    import datasets

    hub_split = task.val_split if split == "validation" else "train"
    try:
        ds = datasets.load_dataset(*task.hub, split=hub_split)
    except Exception as e:  # network, offline mode, renamed repositories: one line with the way out
        first = (str(e).strip().splitlines() or [""])[0][:200]
        why = (" HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set and the dataset is not in the local cache: run this "
               "where the Hub is reachable and copy the folder, or unset them" if _offline() else
               " check the connection (or run this on a machine that has one and copy the folder)")
        raise GetDataError(f"cannot load {'/'.join(task.hub)} split {hub_split} from the Hugging Face Hub "
                           f"({type(e).__name__}: {first});{why}") from None
    rename = dict(task.hub_rename)
    return [{rename.get(k, k): v for k, v in row.items()} for row in ds.to_list()]


# ---------------------------------------------------------------------------------------------- writers
def _glue_label(task, label):
    if not task.label_names:  # STS-B: the shortest text that gives back the float32 score
        import numpy as np

        return np.format_float_positional(np.float32(label), trim="-")
    return task.label_names[label] if task.local_dir in GLUE_NAMED_LABELS else str(int(label))


def _cell(value, where):
    text = str(value)
    if "\t" in text or "\n" in text or "\r" in text:
        raise GetDataError(f"{where}: a tab or line break in {text[:60]!r} cannot be written to a GLUE tsv")
    return text


def tsv_lines(task, rows):
    """Lines of a GLUE tsv in the official layout."""
    column_of = dict(task.columns or tuple((k, k) for k in task.keys))  # our field -> file column
    field_of = {col: ours for ours, col in column_of.items()}
    if task.tsv_header:  # CoLA: no header row; source, label, original label ("*" = unacceptable), sentence
        header, lines = task.tsv_header, []
    else:
        header = GLUE_HEADERS[task.local_dir]
        lines = ["\t".join(header)]
    for n, row in enumerate(rows):
        cells = []
        for col in header:
            if col == task.label_column:
                value = _glue_label(task, row["label"])
            elif col in field_of:
                value = row[field_of[col]]
            elif col in ("index", "id"):
                value = row.get("idx", n)
            elif col == "original_label":
                value = "" if row["label"] else "*"
            else:
                value = ""
            cells.append(_cell(value, f"{task.name} row {n}"))
        lines.append("\t".join(cells))
    return lines


def _sg_label(task, label):
    if task.reader == "multirc_jsonl" or task.label_names == ("choice1", "choice2"):
        return int(label)  # MultiRC answers and COPA: 0/1
    if task.label_names == ("False", "True"):
        return bool(label)  # BoolQ, WiC, WSC
    return task.label_names[label]  # CB, RTE: the label name


def _spans(row):
    """ReCoRD entity spans of a Hub row: [(start, end)] (the Hub stores a dict of lists or a list of dicts)."""
    spans = row.get("entity_spans")
    if isinstance(spans, dict):
        return list(zip(spans["start"], spans["end"]))
    if spans:
        return [(s["start"], s["end"]) for s in spans]
    found = []  # no spans: the first occurrence of each entity in the passage
    for entity in row["entities"]:
        start = row["passage"].find(entity)
        if start >= 0:
            found.append((start, start + len(entity) - 1))
    return found


def jsonl_objects(task, rows):
    """Objects of a SuperGLUE jsonl in the official layout (MultiRC and ReCoRD nested, WSC spans under target)."""
    if task.reader == "multirc_jsonl":
        passages = {}
        for row in rows:
            idx = row["idx"]
            p = passages.setdefault(idx["paragraph"], {"idx": idx["paragraph"], "version": 1.1,
                                                       "passage": {"text": row["paragraph"], "questions": {}}})
            q = p["passage"]["questions"].setdefault(idx["question"], {"question": row["question"], "answers": [],
                                                                        "idx": idx["question"]})
            q["answers"].append({"text": row["answer"], "idx": idx["answer"], "label": _sg_label(task, row["label"])})
        for p in passages.values():
            p["passage"]["questions"] = list(p["passage"]["questions"].values())
        return list(passages.values())
    if task.reader == "record_jsonl":
        passages = {}
        for row in rows:
            idx = row["idx"]
            if idx["passage"] not in passages:
                spans = sorted(set(_spans(row)))
                passages[idx["passage"]] = {"source": "", "passage": {
                    "text": row["passage"], "entities": [{"start": s, "end": e} for s, e in spans]},
                    "qas": [], "idx": idx["passage"]}
            p = passages[idx["passage"]]
            where = {row["passage"][s:e + 1]: (s, e) for s, e in reversed([(x["start"], x["end"]) for x in
                                                                          p["passage"]["entities"]])}
            answers = [{"start": where[a][0], "end": where[a][1], "text": a} if a in where else {"text": a}
                       for a in row["answers"]]
            p["qas"].append({"query": row["query"], "answers": answers, "idx": idx["query"]})
        return list(passages.values())
    objects = []
    for row in rows:
        obj = {k: row[k] for k in task.keys}
        if task.local_dir == "WSC":
            obj = {"text": row["text"], "target": {k: row[k] for k in ("span2_index", "span1_index", "span1_text",
                                                                         "span2_text")}}
        obj["idx"] = row["idx"]
        obj["label"] = _sg_label(task, row["label"])
        objects.append(obj)
    return objects


def file_text(task, rows):
    if task.benchmark == "glue":
        return "\n".join(tsv_lines(task, rows)) + "\n"
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in jsonl_objects(task, rows))


# ---------------------------------------------------------------------------------------------- read-back check
def _same(task, written, hub):
    """None when train.py's reader gives back the Hub rows, else the first difference."""
    if len(written) != len(hub):
        return f"{len(written)} rows read back, {len(hub)} from the Hub"
    for n, (w, h) in enumerate(zip(written, hub)):
        for k, v in w.items():
            if k == "idx" and task.benchmark == "glue":
                continue  # the tsv reader numbers the rows itself
            want = h.get(k)
            if k == "entities":
                v, want = set(v), set(want or ())
            if v != want:
                return f"row {n} field {k!r}: {v!r} read back, {want!r} from the Hub"
    return None


def write_file(path, task, split, rows):
    """Write, read back with data_utils.load_split, compare, then rename into place."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp_root = os.path.join(os.path.dirname(os.path.dirname(folder)), f".tmp-get_data-{os.getpid()}")
    tmp_file = os.path.join(tmp_root, task.benchmark, task.local_dir, os.path.basename(path))
    os.makedirs(os.path.dirname(tmp_file), exist_ok=True)
    try:
        with open(tmp_file, "w", encoding="utf-8") as f:
            f.write(file_text(task, rows))
        read = data_utils.load_split(task, split, tmp_root)  # train.py's reader, on <tmp_root>/<benchmark>/<Task>
        problem = _same(task, read, rows)
        if problem:
            raise MismatchError(f"{path}: the written file does not read back as the Hub rows ({problem})")
        os.replace(tmp_file, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("out_dir", metavar="DIR", help="the folder to pass to train.py --data_dir")
    p.add_argument("--tasks", default="superglue",
                   help="comma-separated task names or groups: superglue (default), glue, all")
    p.add_argument("--overwrite", type=int, default=0, choices=[0, 1], help="1: replace files that exist")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        files = plan(select_tasks(args.tasks), args.out_dir)
        todo = [f for f in files if args.overwrite or not os.path.exists(f[0])]
        for path, task, split in files:
            if (path, task, split) not in todo:
                print(f"kept {path} (exists; --overwrite 1 replaces it)")
        for path, task, split in todo:
            rows = hub_rows(task, split)
            write_file(path, task, split, rows)
            print(f"wrote {path}: {len(rows)} {task.local_dir} {split} rows from {'/'.join(task.hub)}", flush=True)
    except GetDataError as e:
        print(f"get_data.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except data_utils.DataError as e:  # a Hub row train.py would refuse: the Hub copy changed
        print(f"get_data.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MismatchError as e:
        print(f"get_data.py: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if todo:
        print(f"done: python train.py --data_dir {args.out_dir} ... reads them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
