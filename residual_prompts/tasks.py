"""The task registry (ground floor): one ``Task`` per GLUE / SuperGLUE task, written as keyword data: input
fields, label words, target length, metric, splits, how its files are read. Each entry checks its option names
against the tables of residual_prompts.data and residual_prompts.metrics when it is built, so a typo fails at import.
"""
from __future__ import annotations

from dataclasses import dataclass

from .data import BENCHMARKS, BOOL_LABEL_NAMES, FORMATTERS, K_RULES, READERS
from .errors import DataError
from .metrics import OFFICIAL_METRICS, ORIGINAL_METRICS

@dataclass(frozen=True)
class Task:
    name: str                 # registry key
    benchmark: str            # "glue" | "super_glue"
    hub: tuple                # (path, config) for datasets.load_dataset
    local_dir: str            # folder of the official download
    keys: tuple               # input fields, in the original's order (they become "key: value" in the source)
    label_words: tuple        # target word by class id; () where the target is not a class (stsb, record, wsc)
    target_len: int           # target tokens incl. </s>, as the original's task_to_target_len
    val_split: str = "validation"  # Hub split used as "validation"
    metric: str = "acc"       # the original's compute_task_metrics branch, a key of ORIGINAL_METRICS
    official: str = "same"    # the benchmark's own metric, a key of OFFICIAL_METRICS
    formatter: str = "fields"  # how a row becomes text, a key of FORMATTERS
    label_names: tuple | None = None  # HF ClassLabel names (class id order); None = the label words; () = none
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
        if self.label_names is None:  # true for every GLUE task whose tsv writes strings or 0/1
            object.__setattr__(self, "label_names", self.label_words)
        object.__setattr__(self, "reader", self.reader or reader)
        object.__setattr__(self, "files", self.files or files)
        for field, table in (("metric", ORIGINAL_METRICS), ("official", OFFICIAL_METRICS),
                             ("formatter", FORMATTERS), ("reader", READERS), ("k_rule", K_RULES)):
            _check_name(getattr(self, field), table, f"{field} of task {self.name}")


def _check_name(name, table, what):
    if name not in table:
        raise DataError(f"unknown {what} {name!r}: valid names are {', '.join(map(str, table))}")


