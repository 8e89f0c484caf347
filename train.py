"""Residual Prompt Tuning (Razdaibiedina et al., Findings of ACL 2023): train a soft prompt, optionally through a
residual MLP, for a frozen T5 on a GLUE / SuperGLUE task, with early stopping; write scores and the prompt.

One GPU (Residual PT in the paper's Table 1 protocol, scored on a held-out half of validation: --get_test_subset 1):
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
Exit codes: 0 done (or already complete), 1 the run is complete but its adapter could not be written or pushed
(--save_adapter 1, --push_to_hub), 2 bad input (one line on stderr), 3 training diverged (NaN/inf loss),
75 stopped by SIGTERM/SIGUSR1/SIGINT with what is needed to continue on disk: run the same command again.
Every flag: python train.py --help. Module map: docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import os
import signal

# A stop request while the libraries load (seconds, before anything is written): exit 75, so that SLURM requeues and
# the rerun starts the run; main() then installs StopSignal for the run itself.
if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(_sig, lambda signum, frame: os._exit(75))

import errno  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import torch  # noqa: E402

import data_utils  # noqa: E402
import distributed  # noqa: E402
import models  # noqa: E402
import run_folder as rf  # noqa: E402
import tracking  # noqa: E402
import train_utils as tu  # noqa: E402
from arguments import EXIT_BAD_INPUT, build_parser, check_args  # noqa: E402
from errors import ConfigError, DataError  # noqa: E402
from train_utils import Interrupted  # noqa: E402

EXIT_DIVERGED = 3
EXIT_ADAPTER_FAILED = 1  # the run is complete on disk; writing or uploading its adapter failed (--save_adapter 1,
# --push_to_hub): run the same command again to retry
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: what is needed to continue is on disk; run again (the sbatch scripts requeue)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignal:
    """SIGTERM/SIGUSR1 (SLURM's warning before preemption or the time limit) and SIGINT (Ctrl-C), for the whole run.
    Inside ``deferred()`` (the training loop) a request is noted and the loop checkpoints at the next step boundary;
    anywhere else it stops at once (every file is written atomically, so nothing is torn). Either way: exit 75.
    A repeat of the same signal, or any signal more than ``grace_s`` seconds later, exits at once. A *different*
    signal within ``grace_s`` is the same request: on preemption SLURM sends SIGTERM to every process of the job
    while scripts/requeue_on_signal.sh forwards its own as SIGUSR1, and that pair must still end in a checkpoint."""

    def __init__(self, grace_s=5.0):
        self.name, self.at, self.grace_s, self._deferred, self._previous = None, 0.0, grace_s, False, {}

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self) for sig in SIGNALS}
        return self

    def __exit__(self, *exc):
        # After a stop, a late second signal of the pair may land while the interpreter shuts down (which puts
        # the default actions back: death by SIGUSR1, no requeue); ignored signals stay ignored.
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self else handler)
        return False

    @contextmanager
    def deferred(self):
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.name is not None:
            if name != self.name and time.monotonic() - self.at < self.grace_s:
                return
            os._exit(EXIT_INTERRUPTED)
        self.name, self.at = name, time.monotonic()
        if not self._deferred:  # start-up or final evaluation: stop here (the trainer checkpoints in its loop)
            raise Interrupted("stopped outside the training loop")
        print(f"train.py: {name} received: writing a checkpoint at the next step boundary, then exiting "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def __bool__(self):
        return self.name is not None


def versions():
    import datasets
    import numpy
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "numpy": numpy.__version__}


def run(args, stop: StopSignal):
    t0 = time.time()
    dist, device_name = distributed.from_environment(args.device)
    folder = rf.RunFolder(os.path.join(args.save_dir, args.save_name))
    mode, saved = folder.claim(args, lock=dist.is_main)
    failed = True
    try:
        if mode == "complete":
            print(f"done: {folder.path} is already complete (results.json); pass --overwrite 1 to train it again")
            failed = False
            wanted = args.save_adapter == "1" or args.push_to_hub is not None
            return _adapter(args, folder) if wanted else 0
        code = _train(args, stop, folder, mode, saved, dist, device_name, t0)
        failed = False
        return code
    except Interrupted:
        failed = False  # what was written is what a rerun continues from
        raise
    finally:
        folder.release(failed)


def _train(args, stop, folder, mode, saved, dist, device_name, t0):
    if not dist.is_main:  # rank 0 alone prints and writes files
        sys.stdout, args.progress = open(os.devnull, "w"), 0
    tu.seed_everything(args.seed)  # the same on every rank: the same initial prompt and network
    device = tu.resolve_device(device_name)

    # ---- data ----
    task = data_utils.get_task(args.task)
    splits = data_utils.build_splits(task, args.data_dir, args.select_k_per_class, bool(args.get_test_subset),
                                     args.limit_val_set, args.data_seed)
    if not splits["train"] or not splits["val"]:
        raise ConfigError(f"task {task.name}: the training or validation split is empty after selection; "
                          f"check --select_k_per_class / --limit_val_set")
    fingerprint = data_utils.data_fingerprint(splits)
    if args.select_k_per_class != -1 and data_utils.few_shot_sizes(task, args.select_k_per_class,
                                                                   bool(args.get_test_subset))[0] == -1:
        print(f"note: {task.name} trains on all its rows: the original's few-shot rule ignores --select_k_per_class "
              f"{args.select_k_per_class} for it (docs/FAITHFULNESS.md)")

    # ---- model and optimizer (and the state to continue from) ----
    model, tokenizer = models.load_model(args.model_name)
    wrapper, prompt_ids = models.build_model(model, tokenizer, args, task)
    if (args.save_adapter == "1" or args.push_to_hub is not None) and not isinstance(wrapper, models.PromptT5):
        raise ConfigError(f"--save_adapter 1 / --push_to_hub: PEFT prompt tuning adapters hold T5 prompts only; "
                          f"{args.model_name} is a BERT-style encoder (its prompt and head are in checkpoint.pt)")
    train, val, test = (None if splits.get(s) is None else wrapper.encode_split(
        task, splits[s], tokenizer, args.seq_len, splits.get(f"{s}_groups"), splits.get(f"{s}_official_groups"))
        for s in ("train", "val", "test"))
    test = test if test else None
    _place(args, wrapper, device, dist)
    optimizer = tu.build_optimizer(args.optimizer, wrapper, args.lr, args.mlp_lr, args.weight_decay,
                                   head_lr=args.head_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    state, spent = tu.TrainState(), 0.0
    if mode == "resume":
        if saved.get("data_fingerprint") not in (None, fingerprint):
            raise ConfigError(f"the data differs from the data {folder.path} was trained on (fingerprint "
                              f"{saved['data_fingerprint'][:12]} != {fingerprint[:12]}): use the same --data_dir "
                              f"files, or --overwrite 1 to start over")
        state, spent = rf.restore_train_state(saved, wrapper, optimizer, scaler)
        print(f"resuming {folder.path} at epoch {state.epoch}, step {state.step}")
    arg_dict = vars(args).copy()
    if dist.is_main:
        folder.start(arg_dict) if mode == "fresh" else folder.write_args(arg_dict)
    info = _run_info(args, task, device, dist, wrapper, prompt_ids, (train, val, test), fingerprint)

    # ---- loop ----
    def elapsed():
        return spent + time.time() - t0

    def write_results(history, final=None):
        if dist.is_main:
            return folder.write_results(rf.results_record(info, history, final, elapsed(), test_history=bool(
                args.test_eval_after_every_task and test is not None)), history)

    def write_state(s):
        if dist.is_main:
            folder.write_state(s, wrapper, optimizer, arg_dict, elapsed(), scaler, data_fingerprint=fingerprint)

    cfg = _fit_config(args, task, train, scaler, dist)
    tracker = tracking.make_tracker(args.report_to if dist.is_main else "none", folder.path, args.save_name, arg_dict)

    def log_metrics(record):
        if dist.is_main:
            folder.log_metrics(record)
            tracker.log(record)

    hooks = tu.Hooks(on_eval=write_results, on_checkpoint=write_state, stop_requested=lambda: bool(stop),
                     on_metrics=log_metrics)
    try:
        with stop.deferred():
            history, best = tu.fit(wrapper, optimizer, train, val, cfg, hooks, state, test)
    except tu.NonFiniteLoss as e:
        write_results(state.history, final={"error": str(e)})
        print(f"train.py: error: {e} (the last good checkpoint and the best state are kept in {folder.path})",
              file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        tracker.close()

    # ---- final evaluation with the best state, then save ----
    wrapper.load_trainable_state(best)
    final, predictions = _final_eval(args, wrapper, task, val, test, dist, state.best_eval)
    final["norms"] = wrapper.norms(best)
    if dist.is_main:
        for split, preds in predictions.items():
            folder.write_predictions(split, [data_utils.prediction_record(task, row, pred)
                                             for row, pred in zip(splits[split], preds)])
        folder.save_final(best, arg_dict, history, wrapper)
        folder.write_all_results(write_results(history, final={**final, "complete": True}))
        folder.finish()
    print(f"done: {task.name}{_summary(history, final)} -> {folder.path}")
    if dist.is_main and isinstance(wrapper, models.PromptT5) and args.prefix_len > 0:
        return _adapter(args, folder)
    return 0


def _adapter(args, folder):
    """RUN/adapter/ (--save_adapter) and its upload (--push_to_hub), after the run is complete. --save_adapter auto
    writes it when peft is installed and says so otherwise; a failure there is a warning (the run's numbers stand).
    With --save_adapter 1 or --push_to_hub a failure is an error: exit 1, the run stays complete."""
    import importlib.util

    required = args.save_adapter == "1" or args.push_to_hub is not None
    if args.save_adapter == "0":
        return 0
    if importlib.util.find_spec("peft") is None:  # auto (required runs were refused before training)
        print("note: peft is not installed, so no adapter/ was written (pip install peft; then "
              "python scripts/export_peft.py RUN RUN/adapter)")
        return 0
    import peft_adapter

    out = folder.file(rf.ADAPTER_DIR)
    try:
        if not (required and os.path.isfile(os.path.join(out, "adapter_config.json"))):
            peft_adapter.write_run_adapter(folder.path)
            print(f"adapter: {out} (PeftModel.from_pretrained)")
        if args.push_to_hub is not None:
            print(f"pushed {out} to {peft_adapter.push(out, args.push_to_hub)}")
    except (peft_adapter.AdapterError, OSError) as e:
        level = "error" if required else "warning"
        print(f"train.py: {level}: {e}", file=sys.stderr)
        return EXIT_ADAPTER_FAILED if required else 0
    return 0


def _fit_config(args, task, train, scaler, dist):
    return tu.FitConfig(task=task, epochs=args.num_epochs, batch_size=args.batch_size,
                        eval_batch_size=args.eval_batch_size, eval_every=args.eval_every,
                        early_stopping=bool(args.early_stopping), model_dropout=bool(args.model_dropout),
                        train_eval_batches=args.train_eval_batches,
                        pad_to=args.seq_len if args.pad_to_max_length else None,
                        test_every_eval=bool(args.test_eval_after_every_task),
                        save_every_steps=args.save_every_steps, log_every_steps=args.log_every_steps,
                        progress=bool(args.progress), scaler=scaler, dist=dist,
                        order=tu.length_grouped_order(train, args.batch_size, args.data_seed)
                        if args.group_by_length else None)


def _summary(history, final):
    best = "" if history.best_epoch is None else f" best epoch {history.best_epoch}" + (
        f" val {history.best_score:.4f}" if math.isfinite(history.best_score) else " (not validated)")
    return best + (f" test {final['test']['score']:.4f}" if "test" in final else "")


def _place(args, wrapper, device, dist):
    """Device, sharding, TF32 and compilation: decided once, here."""
    t5 = hasattr(wrapper.model, "encoder") and hasattr(wrapper.model, "decoder")
    if (args.fsdp or args.compile) and not t5:
        raise ConfigError(f"--fsdp and --compile are implemented for T5 models only: drop them for {args.model_name}")
    wrapper.to(device)
    if args.fsdp:
        distributed.shard_frozen_model(wrapper.model, device, dist.world)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.compile:  # the encoder is most of the compute; dynamic shapes because batches are padded per batch
        wrapper.model.encoder.forward = torch.compile(wrapper.model.encoder.forward, dynamic=True)


def _run_info(args, task, device, dist, wrapper, prompt_ids, data, fingerprint):
    """The facts at the top of results.json."""
    def count(module):
        return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)

    train, val, test = data
    return {"task": task.name, "device": str(device), "world_size": dist.world, "versions": versions(),
            "args": {k: v for k, v in vars(args).items() if k not in rf.NOT_DEFINING},  # what defines the run
            "data_fingerprint": fingerprint,
            "n_examples": {"train": len(train), "validation": len(val), "test": len(test) if test else 0},
            "trainable_params": {"prompt": 0 if wrapper.prompt is None else wrapper.prompt.numel(),
                                 "reparam": count(wrapper.reparam), "model": count(wrapper.model),
                                 "head": count(getattr(wrapper, "head", None))},
            "prompt_init": {"method": args.prompt_init if wrapper.prompt is not None else None,
                            "token_ids": None if prompt_ids is None else [int(i) for i in prompt_ids]}}


def _final_eval(args, wrapper, task, val, test, dist, kept=None):
    """The best state on validation (and the test subset): (results.json entries, {split: predictions}). ``kept``:
    fit's own evaluations of that state (TrainState.best_eval), used instead of evaluating the same state again."""
    kwargs = dict(batch_size=args.eval_batch_size, loss_batch_size=args.batch_size,
                  pad_to=args.seq_len if args.pad_to_max_length else None, dist=dist)
    kept = kept or {}
    res_val = kept.get("val") or tu.evaluate(wrapper, val, task, **kwargs)
    final, predictions = {}, {"val": res_val["predictions"]}
    if test is not None:
        res_test = kept.get("test") or tu.evaluate(wrapper, test, task, **kwargs)
        final["test"], predictions["test"] = _scores(res_test), res_test["predictions"]
        final["test"]["constant_score"] = data_utils.constant_score(task, res_test["targets"], test.groups)
    elif args.test_eval_after_every_task:
        final["final_eval"] = {"split": "validation", **_scores(res_val)}
    return final, predictions


def _scores(res):
    return {k: res[k] for k in ("score", "metric", "official", "loss")}


def _continue_hint(args):
    if args.overwrite:
        return "run the same command WITHOUT --overwrite 1 to continue (with it, the run starts over)"
    return "run the same command again to continue"


def main(argv=None):
    args = build_parser(__doc__.split("\n\n")[0]).parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with StopSignal() as stop:
            try:
                check_args(args)
                return run(args, stop)
            except Interrupted as e:
                where = os.path.join(args.save_dir, args.save_name)
                saved = f"the checkpoint is in {where}" if str(e).startswith("stopped a") else "nothing is lost"
                print(f"train.py: {e} after {stop.name}; {saved}: {_continue_hint(args)}", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
    except (ConfigError, DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as a RuntimeError (OutOfMemoryError)
        if not isinstance(e, MemoryError) and "alloc" not in str(e) and "out of memory" not in str(e):
            raise
        print(f"train.py: error: out of memory ({args.batch_size} x {args.seq_len} tokens, prompt {args.prefix_len}): "
              f"lower --batch_size, --seq_len or --prefix_len", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # writes go through run_folder.atomic_write (a ConfigError); this is any other file
        what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or type(e).__name__
        print(f"train.py: error: {e.filename or 'a file'}: {what}; files written before are intact: fix it, then "
              f"{_continue_hint(args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
