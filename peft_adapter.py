"""The PEFT prompt-tuning adapter of a T5 or causal LM run: written into every finished prompt run's folder of a
family whose wrapper says PEFT_EXACT (``adapter/``, train.py --save_adapter) and by scripts/export_peft.py; pushed
to the Hub with train.py --push_to_hub REPO. A causal LM's adapter has task type CAUSAL_LM (prompt before the
input, docs/DECODERS.md); what follows describes T5's.

The adapter holds the best projected prompt phi(x) [P, H] (checkpoint.pt's ``projected_prompt``, else prompt.npy)
as PEFT's ``prompt_embeddings`` (PromptTuningConfig, task_type SEQ_2_SEQ_LM, num_virtual_tokens P, token_dim H,
num_transformer_submodules 1: the prompt goes before the encoder input only, as in train.py). It is written by PEFT
itself (get_peft_model on the base model's architecture, built on the meta device from its config: no weights are
loaded, then save_pretrained) and read back and compared bit for bit. The reparameterization is not needed:
inference uses phi(x) only. Same numbers as train.py's evaluation (tests/test_export_peft.py), provided the input is
what train.py fed the model (see the model card this module writes beside it).

The base model: the run's model/ folder when the run also trained model weights, else args.json's model_name
(or the one given). A local folder is recorded as an absolute path, so the adapter loads from any folder
(AutoPeftModelForSeq2SeqLM.from_pretrained(DIR)); a Hub name stays a name. Refused with AdapterError (one line): a
full fine-tuning run, a BERT-style encoder run (its prompt feeds an encoder and a classification head, which PEFT's
prompt tuning adapters do not hold), an unfinished run, a non-empty output folder.
"""
from __future__ import annotations

import os
import shutil

from residual_prompts.peft_export import AdapterError, write_peft_adapter
from run_files import ADAPTER_DIR

ROOT = os.path.dirname(os.path.abspath(__file__))


ExportError = AdapterError  # the name scripts/export_peft.py used


def read_run(run_dir):
    """-> (args, projected prompt [P, H] float32 tensor). Refuses what has no prompt or is unfinished."""
    import run_files as rf
    from residual_prompts import models

    paths = {f: os.path.join(run_dir, f) for f in (rf.ARGS, rf.RESULTS, rf.CHECKPOINT, rf.PROMPT)}
    if not (os.path.isfile(paths[rf.ARGS]) and os.path.isfile(paths[rf.RESULTS])):
        raise AdapterError(f"{run_dir} is not a run folder (no args.json and results.json); give save_dir/save_name "
                          f"of a train.py run")
    args, results = rf.read_json(paths[rf.ARGS]), rf.read_json(paths[rf.RESULTS])
    if not args or not results:
        raise AdapterError(f"{run_dir}: args.json or results.json is not a run's JSON object; rerun train.py")
    # results.json records the family; records older than that field show an encoder by its trained head
    family = results.get("family", "encoder" if (results.get("trainable_params") or {}).get("head") else "t5")
    if not getattr(models.FAMILIES.get(family), "PEFT_EXACT", False):
        kind = ("a BERT-style encoder run (a classification head on [CLS])" if family == "encoder"
                else f"a {family} run")
        raise AdapterError(f"{run_dir} is {kind}; PEFT's prompt tuning adapters here are for T5 and causal LM runs "
                          f"only (whose numbers they reproduce): use its checkpoint.pt and prompt.npy")
    if int(args.get("prefix_len", 0)) == 0:
        model_dir = os.path.join(run_dir, "model")
        raise AdapterError(f"{run_dir} is a full fine-tuning run (--prefix_len 0): it has no prompt to export; its "
                          f"trained model is {model_dir} (T5ForConditionalGeneration.from_pretrained)")
    if not rf.is_complete(results):
        raise AdapterError(f"{run_dir} is not finished (results.json complete is not true): run its train.py command "
                          f"again to complete it, then export")
    problem = rf.run_problem(args, results)
    if problem:
        raise AdapterError(f"{run_dir}: {problem}: retrain the run (or restore its files)")
    import torch

    import run_folder

    prompt = None
    try:
        if os.path.isfile(paths[rf.CHECKPOINT]):
            prompt = run_folder.load_checkpoint(paths[rf.CHECKPOINT])["projected_prompt"]
        if os.path.isfile(paths[rf.PROMPT]):
            npy = torch.from_numpy(_load_npy(paths[rf.PROMPT]))
    except rf.ConfigError as e:
        raise AdapterError(str(e)) from None
    if os.path.isfile(paths[rf.PROMPT]):
        if prompt is not None and not torch.equal(prompt.float(), npy.float()):
            raise AdapterError(f"{run_dir}: checkpoint.pt's projected_prompt and prompt.npy differ; the folder mixes "
                              f"two runs: retrain it")
        prompt = npy if prompt is None else prompt
    if prompt is None:
        raise AdapterError(f"{run_dir} has neither checkpoint.pt nor prompt.npy: nothing to export")
    prompt = prompt.float().contiguous()
    if prompt.ndim != 2 or prompt.shape[0] != int(args["prefix_len"]):
        raise AdapterError(f"{run_dir}: the prompt has shape {list(prompt.shape)}, expected [prefix_len, H] with "
                          f"prefix_len {args['prefix_len']}")
    return args, prompt


