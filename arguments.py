"""train.py's arguments: the one parser (names, types, defaults, choices from the registries) and the checks of
invalid values and combinations made right after parsing. train.py and scripts/sweep.py both use it, so a sweep is
refused for exactly what train.py would refuse.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys

from data_utils import TASKS
from distributed import world_size
from residual_prompts.errors import EXIT_BAD_INPUT, ConfigError
from residual_prompts.models import POOLINGS, PRECISIONS, default_pooling
from residual_prompts.prompts import INITIALIZERS
from res_mlp import REPARAM_NAMES, USES_MLP_OPTIONS
from tracking import check_available
from train_utils import OPTIMIZERS as OPTIMIZER_NAMES

SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32 - 1]
MAX_NAME_BYTES = 255  # one path component on common file systems


class Parser(argparse.ArgumentParser):
    """train.py's parser. ``flags``: {flag name without "--": its argparse Action} of every flag, in definition
    order, argument groups included: how sweep.py and peft_adapter.py read the flags (types, choices, defaults)."""

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

    def error(self, message):  # one line, exit 2 (argparse's default also prints the whole usage)
        bad = re.fullmatch(r"argument (\S+): invalid choice: (.+?) \(choose from (.*)\)", message)
        if bad:  # argparse quotes each choice; name the flag, the value and the valid names plainly
            flag, value, valid = bad.groups()
            message = f"argument {flag}: invalid choice: {value} (unknown {flag} {value}; valid: {valid.replace(chr(39), '')})"
        self.exit(EXIT_BAD_INPUT, f"train.py: error: {message} (see python train.py --help)\n")


FAMILIES_HELP = """model families (read from --model_name's config; docs/ENCODERS.md, docs/DECODERS.md):
  [t5]        T5 encoder-decoders (the paper's): prompt before the encoder input, greedy generation
  [encoder]   BERT-style encoders: prompt after [CLS], a trained head (--pooling, --head_lr)
  [causal_lm] decoder-only LMs (GPT-2, Llama, Qwen2, Mistral): prompt before the input, loss on the target,
              greedy generation
  Flags marked [family] only are refused (exit 2) for the others; --save_adapter/--push_to_hub: [t5], [causal_lm]."""


def build_parser(description: str = "") -> Parser:
    p = Parser(prog="train.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=FAMILIES_HELP)
    a = p.add_argument
    # ---- flags of the original train.py: same names, types and default meaning (0/1 integers are booleans) ----
    a("--save_dir", type=str, default="runs", help="base directory of runs (original flag)")
    a("--save_name", type=str, required=True, help="run folder name inside save_dir (original flag)")
    a("--task", type=str, required=True, help=f"task name (original flag): {', '.join(TASKS)}")
    a("--model_name", type=str, default="t5-base",
      help="Hub name or local directory of a checkpoint: [t5] T5 / Flan-T5, [encoder] BERT-style encoder, "
           "[causal_lm] decoder-only LM (GPT-2, Llama, Qwen2, Mistral, ...); the family is read from its config")
    a("--num_epochs", type=int, default=5, help="training epochs (paper: 20 for prompt tuning, 50 for fine-tuning)")
    a("--batch_size", type=int, default=8, help="training batch size (paper: 8; fine-tuning 4)")
    a("--seq_len", type=int, default=512,
      help="max input length, prompt included (paper: 512); [causal_lm] prompt + source + target")
    a("--prefix_len", type=int, default=10, help="prompt length P; 0 = no prompt (full fine-tuning)")
    a("--prefix_path", type=str, default="", help="a .npy [P, H] prompt to start from (= --prompt_init file)")
    a("--lr", type=float, default=0.3, help="learning rate of prompt and model (paper: 0.3; fine-tuning 3e-4)")
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
    # ---- new flags ----
    a("--seed", type=int, default=0, help="seed of prompt init, reparameterization init and dropout")
    a("--data_seed", type=int, default=0, help="seed of data order and few-shot selection (original: 0)")
    a("--device", type=str, default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    a("--data_dir", type=str, default=os.environ.get("RPT_DATA_DIR"),
      help="offline data: folder with glue/ and super_glue/ official downloads (default: $RPT_DATA_DIR, else Hub)")
    a("--prompt_init", type=str, default=None, choices=list(INITIALIZERS),
      help="vocab (default, original), vocab_top5000 (Lester et al.), uniform, class_labels, file")
    a("--overwrite", type=int, default=0, choices=[0, 1],
      help="1: start over in a run folder that holds results or a checkpoint (its files are replaced)")
    a("--resume", type=str, default="auto", choices=["auto", "never"],
      help="auto: continue the run folder's checkpoint when the run-defining arguments match (a finished run: "
           "nothing to do); never: refuse an existing run folder unless --overwrite 1")
    a("--save_every_steps", type=int, default=0,
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
    a("--precision", type=str, default="fp32", choices=list(PRECISIONS),
      help="autocast dtype of the frozen model (prompt and MLP stay fp32; fp16 uses a GradScaler); changes numbers")
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
    a("--log_every_steps", type=int, default=50,
      help="also append the mean training loss to metrics.jsonl (and the tracker) every N steps (0: evaluations only)")
    a("--report_to", type=str, default="none", choices=["none", "tensorboard", "wandb"],
      help="experiment tracking: step loss, lr, every evaluation metric, the arguments as config (lazy imports)")
    a("--save_adapter", type=str, default="auto", choices=["auto", "0", "1"],
      help="write the best prompt as a PEFT adapter in RUN/adapter/ (PeftModel.from_pretrained): auto = "
           "for [t5] and [causal_lm] prompt runs when peft is installed; 1 = required (refused where "
           "impossible); 0 = never")
    a("--push_to_hub", type=str, default=None, metavar="REPO",
      help="after the run, upload RUN/adapter/ to the Hub model repository REPO (needs a token: hf auth login)")
    return p


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