# ---------------------------------------------------------------------------------------------- registry
_GLUE, _SG = ("nyu-mll/glue",), ("aps/super_glue",)
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("false", "true")
_TF = BOOL_LABEL_NAMES
_MNLI = dict(columns=(("premise", "sentence1"), ("hypothesis", "sentence2")), label_column="gold_label")
_REGISTRY = [
    Task(name="cola", benchmark="glue", hub=_GLUE + ("cola",), local_dir="CoLA", keys=("sentence",),
         label_words=("not_acceptable", "acceptable"), target_len=5, metric="mcc",
         label_names=("unacceptable", "acceptable"), formatter="sentence", k_rule="small",
         tsv_header=("source", "label", "original_label", "sentence")),  # CoLA's tsv has no header row
    Task(name="sst2", benchmark="glue", hub=_GLUE + ("sst2",), local_dir="SST-2", keys=("sentence",),
         label_words=("negative", "positive"), target_len=2, formatter="sentence", val_k=400),
    Task(name="mrpc", benchmark="glue", hub=_GLUE + ("mrpc",), local_dir="MRPC", keys=("sentence1", "sentence2"),
         label_words=("not_equivalent", "equivalent"), target_len=5, official="binary", k_rule="small",
         label_column="Quality", columns=(("sentence1", "#1 String"), ("sentence2", "#2 String"))),
    Task(name="qqp", benchmark="glue", hub=_GLUE + ("qqp",), local_dir="QQP", keys=("question1", "question2"),
         label_words=("not_duplicate", "duplicate"), target_len=5, official="binary",
         label_column="is_duplicate"),
    Task(name="stsb", benchmark="glue", hub=_GLUE + ("stsb",), local_dir="STS-B", keys=("sentence1", "sentence2"),
         label_words=(), target_len=3, metric="pearson", official="stsb", formatter="stsb",
         label_column="score"),
    # differs from original: it loaded mnli from LysandreJik/glue-mnli-train; its mnli_mismatched had no target
    # length and crashed (5 here, as mnli).
    Task(name="mnli", benchmark="glue", hub=_GLUE + ("mnli",), local_dir="MNLI", keys=("premise", "hypothesis"),
         label_words=("entailment", "neutral", "contradiction"), target_len=5, val_split="validation_matched",
         files=("train.tsv", "dev_matched.tsv"), **_MNLI),
    Task(name="mnli_mismatched", benchmark="glue", hub=_GLUE + ("mnli",), local_dir="MNLI", keys=("premise",
         "hypothesis"), label_words=("entailment", "neutral", "contradiction"), target_len=5,
         val_split="validation_mismatched", files=("train.tsv", "dev_mismatched.tsv"), **_MNLI),
    # The original loaded SetFit/qnli, whose fields are text1/text2; GLUE's question/sentence are renamed to them.
    Task(name="qnli", benchmark="glue", hub=_GLUE + ("qnli",), local_dir="QNLI", keys=("text1", "text2"),
         label_words=_NLI2, target_len=5, columns=(("text1", "question"), ("text2", "sentence")),
         hub_rename=(("question", "text1"), ("sentence", "text2"))),
    Task(name="rte", benchmark="glue", hub=_GLUE + ("rte",), local_dir="RTE", keys=("sentence1", "sentence2"),
         label_words=_NLI2, target_len=5, k_rule="small"),
    # differs from original: it had no label words and no target length for wnli, and failed before reading any row
    # (a KeyError on task_to_target_len in PromptTuner's constructor);
    # GLUE's ids are 0 not_entailment, 1 entailment, and we use rte's target length.
    Task(name="wnli", benchmark="glue", hub=_GLUE + ("wnli",), local_dir="WNLI", keys=("sentence1", "sentence2"),
         label_words=("not_entailment", "entailment"), target_len=5),
    Task(name="boolq", benchmark="super_glue", hub=_SG + ("boolq",), local_dir="BoolQ", keys=("passage", "question"),
         label_words=_BOOL, target_len=2, label_names=_TF),
    Task(name="cb", benchmark="super_glue", hub=_SG + ("cb",), local_dir="CB", keys=("premise", "hypothesis"),
         label_words=("entailment", "contradiction", "neutral"), target_len=5, metric="acc_f1macro",
         official="cb", k_rule="none"),
    # COPA's answer index is verbalized false/true: a quirk that defines the paper's COPA numbers.
    Task(name="copa", benchmark="super_glue", hub=_SG + ("copa",), local_dir="COPA", keys=("choice1", "choice2",
         "premise", "question"), label_words=_BOOL, target_len=2, label_names=("choice1", "choice2"),
         k_rule="none"),
    Task(name="multirc", benchmark="super_glue", hub=_SG + ("multirc",), local_dir="MultiRC", keys=("question",
         "answer", "paragraph"), label_words=_BOOL, target_len=5, metric="multirc", label_names=_TF,
         official="binary", reader="multirc_jsonl", grouped=True),
    Task(name="record", benchmark="super_glue", hub=_SG + ("record",), local_dir="ReCoRD", keys=("passage", "query",
         "entities"), label_words=(), target_len=10, metric="record", formatter="record",
         reader="record_jsonl"),
    Task(name="rte_superglue", benchmark="super_glue", hub=_SG + ("rte",), local_dir="RTE", keys=("premise",
         "hypothesis"), label_words=_NLI2, target_len=5, k_rule="small"),
    Task(name="wic", benchmark="super_glue", hub=_SG + ("wic",), local_dir="WiC", keys=("start1", "end1", "sentence1",
         "start2", "end2", "sentence2", "word"), label_words=_BOOL, target_len=2, label_names=_TF),
    Task(name="wsc", benchmark="super_glue", hub=_SG + ("wsc",), local_dir="WSC", keys=("span1_text", "span1_index",
         "span2_text", "span2_index", "text"), label_words=(), target_len=3, label_names=_TF, formatter="wsc",
         k_rule="none", keep_label=1),
    Task(name="wsc_bool", benchmark="super_glue", hub=_SG + ("wsc",), local_dir="WSC", keys=("span1_text",
         "span1_index", "span2_text", "span2_index", "text"), label_words=_BOOL, target_len=2,
         label_names=_TF, k_rule="none"),
]
TASKS: dict[str, Task] = {t.name: t for t in _REGISTRY}


def get_task(name: str) -> Task:
    """The registry entry; an unknown name raises DataError listing the valid ones."""
    _check_name(name, TASKS, "task")
    return TASKS[name]
