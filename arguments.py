"""train.py's arguments: the one parser (names, types, defaults, choices from the registries) and the checks of
invalid values and combinations made right after parsing. train.py and scripts/sweep.py both use it, so a sweep is
refused for exactly what train.py would refuse.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys

from data_utils import TASKS
from residual_prompts.errors import EXIT_BAD_INPUT, ConfigError
from residual_prompts.names import (INITIALIZER_NAMES, OPTIMIZER_NAMES, POOLINGS, PRECISION_NAMES, REPARAM_NAMES,
                                    USES_MLP_OPTIONS, default_pooling, looks_like_path)
from run_files import NOT_DEFINING
from torchrun_env import world_size
from tracking import check_available

SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32 - 1]
MAX_NAME_BYTES = 255  # one path component on common file systems


# --help's sections, in order: every flag is in exactly one (build_parser fails on a flag without a section).
GROUPS = {
    "task and data": ("task", "data_dir", "select_k_per_class", "limit_val_set", "get_test_subset", "data_seed",
                      "seq_len", "pad_to_max_length"),
    "model": ("model_name", "pooling", "freeze_weights", "freeze_except", "model_dropout"),
    "prompt and reparameterization": ("prefix_len", "prompt_init", "prefix_path", "random_prompt_init", "prefix_MLP",
                                      "residual", "separate_mlps", "mlp_layer_norm", "nonlinearity", "bottleneck_size",
                                      "mlp_dropout", "mlp2_shared_weights"),
    "optimization": ("lr", "mlp_lr", "head_lr", "num_epochs", "batch_size", "optimizer", "weight_decay", "seed",
                     "early_stopping", "group_by_length"),
    "evaluation": ("eval_every", "eval_batch_size", "test_eval_after_every_task", "train_eval_batches"),
    "run folder and resume": ("save_dir", "save_name", "overwrite", "resume", "save_every_steps"),
    "distributed and precision": ("device", "precision", "tf32", "compile", "fsdp"),
    "outputs and tracking": ("progress", "log_every_steps", "report_to", "save_adapter", "push_to_hub"),
}
# transformers' TrainingArguments / run_glue.py flags that have no exact equivalent here: what to write instead
# (exact equivalents are aliases of the flag itself: --learning_rate is --lr, --num_train_epochs --num_epochs...)
HF_HINTS = {
    "output_dir": "--save_dir DIR --save_name NAME (the run folder is save_dir/save_name)",
    "per_device_train_batch_size": "--batch_size (the batch of one optimizer step, over all processes)",
    "per_device_eval_batch_size": "--eval_batch_size (over all processes)",
    "overwrite_output_dir": "--overwrite 1", "fp16": "--precision fp16", "bf16": "--precision bf16",
    "eval_strategy": "--eval_every N (validate every N epochs)", "evaluation_strategy": "--eval_every N (epochs)",
    "eval_steps": "--eval_every N (epochs, not steps)", "load_best_model_at_end": "--early_stopping 1",
    "do_train": "nothing: train.py always trains and evaluates", "do_eval": "nothing: train.py always evaluates",
    "lr_scheduler_type": "nothing: the learning rate is constant, as in the paper",
    "warmup_steps": "nothing: no warm-up, as in the paper", "gradient_accumulation_steps": "a larger --batch_size",
}
HELP_NOTE = """\
Flags marked [*] define the run: they may change the numbers, and a resume with other values is refused.
On/off flags take 0/1, true/false, yes/no, on/off (recorded as 0/1); choices and flag names are case-insensitive
(--task CB, --prefix_MLP none); transformers' spellings are aliases where they mean the same (--learning_rate,
--num_train_epochs, --model_name_or_path, --max_seq_length, --logging_steps, --save_steps, --task_name).
Offline: data from python scripts/get_data.py DIR (then --data_dir DIR), a model from a local folder."""
ON = {"1", "true", "yes", "on", "y", "t"}
OFF = {"0", "false", "no", "off", "n", "f"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; every optional flag's default printed; "[*]" before the flags that define a
    run (they may change the numbers: resuming with another value is refused; run_files.NOT_DEFINING are not)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.dest not in NOT_DEFINING and action.dest != "help":
            text = "[*] " + text
        if action.required or action.default is argparse.SUPPRESS or "%(default)" in text or "default:" in text:
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """train.py's parser. ``flags``: {flag name without "--": its argparse Action} of every flag, in definition
    order, argument groups included: how sweep.py and peft_adapter.py read the flags (types, choices, defaults).

    Before argparse reads the command line, each token is made canonical, so that the recorded values stay the
    same: a flag name in any case (--prefix_mlp), a choice in any case (--task CB, --prefix_MLP none), an on/off
    value as 0/1 (true/false, yes/no, on/off). Unknown flags and choices get a "did you mean"."""

    @property
    def flags(self) -> dict:
        return self.__dict__.setdefault("_flags", {})

    def _record(self, action):
        if action.option_strings and action.dest != "help":
            self.flags[action.option_strings[0][2:]] = action
        return action

    def add_argument(self, *names, **kwargs):
        return self._record(super().add_argument(*names, **kwargs))

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument
        group.add_argument = lambda *names, **kw: self._record(add(*names, **kw))
        return group

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self.canonical(sys.argv[1:] if args is None else list(args)), namespace)

    def _options(self):
        return {o.lower(): (o, a) for a in self.flags.values() for o in a.option_strings}

    def canonical(self, argv: list[str]) -> list[str]:
        """argv with flag names, choices and on/off values written as this parser defines them."""
        options, out, i = self._options(), [], 0
        while i < len(argv):
            token = argv[i]
            if token == "--":
                return out + argv[i:]
            name, eq, value = token.partition("=")
            hit = options.get(name.lower()) if token.startswith("--") else None
            if hit is None:
                out.append(token)
            elif eq:
                out.append(f"{hit[0]}={canonical_value(hit[1], value)}")
            else:
                out.append(hit[0])
                if i + 1 < len(argv) and not argv[i + 1].startswith("--") and hit[1].nargs is None:
                    out.append(canonical_value(hit[1], argv[i + 1]))
                    i += 1
            i += 1
        return out

    def error(self, message):  # one line, exit 2 (argparse's default also prints the whole usage)
        message = re.sub(r"^argument (--\w+)(/--\w+)+", r"argument \1", message)  # --task, not --task/--task_name
        bad = re.fullmatch(r"argument (\S+): invalid choice: (.+?) \(choose from (.*)\)", message)
        if bad:  # argparse quotes each choice; name the flag, the value and the valid names plainly
            flag, value, valid = bad.groups()
            names = {c.lower(): c for c in re.findall(r"'([^']*)'", valid)}
            near = difflib.get_close_matches(value.strip("'").lower(), list(names), n=1)
            hint = f"; did you mean {names[near[0]]}?" if near else ""
            message = (f"argument {flag}: invalid choice: {value} (unknown {flag} {value}; valid: "
                       f"{valid.replace(chr(39), '')}{hint})")
        onoff = re.fullmatch(r"argument (\S+?)(?:/\S+)?: invalid int value: (.*)", message)
        if onoff and self.flags.get(onoff.group(1).lstrip("-")) is not None and \
                self.flags[onoff.group(1).lstrip("-")].choices == [0, 1]:
            message = f"argument {onoff.group(1)}: {onoff.group(2)} is not on/off: use 1 or 0 (true/false, yes/no)"
        unknown = re.fullmatch(r"unrecognized arguments: (.*)", message)
        if unknown:
            message = "; ".join(self._unknown(t) for t in unknown.group(1).split() if t.startswith("-")) or message
        self.exit(EXIT_BAD_INPUT, f"train.py: error: {message} (see python train.py --help)\n")

    def _unknown(self, token):
        """'unrecognized argument --x' with what to write instead: a transformers spelling's equivalent, or the
        nearest flag name."""
        name = token.split("=")[0]
        if name[2:] in HF_HINTS:
            return f"unrecognized argument {name}: train.py's equivalent is {HF_HINTS[name[2:]]}"
        near = difflib.get_close_matches(name.lower(), list(self._options()), n=1, cutoff=0.6)
        hint = f": did you mean {self._options()[near[0]][0]}?" if near else ""
        return f"unrecognized argument {name}{hint}"


def task_name(text: str) -> str:
    """--task: a registered name in any case (CB -> cb); an unknown one is refused with a "did you mean"."""
    if text.lower() in TASKS:
        return text.lower()
    near = difflib.get_close_matches(text.lower(), list(TASKS), n=1)
    raise argparse.ArgumentTypeError(f"unknown task {text!r}{f'; did you mean {near[0]}?' if near else ''} "
                                     f"(valid: {', '.join(TASKS)})")


def canonical_value(action, text: str) -> str:
    """A flag's value as the flag defines it: a choice whatever its case (cb for CB, None for none), 0/1 for an
    on/off flag's true/false, yes/no, on/off. Anything else is returned unchanged (argparse then refuses it)."""
    choices = [str(c) for c in action.choices or ()]
    if not choices:
        return text
    same = [c for c in choices if c.lower() == text.lower()]
    if len(same) == 1:
        return same[0]
    if {"0", "1"} <= set(choices) and text.lower() in ON | OFF:
        return "1" if text.lower() in ON else "0"
    return text


