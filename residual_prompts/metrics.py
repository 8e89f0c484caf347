"""Metrics: the original's (compute_task_metrics of prompt_tuner2.py, reproduced with its quirks) and each
benchmark's official one, the constant-prediction baseline (ground floor: imports nothing of ours).
"""
from __future__ import annotations

import math
import re
import string
import warnings

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .tasks import Task

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


# ---------------------------------------------------------------------------------------------- names
# Metric names, the one table: official_metrics' keys -> the names Hugging Face's `evaluate` gives them (glue and
# super_glue: cola matthews_correlation, stsb pearson/spearmanr, mrpc/qqp accuracy/f1, cb accuracy/f1 (macro),
# multirc exact_match/f1_a, record exact_match/f1). transformers' Trainer prefixes them eval_ (test_ for a test
# split): metrics.jsonl, trainer_state.json, all_results.json, TensorBoard/W&B tags and the log line all use them.
HF_NAMES = {"acc": "accuracy", "f1": "f1", "f1_macro": "f1", "f1a": "f1_a", "em": "exact_match",
            "mcc": "matthews_correlation", "pearson": "pearson", "spearman": "spearmanr"}
# What results.json's "score" (the early-stopping score: the mean of the original metric's values) is, per
# ORIGINAL_METRICS kind: the y-axis of the plots and the tables.
SCORE_NAMES = {"mcc": "Matthews correlation", "pearson": "Pearson correlation", "acc": "accuracy",
               "acc_f1macro": "mean of accuracy and macro-F1", "multirc": "mean of EM and F1",
               "record": "mean of EM and F1"}


def hf_metrics(official: dict, prefix: str = "eval") -> dict:
    """official_metrics' dict under Hugging Face's names: {"acc": .5, "f1_macro": .3} -> {"eval_accuracy": .5,
    "eval_f1": .3}. An unknown key keeps its name (prefixed)."""
    return {f"{prefix}_{HF_NAMES.get(k, k)}": v for k, v in official.items()}


def score_name(task: Task) -> str:
    """What a task's score is, in words ("Matthews correlation" for cola)."""
    return SCORE_NAMES[task.metric]