def _load_npy(path):
    """prompt.npy: a finite 2-D float array (no pickles), else ConfigError naming it."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise AdapterError(f"cannot read {path} ({type(e).__name__}): it is not a prompt.npy of this program; "
                           f"retrain the run") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind != "f" or not np.isfinite(array).all():
        raise AdapterError(f"{path} is not a finite [P, H] float array: retrain the run")
    return array


def check_out_dir(out_dir):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise AdapterError(f"OUT_DIR {out_dir} is a file; give a new folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise AdapterError(f"OUT_DIR {out_dir} is not empty; give a new or empty folder (nothing is overwritten)")


def resolve_base(name, search=(".", ROOT)):
    """A local model folder as an absolute path (a relative one looked up in ``search`` in turn: the current folder,
    then the project root); anything else is a Hub name and stays as it is."""
    if os.path.isabs(name):
        return name
    for base in search:
        path = os.path.join(base, name)
        if os.path.isdir(path):
            return os.path.abspath(path)
    return name


def _first(e):
    return (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:200]


def base_config(name):
    """-> (the base model's config, its wrapper class); refuses a family whose runs PEFT's adapter does not
    reproduce (BERT-style encoders)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from residual_prompts import models

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # any failure here is a problem with the model named
        raise AdapterError(f"cannot load the base model {name!r} ({_first(e)}); pass --base_model with a local T5 "
                           f"folder or a reachable Hub name") from None
    family = models.family_of(config)
    if not getattr(models.FAMILIES.get(family), "PEFT_EXACT", False):
        kind = "a BERT-style encoder" if family == "encoder" else f"a {config.model_type!r} model"
        raise AdapterError(f"the base model {name!r} is {kind}; PEFT prompt tuning adapters are written for T5 and causal "
                           f"LM runs only (an encoder run's prompt is in its checkpoint.pt and prompt.npy)")
    return config, models.FAMILIES[family]


def export(run_dir, out_dir, base_model=None):
    """Write the adapter; returns (its PromptTuningConfig, the base model name recorded)."""
    check_out_dir(out_dir)  # the refusals come before the slow imports
    args, prompt = read_run(run_dir)  # [P, H]
    if base_model is None:
        trained = os.path.join(run_dir, "model")
        base_model = trained if os.path.isdir(trained) else args["model_name"]
        base_model = resolve_base(base_model)
    else:
        base_model = resolve_base(base_model, search=("."))  # a path given here is relative to the current folder
    model_config, family = base_config(base_model)
    n_tokens, width = prompt.shape
    model_width = getattr(model_config, "d_model", None) or model_config.hidden_size
    if width != model_width:
        raise AdapterError(f"the prompt is {width} wide but the base model {base_model!r} has width "
                           f"{model_width}; pass --base_model the model the run was trained on")
    card = model_card(run_dir, args, n_tokens, width, base_model, os.path.basename(os.path.abspath(out_dir)),
                      family.FAMILY)
    loaded = write_peft_adapter(out_dir, prompt, model_config, base_model, family.PEFT_TASK_TYPE, readme=card)
    return loaded, base_model


def train_command(args):
    """The train.py command of a run: the flags whose value is not the default, as few as give back the same
    resolved arguments (args.json records what train.py resolved, e.g. prompt_init vocab, eval_batch_size 32)."""
    import contextlib
    import io
    import shlex

    import arguments
    from residual_prompts.errors import ConfigError

    parser = arguments.build_parser()
    flags = {a.dest: f"--{name}" for name, a in parser.flags.items()}
    skip = {"progress", "overwrite", "resume"}  # how the run went, not what it computed

    def text(v):
        return f"{v:g}" if isinstance(v, float) and float(f"{v:g}") == v else str(v)

    def argv(keys):
        out = []
        for k in keys:
            out += [flags[k], text(args[k])]
        return out

    def resolved(keys):
        try:  # quietly: the parser prints its refusals, check_args its notes
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                parsed = parser.parse_args(argv(keys))
                arguments.check_args(parsed)
        except (SystemExit, ConfigError, ValueError, TypeError, KeyError):  # a run this train.py cannot redo
            return None
        return {k: getattr(parsed, k) for k in target}

    target = {k: args[k] for k in flags if k in args and k not in skip}  # flags newer than the run: not compared
    keys = [k for k in flags if k in args and k not in skip and args[k] is not None
            and (args[k] != parser.get_default(k) or k in ("task", "save_name", "model_name"))]
    if resolved(keys) == target:  # drop what train.py would resolve by itself
        for k in list(keys):
            if k not in ("task", "save_name", "save_dir", "model_name", "data_dir"):
                fewer = [x for x in keys if x != k]
                if resolved(fewer) == target:
                    keys = fewer
    chunks = [shlex.join(argv([k])) for k in keys]  # one flag and its value each, wrapped at ~100 characters
    lines, line = [], "python train.py"
    for chunk in chunks:
        if len(line) + 1 + len(chunk) > 100:
            lines.append(line + " \\")
            line = "    " + chunk
        else:
            line += " " + chunk
    return "\n".join(lines + [line])


def _pct(v):
    return "–" if v is None else f"{100 * float(v):.1f}"


def _metrics(d):
    return ", ".join(f"{k} {100 * float(v):.1f}" for k, v in (d or {}).items() if v is not None) or "–"


def _score_rows(results, test):
    """The model card's score table rows: the best validation epoch, and the test subset when the run had one."""
    n = results.get("n_examples") or {}
    best_epoch = results.get("best_epoch")
    best = next((e for e in results.get("validation", []) if e.get("epoch") == best_epoch), {})
    rows = [f"| validation, best epoch {best_epoch} ({n.get('validation', '?')} rows) | "
            f"{_pct(results.get('best_val_score'))} | {_metrics(best.get('official'))} |"]
    if test:
        rows.append(f"| test subset, best state ({n.get('test', '?')} rows) | {_pct(test.get('score'))} | "
                    f"{_metrics(test.get('official'))} |")
    return rows


def _reparam_text(args):
    reparam = args.get("prefix_MLP")
    if reparam == "None":
        return "none (plain prompt tuning)"
    size = f", bottleneck {args.get('bottleneck_size')}" if reparam in ("MLP1", "MLP2") else ""
    return f"`{reparam}`{size}" + (", with" if int(args.get("residual", 1)) else ", without") + " the skip connection"


def _input_text(task):
    """What the task's input looks like, as data_utils.format_example writes it."""
    if task.formatter in ("fields", "stsb"):
        return "".join(f"{k}: ... " for k in task.keys).strip()
    return {"sentence": "...", "record": "passage : ... query: ... entities: A; B; C"}.get(task.formatter,
                                                                                         "... *he* ...")  # wsc


def model_card(run_dir, args, n_tokens, width, base_model, folder_name, family="t5"):
    """README.md of the adapter: what it is, its scores, how it was trained, how to use it (``family``: "t5" or
    "causal_lm", the wrapper's FAMILY)."""
    import data_utils
    import run_files as rf

    results = rf.read_json(os.path.join(run_dir, rf.RESULTS))
    task = data_utils.get_task(args["task"])
    method = rf.method_label(args)
    keep = int(args["seq_len"]) - n_tokens
    hub = not os.path.isabs(base_model)
    n = results.get("n_examples") or {}
    test = results.get("test")
    rows = _score_rows(results, test)
    split_note = ("the validation split was cut in two (`--get_test_subset 1`): one half chose the best epoch, the "
                  "other (test subset) scores it" if test else "the best epoch was chosen on these same validation "
                  "rows (`--get_test_subset 0`), so the score is optimistic")
    dataset = "/".join(task.hub)
    reparam_text = _reparam_text(args)
    text = _input_text(task)
    k = int(args.get("select_k_per_class", -1))
    few_shot = "" if k == -1 else f" (few-shot: {k} per class)"
    answers = (", ".join(f"`{w}`" for w in task.label_words) if task.label_words else
               "a number" if task.formatter == "stsb" else "an entity" if task.formatter == "record" else "a word")
    base_note = ("" if hub else f"\n`{base_model}` is a local folder of the machine that exported the adapter: "
                 f"elsewhere, load your copy of that model and pass it as `base` below.\n")
    front = ["---", "library_name: peft", *([f"base_model: {base_model}"] if hub else []),
             f"pipeline_tag: {'text2text-generation' if family == 't5' else 'text-generation'}",
             f"datasets:\n- {task.hub[0]}",
             f"tags:\n- prompt-tuning\n- residual-prompt-tuning\n- {'t5' if family == 't5' else 'causal-lm'}",
             "---", ""]
    if family != "t5":
        return "\n".join(front) + _causal_card(run_dir, args, n_tokens, width, base_model, folder_name, task, method,
                                               rows, split_note, reparam_text, base_note)
    return "\n".join(front) + f"""
# {method} soft prompt for `{task.name}`

A soft prompt of {n_tokens} tokens x {width} for the frozen T5 model `{base_model}`, trained with
{method} ([Residual Prompt Tuning](https://arxiv.org/abs/2305.03937), Razdaibiedina et al., Findings of ACL 2023)
on the {data_utils.BENCHMARKS[task.benchmark][0]} task `{task.name}` (Hub `{dataset}`), stored as a PEFT prompt tuning
adapter (`PROMPT_TUNING`, `SEQ_2_SEQ_LM`, prepended to the encoder input only). It holds the best projected prompt
φ(x); the reparameterization used in training is not needed at inference.
{base_note}
## Scores

Score x 100; the score is the task's early-stopping score (the mean of its metrics where it has two); {split_note}.

| split | score | metrics |
|---|---|---|
""" + "\n".join(rows) + f"""

## Training

- method: {method}; prompt length {n_tokens}
- reparameterization: {reparam_text}
- learning rate {args.get('lr')}, batch size {args.get('batch_size')}, epochs {args.get('num_epochs')}, \
seed {args.get('seed')}
- input length (prompt included): {args.get('seq_len')} tokens
- training rows: {n.get('train', '?')}{few_shot}

The command that trained it (the project's `train.py`, run from its root):

```bash
{train_command(args)}
```

## Use

```python
import torch
from peft import PeftModel
from transformers import AutoTokenizer, T5ForConditionalGeneration

base = T5ForConditionalGeneration.from_pretrained("{base_model}")
tokenizer = AutoTokenizer.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "{folder_name}").eval()  # the path of this folder

text = "{text}"  # the task's input as the project's data_utils.format_example writes it
ids = tokenizer(text).input_ids[:{keep}]  # one </s> appended, then cut to seq_len - P = {args['seq_len']} - {n_tokens}
with torch.no_grad():
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens={task.target_len - 1})
print(tokenizer.decode(out[0], skip_special_tokens=True))  # {answers}
```

To reproduce the run's numbers, feed exactly what training fed: the text of `data_utils.format_example` for
`{task.name}`, tokenized with exactly one `</s>` (`data_utils.encode_batch`),
cut to seq_len - P = {args["seq_len"]} - {n_tokens} = {keep} tokens (training cut [prompt; input] to {args["seq_len"]});
greedy decoding of {task.target_len - 1} new tokens. PEFT cuts nothing by itself.

Exported by `scripts/export_peft.py` from the run folder `{os.path.basename(os.path.abspath(run_dir))}`.
"""


def _causal_card(run_dir, args, n_tokens, width, base_model, folder_name, task, method, rows, split_note,
                 reparam_text, base_note):
    """The model card's body for a decoder-only LM's run (task type CAUSAL_LM, prompt before the input)."""
    return f"""
# {method} soft prompt for `{task.name}`

A soft prompt of {n_tokens} tokens x {width} for the frozen causal language model `{base_model}`, trained with
{method} ([Residual Prompt Tuning](https://arxiv.org/abs/2305.03937), Razdaibiedina et al., Findings of ACL 2023)
on the task `{task.name}`, stored as a PEFT prompt tuning adapter (`PROMPT_TUNING`, `CAUSAL_LM`, prepended to the
input). It holds the best projected prompt φ(x); the reparameterization used in training is not needed at inference.
{base_note}
## Scores

Score x 100; {split_note}.

| split | score | metrics |
|---|---|---|
""" + "\n".join(rows) + f"""

## Training

- method: {method}; prompt length {n_tokens}; reparameterization: {reparam_text}
- learning rate {args.get('lr')}, batch size {args.get('batch_size')}, epochs {args.get('num_epochs')}, \
seed {args.get('seed')}; sequence length (prompt, source and target): {args.get('seq_len')} tokens

```bash
{train_command(args)}
```

## Use

```python
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_model}")
tokenizer = AutoTokenizer.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "{folder_name}").eval()  # the path of this folder
ids = tokenizer("...", add_special_tokens=False).input_ids  # the task's source text, one row at a time
with torch.no_grad():
    # use_cache=False: peft 0.21's cached generation under transformers 5 inserts the prompt before every new token
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens={task.target_len}, do_sample=False,
                         use_cache=False)
print(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))
```

To reproduce the run's numbers, feed what training fed, one row at a time (no padding): the source text of
`data_utils.format_example` without " </s>", after the tokenizer's bos where it has one distinct from eos
(`residual_prompts.causal_lm.PromptedCausalLM.encode_split`); greedy decoding of {task.target_len} new tokens,
cut at the first eos.

Exported by `scripts/export_peft.py` from the run folder `{os.path.basename(os.path.abspath(run_dir))}`.
"""


# ---------------------------------------------------------------------------------------------- train.py's use
def write_run_adapter(run_dir: str) -> str:
    """RUN_DIR/adapter/ (replacing an earlier one: the folder holds one run); returns its path."""
    out = os.path.join(run_dir, ADAPTER_DIR)
    if os.path.isdir(out):
        shutil.rmtree(out)
    export(run_dir, out)
    return out


def push(adapter_dir: str, repo: str) -> str:
    """Upload the adapter folder to the Hub model repository ``repo`` (created if missing); returns its URL.
    Any failure raises AdapterError with one line."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        url = api.create_repo(repo, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=adapter_dir, repo_type="model",
                          commit_message="Residual Prompt Tuning adapter (train.py --push_to_hub)")
    except Exception as e:  # network, permissions, quota: all one line, the local adapter stays
        raise AdapterError(f"push of {adapter_dir} to the Hub repository {repo} failed ({_first(e)}); the run and "
                           f"its adapter are complete on disk: run the same command again to retry the push") from None
    return str(url)