FAMILIES_HELP = """model families (read from --model_name's config; docs/ENCODERS.md, docs/DECODERS.md):
  [t5]        T5 encoder-decoders (the paper's): prompt before the encoder input, greedy generation
  [encoder]   BERT-style encoders: prompt after [CLS], a trained head (--pooling, --head_lr)
  [causal_lm] decoder-only LMs (GPT-2, Llama, Qwen2, Mistral): prompt before the input, loss on the target,
              greedy generation
  Flags marked [family] only are refused (exit 2) for the others; --save_adapter/--push_to_hub: [t5], [causal_lm]."""


def build_parser(description: str = "") -> Parser:
    p = Parser(prog="train.py", formatter_class=HelpFormatter, epilog=FAMILIES_HELP,
               usage="python train.py --task TASK --save_name NAME [--flag VALUE ...]",
               description=(description + "\n\n" if description else "") + HELP_NOTE)
    sections = {title: p.add_argument_group(title) for title in GROUPS}
    section = {flag: sections[title] for title, flags in GROUPS.items() for flag in flags}

    def a(name, *aliases, **kwargs):
        return section[name[2:]].add_argument(name, *aliases, **kwargs)

    _original_flags(a)
    _new_flags(a)
    return p


def _original_flags(a):
    """The flags of the original train.py: same names, types and default meaning (0/1 integers are booleans)."""
    a("--save_dir", type=str, default="runs", help="base directory of runs (original flag)")
    a("--save_name", type=str, required=True, help="run folder name inside save_dir (original flag)")
    a("--task", "--task_name", type=task_name, required=True, metavar="TASK",
      help=f"task name (original flag): {', '.join(TASKS)}")
    a("--model_name", "--model_name_or_path", type=str, default="t5-base",
      help="Hub name or local directory of a checkpoint: [t5] T5 / Flan-T5, [encoder] BERT-style encoder, "
           "[causal_lm] decoder-only LM (GPT-2, Llama, Qwen2, Mistral, ...); the family is read from its config "
           "(a name that can only be a folder, ./x or /x or a/b/c, and is none here is refused at once)")
    a("--num_epochs", "--num_train_epochs", type=int, default=5,
      help="training epochs (paper: 20 for prompt tuning, 50 for fine-tuning)")
    a("--batch_size", type=int, default=8, help="training batch size (paper: 8; fine-tuning 4)")
    a("--seq_len", "--max_seq_length", type=int, default=512,
      help="max input length, prompt included (paper: 512); [causal_lm] prompt + source + target")
    a("--prefix_len", type=int, default=10, help="prompt length P; 0 = no prompt (full fine-tuning)")
    a("--prefix_path", type=str, default="", help="a .npy [P, H] prompt to start from (= --prompt_init file)")
    a("--lr", "--learning_rate", type=float, default=0.3,
      help="learning rate of prompt and model (paper: 0.3; fine-tuning 3e-4)")
    a("--mlp_dropout", type=float, default=0.0, help="dropout in MLP1/MLP2, before the LayerNorm")
    a("--limit_val_set", type=int, default=-1, help="keep at most N validation rows per class (-1: all); "
      "the original parsed this and ignored it")
    a("--select_k_per_class", type=int, default=-1, help="few-shot: k training rows per class (-1: all)")
    a("--test_eval_after_every_task", type=int, default=0, choices=[0, 1],
      help="1: with --get_test_subset 1, also score the test subset at every validation (test_history in "
           "results.json); without a test subset, re-score the final state on the full validation split at the "
           "end (final_eval). The original parsed this and ignored it")
    a("--freeze_weights", type=int, default=0, choices=[0, 1], help="1: freeze the model (prompt tuning)")
    a("--freeze_except", type=str, default="xxxxxxx",
      help="with --freeze_weights 1, parameters whose name contains this string stay trainable")
    a("--get_test_subset", type=int, default=0, choices=[0, 1],
      help="1: split validation in half: validation (early stopping) and test (reported)")
    a("--early_stopping", type=int, default=0, choices=[0, 1], help="1: keep the best validation state")
    a("--random_prompt_init", type=int, default=0, choices=[0, 1], help="1: = --prompt_init uniform")
    a("--prefix_MLP", type=str, default="None", choices=REPARAM_NAMES,
      help="reparameterization: None (plain PT), MLP1 (Residual PT, paper Sec. 3), MLP2, LSTM, LSTM1, LSTM2, transformer")
    a("--residual", type=int, default=1, choices=[0, 1], help="skip connection around the reparameterization")
    a("--separate_mlps", type=int, default=0, choices=[0, 1], help="1: one network per prompt token")
    a("--mlp_layer_norm", type=int, default=1, choices=[0, 1], help="LayerNorm in MLP1/MLP2")
    a("--nonlinearity", type=str, default="relu", choices=["relu", "tanh", "sigm"], help="MLP activation")
    a("--bottleneck_size", type=int, default=800, help="MLP bottleneck width M (original default 800)")


