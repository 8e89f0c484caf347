"""Residual Prompt Tuning (Razdaibiedina et al., Findings of ACL 2023): train a soft prompt, optionally through a
residual MLP, for a frozen T5 on a GLUE / SuperGLUE task, with early stopping; write scores and the prompt.

One GPU (the paper's Residual PT setting, Sec. 4.1):
    python train.py --task cb --prefix_MLP MLP1 --lr 0.3 --freeze_weights 1 --early_stopping 1 \
        --get_test_subset 1 --num_epochs 20 --prefix_len 10 --model_name t5-base --save_dir runs --save_name cb_mlp1
CPU, offline, tiny model (smoke test, ~1 min):
    python scripts/make_tiny_t5.py tiny_t5
    python train.py --task cb --data_dir ../shared/data --model_name tiny_t5 --prefix_MLP MLP1 \
        --freeze_weights 1 --early_stopping 1 --get_test_subset 1 --num_epochs 2 --save_dir runs --save_name x
Full fine-tuning baseline (the original's bash_finetune.sh):
    python train.py --task cb --prefix_len 0 --freeze_weights 0 --lr 3e-4 --batch_size 4 --num_epochs 50 \
        --early_stopping 1 --save_dir runs --save_name cb_ft
SLURM (requeued on preemption or time limit, resumed exactly from the last checkpoint):
    mkdir -p logs && sbatch --array=0-5 scripts/prompt_tune.sbatch

Writes save_dir/save_name/{args.json, results.json, score_dict.npy, prompt.npy, checkpoint.pt[, model/]}, and
train_state.pt while training (every epoch and every --save_every_steps steps; removed when the run completes).
Running the same command again continues an interrupted run (--resume auto) or does nothing for a finished one.
Exit codes: 0 done (or already complete), 2 bad input (one line on stderr), 3 training diverged (NaN/inf loss),
75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint: run the same command again (requeue) to continue.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: a checkpoint was written; run again to continue (the sbatch scripts requeue)
OUTPUTS = ("results.json", "checkpoint.pt", "prompt.npy", "score_dict.npy", "train_state.pt")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default also prints the whole usage)
        self.exit(EXIT_BAD_INPUT, f"train.py: error: {message} (see python train.py --help)\n")


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # ---- flags of the original train.py: same names, types and default meaning (0/1 integers are booleans) ----
    a("--save_dir", type=str, default="runs", help="base directory of runs (original flag)")
    a("--save_name", type=str, required=True, help="run folder name inside save_dir (original flag)")
    a("--task", type=str, required=True, help="task name, see data_utils.TASKS (original flag)")
    a("--model_name", type=str, default="t5-base", help="Hub name or local directory of a T5 checkpoint")
    a("--num_epochs", type=int, default=5, help="training epochs (paper: 20 for prompt tuning, 50 for fine-tuning)")
    a("--batch_size", type=int, default=8, help="training batch size (paper: 8; fine-tuning 4)")
    a("--seq_len", type=int, default=512, help="max encoder length, prompt included (paper: 512)")
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
    a("--prefix_MLP", type=str, default="None",
      help="reparameterization: None, MLP1 (Residual PT), MLP2, LSTM, LSTM1, LSTM2, transformer")
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
    a("--prompt_init", type=str, default=None,
      help="vocab (default, original), vocab_top5000 (Lester et al.), uniform, class_labels, file")
    a("--overwrite", type=int, default=0, choices=[0, 1],
      help="1: start over in a run folder that holds results or a checkpoint (its files are replaced)")
    a("--resume", type=str, default="auto", choices=["auto", "never"],
      help="auto: continue the run folder's checkpoint when the run-defining arguments match (a finished run: "
           "nothing to do); never: refuse an existing run folder unless --overwrite 1")
    a("--save_every_steps", type=int, default=0,
      help="also write the training state every N optimizer steps (0: at the end of every epoch only)")
    a("--optimizer", type=str, default="legacy_adamw", choices=["legacy_adamw", "torch_adamw"],
      help="legacy_adamw = transformers' 2022 AdamW used by the paper; torch_adamw = torch.optim.AdamW")
    a("--mlp_lr", type=float, default=None, help="learning rate of the reparameterization (default: --lr)")
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
    a("--precision", type=str, default="fp32", choices=["fp32", "bf16", "fp16"],
      help="autocast dtype of the frozen model (prompt and MLP stay fp32; fp16 uses a GradScaler); changes numbers")
    a("--tf32", type=int, default=0, choices=[0, 1], help="1: TF32 matmuls on Ampere+ GPUs (faster, changes numbers)")
    a("--compile", type=int, default=0, choices=[0, 1], help="1: torch.compile the T5 encoder (first steps slower)")
    a("--group_by_length", type=int, default=0, choices=[0, 1],
      help="1: batches of similar lengths (less padding, faster); changes the data order, so the numbers")
    a("--fsdp", type=int, default=0, choices=[0, 1],
      help="1: with torchrun, shard the frozen model's weights over the processes (FSDP2), for models too large "
           "for one GPU")
    a("--progress", type=int, default=1, choices=[0, 1], help="tqdm progress bars")
    return p


def explicit_flags(parser, argv):
    """dests given on the command line (to refuse options that the chosen configuration would ignore)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            probe.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS,
                               type=action.type, nargs=action.nargs)
    return set(vars(probe.parse_known_args(argv)[0]))