def _new_flags(a):
    """This implementation's flags (``a``: build_parser's add_argument into the flag's --help section)."""
    a("--seed", type=int, default=0, help="seed of prompt init, reparameterization init and dropout")
    a("--data_seed", type=int, default=0, help="seed of data order and few-shot selection (original: 0)")
    a("--device", type=str, default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    a("--data_dir", type=str, default=os.environ.get("RPT_DATA_DIR"),
      help="offline data: folder with glue/ and super_glue/ official downloads (python scripts/get_data.py DIR "
           "writes one); unset: $RPT_DATA_DIR, else the Hub (now: %(default)s)")
    a("--prompt_init", type=str, default=None, choices=list(INITIALIZER_NAMES),
      help="vocab (default, original), vocab_top5000 (Lester et al.), uniform, class_labels, file")
    a("--overwrite", type=int, default=0, choices=[0, 1],
      help="1: start over in a run folder that holds results or a checkpoint (its files are replaced)")
    a("--resume", type=str, default="auto", choices=["auto", "never"],
      help="auto: continue the run folder's checkpoint when the run-defining arguments match (a finished run: "
           "nothing to do); never: refuse an existing run folder unless --overwrite 1")
    a("--save_every_steps", "--save_steps", type=int, default=0,
      help="also write the training state every N optimizer steps (0: at the end of every epoch only)")
    a("--optimizer", type=str, default="legacy_adamw", choices=list(OPTIMIZER_NAMES),
      help="legacy_adamw = transformers' 2022 AdamW used by the paper; torch_adamw = torch.optim.AdamW")
    a("--mlp_lr", type=float, default=None, help="learning rate of the reparameterization (default: --lr)")
    a("--pooling", type=str, default="auto", choices=["auto", *POOLINGS],
      help="[encoder] only: what the head reads, [CLS] (cls) or the mean of the outputs (mean); auto: the "
           "checkpoint's own (mean for a sentence-transformers folder that says so, else cls)")
    a("--head_lr", type=float, default=None,
      help="[encoder] only: learning rate of the classification head (default: --lr)")
    a("--weight_decay", type=float, default=1e-5, help="AdamW weight decay (original: fixed 1e-5)")
    a("--model_dropout", type=int, default=1, choices=[0, 1],
      help="1: frozen model in train mode, its dropout active (original, reproduces the paper); 0: eval mode")
    a("--mlp2_shared_weights", type=int, default=0, choices=[0, 1],
      help="1: MLP2 reuses one block's weights twice, as the original did")
    a("--pad_to_max_length", type=int, default=0, choices=[0, 1],
      help="1: pad every batch to --seq_len as the original (same results, slower)")
    a("--train_eval_batches", type=int, default=0,
      help="score training predictions on the first N batches of each epoch (original: 250; 0 = off)")
    a("--eval_every", type=int, default=0,
      help="validate every N epochs (0: original rule, 1 if num_epochs <= 50, 5 if <= 200, else 25)")
    a("--eval_batch_size", type=int, default=0,
      help="evaluation batch size (0: 4 x --batch_size); scores and the reported loss do not depend on it")
    a("--precision", type=str, default="fp32", choices=list(PRECISION_NAMES),
      help="bf16/fp16: frozen weights stored in that dtype (weights that train: fp32 + autocast); prompt, MLP, head, "
           "loss fp32. Changes numbers (tiny T5, 20 steps: 0.12%% off fp32); slower without bf16 units (warned)")
    a("--tf32", type=int, default=0, choices=[0, 1], help="1: TF32 matmuls on Ampere+ GPUs (faster, changes numbers)")
    a("--compile", type=int, default=0, choices=[0, 1],
      help="[t5] only: torch.compile the T5 encoder (first steps slower)")
    a("--group_by_length", type=int, default=0, choices=[0, 1],
      help="1: batches of similar lengths (less padding, faster); changes the data order, so the numbers")
    a("--fsdp", type=int, default=0, choices=[0, 1],
      help="[t5] only: with torchrun, shard the frozen model's weights over the processes (FSDP2), for models "
           "too large for one GPU")
    a("--progress", type=int, default=None, choices=[0, 1],
      help="tqdm progress bars (default: only when stderr is a terminal; a log file gets one line per epoch)")
    a("--log_every_steps", "--logging_steps", type=int, default=50,
      help="also append the mean training loss to metrics.jsonl (and the tracker) every N steps (0: evaluations only)")
    a("--report_to", type=str, default="none", choices=["none", "tensorboard", "wandb"],
      help="experiment tracking: step loss, lr, every evaluation metric, the arguments as config (lazy imports)")
    a("--save_adapter", type=str, default="auto", choices=["auto", "0", "1"],
      help="write the best prompt as a PEFT adapter in RUN/adapter/ (PeftModel.from_pretrained): auto = "
           "for [t5] and [causal_lm] prompt runs when peft is installed; 1 = required (refused where "
           "impossible); 0 = never")
    a("--push_to_hub", type=str, default=None, metavar="REPO",
      help="after the run, upload RUN/adapter/ to the Hub model repository REPO (needs a token: hf auth login)")


def _default(name):
    return build_parser().get_default(name)


def _check_adapter(args):
    wants = args.save_adapter == "1" or args.push_to_hub is not None
    if not wants:
        return
    what = f"--push_to_hub {args.push_to_hub}" if args.push_to_hub is not None else "--save_adapter 1"
    if args.save_adapter == "0":
        raise ConfigError(f"{what} uploads the run's adapter, which --save_adapter 0 turns off: drop one of them")
    if args.prefix_len == 0:
        raise ConfigError(f"{what}: a full fine-tuning run (--prefix_len 0) has no prompt adapter; its model is "
                          f"saved in RUN/model/")
    import importlib.util
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"{what} needs peft: pip install peft (or drop it)")
    if args.push_to_hub is not None:
        _check_push(args.push_to_hub)