def check_args(args, given):
    """Refuse invalid values and combinations right after parsing; resolve the prompt initializer."""
    from res_mlp import REPARAM_NAMES, USES_MLP_OPTIONS
    from train_utils import PROMPT_INITS, ConfigError

    for name in ("batch_size", "num_epochs", "seq_len", "bottleneck_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    for name in ("prefix_len", "train_eval_batches", "eval_every", "eval_batch_size", "save_every_steps"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("select_k_per_class", "limit_val_set"):
        if getattr(args, name) == 0 or getattr(args, name) < -1:
            raise ConfigError(f"--{name} must be -1 (all) or a positive count, got {getattr(args, name)}")
    if not args.lr > 0 or (args.mlp_lr is not None and not args.mlp_lr > 0):
        raise ConfigError(f"learning rates must be positive, got --lr {args.lr} --mlp_lr {args.mlp_lr}")
    if not 0 <= args.mlp_dropout < 1:
        raise ConfigError(f"--mlp_dropout must be in [0, 1), got {args.mlp_dropout}")
    if args.weight_decay < 0:
        raise ConfigError(f"--weight_decay must be >= 0, got {args.weight_decay}")
    if args.prefix_MLP not in REPARAM_NAMES:
        raise ConfigError(f"unknown --prefix_MLP {args.prefix_MLP!r}; valid: {', '.join(REPARAM_NAMES)}")
    if args.prefix_len >= args.seq_len:
        raise ConfigError(f"--prefix_len {args.prefix_len} leaves no room for input in --seq_len {args.seq_len}")
    if args.prefix_len == 0:
        if args.prefix_MLP != "None":
            raise ConfigError(f"--prefix_MLP {args.prefix_MLP} needs a prompt: set --prefix_len > 0 "
                              f"or use --prefix_MLP None for full fine-tuning")
        if args.freeze_weights:
            raise ConfigError("--prefix_len 0 --freeze_weights 1 trains nothing: use --freeze_weights 0 "
                              "(full fine-tuning) or --prefix_len > 0")
        if {"prefix_path", "prompt_init", "random_prompt_init"} & given and (
                args.prefix_path or args.prompt_init or args.random_prompt_init):
            raise ConfigError("prompt options (--prefix_path/--prompt_init/--random_prompt_init) need "
                              "--prefix_len > 0")
    # Options of a reparameterization must not be given where they would be ignored.
    mlp_only = {"mlp_dropout": 0.0, "mlp_layer_norm": 1, "nonlinearity": "relu", "bottleneck_size": 800,
                "mlp2_shared_weights": 0}
    for name, default in mlp_only.items():
        if name in given and getattr(args, name) != default and args.prefix_MLP not in USES_MLP_OPTIONS:
            raise ConfigError(f"--{name} only applies to --prefix_MLP MLP1/MLP2 (now {args.prefix_MLP}); "
                              f"drop it or pick an MLP")
    if args.mlp2_shared_weights and args.prefix_MLP != "MLP2":
        raise ConfigError("--mlp2_shared_weights 1 only applies to --prefix_MLP MLP2")
    for name, default in (("residual", 1), ("separate_mlps", 0), ("mlp_lr", None)):
        if getattr(args, name) != default and args.prefix_MLP == "None":
            raise ConfigError(f"--{name} applies to a reparameterization; with --prefix_MLP None there is none")
    if args.freeze_weights == 0 and "freeze_except" in given and args.freeze_except.strip("x"):
        raise ConfigError(f"--freeze_except {args.freeze_except!r} only acts with --freeze_weights 1 "
                          f"(now every weight trains): add --freeze_weights 1 or drop it")
    # Prompt initializer: --prompt_init, or the original's --random_prompt_init / --prefix_path.
    implied = "uniform" if args.random_prompt_init else ("file" if args.prefix_path else None)
    if args.random_prompt_init and args.prefix_path:
        raise ConfigError("--random_prompt_init 1 and --prefix_path both choose the initial prompt: keep one")
    if args.prompt_init is not None and implied is not None and args.prompt_init != implied:
        raise ConfigError(f"--prompt_init {args.prompt_init} conflicts with "
                          f"{'--random_prompt_init 1' if args.random_prompt_init else '--prefix_path'}: keep one")
    args.prompt_init = args.prompt_init or implied or "vocab"
    if args.prompt_init not in PROMPT_INITS:
        raise ConfigError(f"unknown --prompt_init {args.prompt_init!r}; valid: {', '.join(PROMPT_INITS)}")
    if args.prompt_init == "file" and not args.prefix_path:
        raise ConfigError("--prompt_init file needs --prefix_path PATH.npy")
    if args.test_eval_after_every_task and not args.get_test_subset:
        print("note: --test_eval_after_every_task 1 without --get_test_subset: the final state is re-scored on "
              "the validation split at the end (final_eval in results.json)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
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
    args.eval_batch_size = args.eval_batch_size or 4 * args.batch_size
    if args.eval_every == 0:  # the original's rule (train.py)
        args.eval_every = 1 if args.num_epochs <= 50 else 5 if args.num_epochs <= 200 else 25
    return args


def inspect_run_dir(path, args):
    """What to do with the run folder, decided before anything is loaded: 'fresh', 'resume' (returns the loaded
    training state too) or 'complete'. Refuses to clobber a run, and checks that the folder can be written.
    Creates nothing: the folder is made once the run starts."""
    from checkpoints import TRAIN_STATE, differing_args, load_train_state
    from train_utils import ConfigError

    mode, state = "fresh", None
    taken = [f for f in OUTPUTS if os.path.exists(os.path.join(path, f))]
    if taken and not args.overwrite:
        if args.resume == "never":
            raise ConfigError(f"run folder {path} already holds {', '.join(taken)}: pick another --save_name, "
                              f"pass --resume auto to continue it, or --overwrite 1 to start over")
        results, saved_args = _read_json(os.path.join(path, "results.json")), None
        if os.path.exists(os.path.join(path, TRAIN_STATE)):
            try:
                state = load_train_state(os.path.join(path, TRAIN_STATE))
            except Exception as e:  # a torn or foreign file: say so, never guess
                raise ConfigError(f"cannot read the checkpoint {os.path.join(path, TRAIN_STATE)} ({type(e).__name__}):"
                                  f" pass --overwrite 1 to start over") from None
            mode, saved_args = "resume", state["args"]
        elif results.get("complete"):
            mode, saved_args = "complete", _read_json(os.path.join(path, "args.json"))
        else:  # an unfinished run that never wrote a checkpoint: nothing to continue from
            raise ConfigError(f"run folder {path} holds {', '.join(taken)} of an unfinished run without a checkpoint"
                              f" to continue: pass --overwrite 1 to start over or pick another --save_name")
        diff = differing_args(saved_args or {}, vars(args))
        if diff:
            raise ConfigError(f"run folder {path} holds a run with other arguments ({'; '.join(diff)}): rerun with "
                              f"its arguments, pick another --save_name, or pass --overwrite 1 to replace it")
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):  # the nearest folder that exists: the run folder will be made inside it
        if os.path.exists(existing):
            raise ConfigError(f"cannot create run folder {path}: {existing} is a file; choose another --save_dir")
        existing = os.path.dirname(existing)
    try:  # a real write (not os.access): catches read-only mounts, full disks and quota
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-") as f:
            f.write(b"x" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(f"cannot write under {existing} ({e.strerror}); choose a writable --save_dir") from None
    return mode, state


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class StopSignal:
    """SIGTERM/SIGUSR1 (SLURM's warning before preemption or the time limit): checkpoint at the next step boundary
    and exit 75. A repeat of the same signal, or any signal more than ``grace_s`` seconds later, exits at once;
    every file is written atomically, so nothing is torn. A *different* signal within ``grace_s`` is the same
    request: on preemption SLURM sends SIGTERM to every process of the job while scripts/requeue_on_signal.sh
    forwards its own as SIGUSR1, and that pair must still end in a checkpoint."""

    def __init__(self, grace_s=5.0):
        self.name, self.at, self.grace_s = None, 0.0, grace_s

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.name is not None:
            if name != self.name and time.monotonic() - self.at < self.grace_s:
                return
            os._exit(EXIT_INTERRUPTED)
        self.name, self.at = name, time.monotonic()
        print(f"train.py: {self.name} received: writing a checkpoint at the next step boundary, then exiting "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def __bool__(self):
        return self.name is not None


def load_model(name):
    """(model, tokenizer, encoder_only) from a Hub name or a local directory: a T5ForConditionalGeneration, or for
    a BERT-style checkpoint (BERT, RoBERTa, MiniLM, ...) its encoder (encoder_model.load_encoder)."""
    from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging
    from train_utils import ConfigError

    hf_logging.disable_progress_bar()  # its "Loading weights" bar on stderr is noise around our own output

    if os.path.sep in name or name.startswith(".") or os.path.exists(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ConfigError(f"--model_name {name}: no config.json there; give a directory written by "
                              f"save_pretrained (e.g. python scripts/make_tiny_t5.py {name}) or a Hub name")
    try:
        config = AutoConfig.from_pretrained(name)
        import encoder_model

        if encoder_model.is_encoder_only(config):
            return (*encoder_model.load_encoder(name), True)
        if config.model_type not in ("t5", "mt5"):
            raise ConfigError(f"--model_name {name} is a {config.model_type!r} model; train.py tunes prompts for "
                              f"T5 encoder-decoders (t5-base, google/flan-t5-base, ...) and BERT-style encoders "
                              f"({', '.join(encoder_model.ENCODER_TYPES)})")
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = T5ForConditionalGeneration.from_pretrained(name)
    except ConfigError:
        raise
    except Exception as e:  # any failure here is a problem with the model the user named
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load model {name!r} ({first[:200]}); offline, pass --model_name a local T5 "
                          f"directory with config.json, weights and tokenizer files") from None
    return model, tokenizer, False


def versions():
    import datasets
    import numpy
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "numpy": numpy.__version__}


def run(args):
    import torch

    import checkpoints as ck
    import data_utils
    import train_utils as tu

    t0 = time.time()
    save_path = os.path.join(args.save_dir, args.save_name)
    mode, saved_state = inspect_run_dir(save_path, args)
    if mode == "complete":
        print(f"done: {save_path} is already complete (results.json); pass --overwrite 1 to train it again")
        return 0

    # ---- seed and device ----
    import distributed

    dist, device_name = distributed.from_environment(args.device)
    if not dist.is_main:  # rank 0 alone prints and writes files
        sys.stdout = open(os.devnull, "w")
        args.progress = 0
    tu.seed_everything(args.seed)  # the same on every rank: the same initial prompt and network
    device = tu.resolve_device(device_name)

    # ---- data ----
    task = data_utils.get_task(args.task)
    splits = data_utils.build_splits(task, args.data_dir, args.select_k_per_class, bool(args.get_test_subset),
                                     args.limit_val_set, args.data_seed)
    if not splits["train"] or not splits["val"]:
        raise tu.ConfigError(f"task {task.name}: the training or validation split is empty after selection; "
                             f"check --select_k_per_class / --limit_val_set")

    # ---- model ----
    model, tokenizer, encoder_only = load_model(args.model_name)
    if encoder_only:  # BERT-style: the prompt after [CLS], a classification (stsb: regression) head on [CLS]
        import encoder_model

        encoder_model.check_task(task)
        if args.fsdp or args.compile:
            raise tu.ConfigError("--fsdp and --compile are implemented for T5 models only: drop them for "
                                 f"{args.model_name}")
        encode = encoder_model.encode_split_encoder
    else:
        encode = tu.encode_split
    train = encode(task, splits["train"], tokenizer, args.seq_len)
    val = encode(task, splits["val"], tokenizer, args.seq_len, splits.get("val_groups"),
                          splits.get("val_official_groups"))
    test = None
    if splits.get("test"):
        test = encode(task, splits["test"], tokenizer, args.seq_len, splits.get("test_groups"),
                               splits.get("test_official_groups"))
    if encoder_only:
        wrapper, prompt_ids, n_model_trainable = encoder_model.build_prompt_encoder(model, args, tokenizer, task)
    else:
        wrapper, prompt_ids, n_model_trainable = tu.build_prompt_model(model, args, tokenizer, task.label_words)
    wrapper.to(device)
    if args.fsdp:
        distributed.shard_frozen_model(model, device, dist.world)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.compile:  # the encoder is most of the compute; dynamic shapes because batches are padded per batch
        model.encoder.forward = torch.compile(model.encoder.forward, dynamic=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    order = tu.length_grouped_order(train, args.batch_size, args.data_seed) if args.group_by_length else None
    full_model = n_model_trainable > 0  # some model weights train: snapshots and outputs must include the model

    # ---- optimizer (and the state to continue from) ----
    optimizer = tu.build_optimizer(args.optimizer, wrapper, args.lr, args.mlp_lr, args.weight_decay)
    state, spent = None, 0.0
    if mode == "resume":
        state, spent = ck.restore_train_state(saved_state, wrapper, optimizer, scaler)
        print(f"resuming {save_path} at epoch {state.epoch}, step {state.step}")
    elif dist.is_main:
        os.makedirs(save_path, exist_ok=True)
        if os.path.exists(os.path.join(save_path, ck.TRAIN_STATE)):  # --overwrite 1: the old run's state must go
            os.unlink(os.path.join(save_path, ck.TRAIN_STATE))

    # ---- loop ----
    vars_ = vars(args).copy()
    if dist.is_main:
        ck.save_json(os.path.join(save_path, "args.json"), vars_)
    pad_to = args.seq_len if args.pad_to_max_length else None
    info = {"task": task.name, "device": str(device), "world_size": dist.world, "versions": versions(),
            "n_examples": {"train": len(train), "validation": len(val), "test": len(test) if test else 0},
            "trainable_params": {
                "prompt": 0 if wrapper.prompt is None else wrapper.prompt.numel(),
                "reparam": 0 if wrapper.reparam is None else sum(p.numel() for p in wrapper.reparam.parameters()),
                "model": n_model_trainable,
                "head": 0 if wrapper.head is None else sum(p.numel() for p in wrapper.head.parameters())},
            "prompt_init": {"method": args.prompt_init if wrapper.prompt is not None else None,
                            "token_ids": None if prompt_ids is None else [int(i) for i in prompt_ids]}}

    def elapsed():
        return spent + time.time() - t0

    def write_results(history, final=None):
        if not dist.is_main:
            return
        score_dict = {"val": {"acc": [e["metric"] for e in history.evals], "loss": [e["loss"] for e in history.evals]},
                      "train": {"acc": history.train_acc, "loss": history.train_loss}}
        ck.save_npy(os.path.join(save_path, "score_dict.npy"), score_dict, allow_pickle=True)
        results = {**info, "complete": False, "validation": history.evals,
                   "train": {"loss": history.train_loss, "acc": history.train_acc, "step_losses": history.step_losses},
                   "best_epoch": history.best_epoch,
                   "best_val_score": None if history.best_epoch is None else history.best_score,
                   "wall_time_s": round(elapsed(), 3)}
        if args.test_eval_after_every_task and test is not None:
            results["test_history"] = history.test_evals
        results.update(final or {})
        ck.save_json(os.path.join(save_path, "results.json"), results)

    def write_state(s):
        if not dist.is_main:
            return
        ck.save_train_state(os.path.join(save_path, ck.TRAIN_STATE), s, wrapper, optimizer, vars_, elapsed(),
                            full_model, scaler)

    stop = StopSignal()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    state = state or tu.TrainState()
    try:
        history, best = tu.fit(
            wrapper, optimizer, train, val, task, tokenizer, device, epochs=args.num_epochs,
            batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, eval_every=args.eval_every,
            early_stopping=bool(args.early_stopping), model_dropout=bool(args.model_dropout),
            train_eval_batches=args.train_eval_batches, pad_to=pad_to, test=test,
            test_every_eval=bool(args.test_eval_after_every_task), full_model=full_model,
            on_eval=write_results, progress=bool(args.progress), state=state,
            save_every_steps=args.save_every_steps, on_checkpoint=write_state, stop_requested=lambda: bool(stop),
            order=order, scaler=scaler, dist=dist)
    except tu.Interrupted as e:
        print(f"train.py: {e} after {stop.name}; the checkpoint is in {save_path}: run the same command again to "
              f"continue", file=sys.stderr, flush=True)
        # The pair's second signal may land while the interpreter shuts down, which puts Python handlers back to the
        # default action (death by SIGUSR1, exit -10, and no requeue); ignored signals stay ignored.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        return EXIT_INTERRUPTED
    except tu.NonFiniteLoss as e:
        write_results(state.history, final={"error": str(e)})
        print(f"train.py: error: {e} (the last good checkpoint and the best state are kept in {save_path})",
              file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        if not stop:  # after a stop request, a late second signal of the pair must not find the default action
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ---- final evaluation with the best state, then save ----
    tu.load_snapshot(wrapper, best)
    final = {}
    if test is not None:
        final["test"] = _scores(tu.evaluate(wrapper, test, task, tokenizer, args.eval_batch_size, device, pad_to,
                                             args.batch_size, dist))
    elif args.test_eval_after_every_task:
        final["final_eval"] = {"split": "validation", **_scores(
            tu.evaluate(wrapper, val, task, tokenizer, args.eval_batch_size, device, pad_to, args.batch_size, dist))}
    if not dist.is_main:
        return 0
    if best["projected_prompt"] is not None:
        # differs from original: it saved the final *raw* prompt; inference needs the best *projected* one.
        ck.save_npy(os.path.join(save_path, "prompt.npy"), best["projected_prompt"].numpy())
    ck.save_checkpoint(os.path.join(save_path, "checkpoint.pt"), best, vars_,
                       {"best_epoch": history.best_epoch, "best_val_score": history.best_score
                        if history.best_epoch is not None else None})
    if full_model:
        wrapper.model.save_pretrained(os.path.join(save_path, "model"))
        tokenizer.save_pretrained(os.path.join(save_path, "model"))
    write_results(history, final={**final, "complete": True})
    if os.path.exists(os.path.join(save_path, ck.TRAIN_STATE)):  # complete: results.json now says so
        os.unlink(os.path.join(save_path, ck.TRAIN_STATE))
    best_txt = "" if history.best_epoch is None else f" best epoch {history.best_epoch} val {history.best_score:.4f}"
    test_txt = f" test {final['test']['score']:.4f}" if "test" in final else ""
    print(f"done: {task.name}{best_txt}{test_txt} -> {save_path}")
    return 0


def _scores(res):
    return {k: res[k] for k in ("score", "metric", "official", "loss")}


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from data_utils import DataError
    from train_utils import ConfigError

    try:
        check_args(args, explicit_flags(parser, argv))
        return run(args)
    except (ConfigError, DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if "distributed" in sys.modules:
            sys.modules["distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