def _check_push(repo: str):
    """Before training: refuse a --push_to_hub that cannot work (offline mode, no token, a malformed name)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"--push_to_hub {repo} needs the Hub, but HF_HUB_OFFLINE is set: unset it, or drop "
                          f"--push_to_hub and push later (run the same command again without HF_HUB_OFFLINE)")
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ConfigError(f"--push_to_hub {repo!r} is not a Hub repository name: give NAME or USER/NAME") from None
    if not get_token():
        raise ConfigError(f"--push_to_hub {repo}: no Hub token: run `hf auth login` or set HF_TOKEN, then run the "
                          f"same command again")


def check_args(args):
    """Refuse invalid values and combinations right after parsing (ConfigError: one line naming the fix); resolve
    the prompt initializer, the evaluation batch size and the validation interval. Returns args."""
    _check_numbers(args)
    _check_paths(args)
    if args.prefix_len >= args.seq_len:
        raise ConfigError(f"--prefix_len {args.prefix_len} leaves no room for input in --seq_len {args.seq_len}")
    if args.prefix_len == 0:
        if args.prefix_MLP != "None":
            raise ConfigError(f"--prefix_MLP {args.prefix_MLP} needs a prompt: set --prefix_len > 0 "
                              f"or use --prefix_MLP None for full fine-tuning")
        if args.prefix_path or args.prompt_init or args.random_prompt_init:
            raise ConfigError("prompt options (--prefix_path/--prompt_init/--random_prompt_init) need "
                              "--prefix_len > 0")
    # Options of a reparameterization must not be given where they would be ignored.
    for name in ("mlp_dropout", "mlp_layer_norm", "nonlinearity", "bottleneck_size", "mlp2_shared_weights"):
        if getattr(args, name) != _default(name) and args.prefix_MLP not in USES_MLP_OPTIONS:
            raise ConfigError(f"--{name} only applies to --prefix_MLP MLP1/MLP2 (now {args.prefix_MLP}); "
                              f"drop it or pick an MLP")
    if args.mlp2_shared_weights and args.prefix_MLP != "MLP2":
        raise ConfigError("--mlp2_shared_weights 1 only applies to --prefix_MLP MLP2")
    for name in ("residual", "separate_mlps", "mlp_lr"):
        if getattr(args, name) != _default(name) and args.prefix_MLP == "None":
            raise ConfigError(f"--{name} applies to a reparameterization; with --prefix_MLP None there is none")
    if args.freeze_weights == 0 and args.freeze_except.strip("x"):
        raise ConfigError(f"--freeze_except {args.freeze_except!r} only acts with --freeze_weights 1 "
                          f"(now every weight trains): add --freeze_weights 1 or drop it")
    _resolve_prompt_init(args)
    check_available(args.report_to)
    _check_adapter(args)
    if args.pooling == "auto" and default_pooling(args.model_name) == "mean":
        args.pooling = "mean"  # recorded in args.json as what the run used
    _check_processes(args)
    if args.test_eval_after_every_task and not args.get_test_subset:
        print("note: --test_eval_after_every_task 1 without --get_test_subset: the final state is re-scored on "
              "the validation split at the end (final_eval in results.json)")
    args.eval_batch_size = args.eval_batch_size or 4 * args.batch_size
    if args.progress is None:
        args.progress = int(sys.stderr.isatty())
    if args.eval_every == 0:  # the original's rule (train.py)
        args.eval_every = 1 if args.num_epochs <= 50 else 5 if args.num_epochs <= 200 else 25
    return args


def _check_numbers(args):
    for name in ("batch_size", "num_epochs", "seq_len", "bottleneck_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("prefix_len", "train_eval_batches", "eval_every", "eval_batch_size", "save_every_steps",
                 "log_every_steps"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("select_k_per_class", "limit_val_set"):
        if getattr(args, name) == 0 or getattr(args, name) < -1:
            raise ConfigError(f"--{name} must be -1 (all) or a positive count, got {getattr(args, name)}")
    for name in ("seed", "data_seed"):
        if not 0 <= getattr(args, name) <= SEED_MAX:
            raise ConfigError(f"--{name} must be in [0, {SEED_MAX}], got {getattr(args, name)}")
    for name in ("lr", "mlp_lr", "head_lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"learning rates must be positive and finite, got --{name} {value}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise ConfigError(f"--weight_decay must be >= 0 and finite, got {args.weight_decay}")
    if not 0 <= args.mlp_dropout < 1:  # also false for nan
        raise ConfigError(f"--mlp_dropout must be in [0, 1), got {args.mlp_dropout}")


def _check_paths(args):
    name = args.save_name
    if name in ("", ".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ConfigError(f"--save_name {name!r} must be a plain folder name (no '/', not empty, '.' or '..'): the "
                          f"run is written to --save_dir/--save_name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"--save_name is {len(name.encode())} bytes long; file systems allow {MAX_NAME_BYTES}: "
                          f"choose a shorter name")
    device = args.device
    if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"--device {device!r} is not a device name here: use auto, cpu, cuda, cuda:N or mps")


def check_model_folder(name):
    """A --model_name that looks like a path (models.looks_like_path) must be a folder on this machine: train.py
    refuses it at once, instead of taking it for a Hub name after the data has loaded (offline: tens of seconds of
    retries). Not part of check_args: a sweep may be written where the model folder is not."""
    if looks_like_path(name) and not os.path.isdir(name):
        raise ConfigError(f"--model_name {name}: no such folder ({os.path.abspath(name)}): give a local model "
                          f"folder (python scripts/make_tiny_t5.py DIR writes a tiny T5) or a Hub name such as "
                          f"t5-base")


def _resolve_prompt_init(args):
    """--prompt_init, or the original's --random_prompt_init / --prefix_path."""
    implied = "uniform" if args.random_prompt_init else ("file" if args.prefix_path else None)
    if args.random_prompt_init and args.prefix_path:
        raise ConfigError("--random_prompt_init 1 and --prefix_path both choose the initial prompt: keep one")
    if args.prompt_init is not None and implied is not None and args.prompt_init != implied:
        raise ConfigError(f"--prompt_init {args.prompt_init} conflicts with "
                          f"{'--random_prompt_init 1' if args.random_prompt_init else '--prefix_path'}: keep one")
    args.prompt_init = args.prompt_init or implied or "vocab"
    if args.prompt_init == "file" and not args.prefix_path:
        raise ConfigError("--prompt_init file needs --prefix_path PATH.npy")


def _check_processes(args):
    world = world_size()
    if world > 1 and args.train_eval_batches:
        raise ConfigError("--train_eval_batches (training-set generate) is not supported with several processes: "
                          "drop it, or run it with one process")
    if args.fsdp and world < 2:
        raise ConfigError("--fsdp 1 shards the model over several processes: launch with torchrun "
                          "--nproc_per_node N (N >= 2), or drop --fsdp")
    if args.fsdp and (not args.freeze_weights or args.freeze_except.strip("x")):
        raise ConfigError("--fsdp 1 is for a frozen model (--freeze_weights 1, no --freeze_except): trainable "
                          "model weights are not supported with it")
    if args.fsdp and args.compile:
        raise ConfigError("--fsdp 1 and --compile 1 together are not supported: drop one")
