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
        signal.signal(_sig, lambda signum, frame: os._exit(75))  # EXIT_INTERRUPTED, before any import

import errno  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from arguments import build_parser, check_args, check_model_folder  # noqa: E402
from residual_prompts.errors import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED,  # noqa: E402
                                     ConfigError, DataError, Interrupted)

# The run's libraries: torch, and transformers through models (~2-3 s), loaded by load_libraries() once the
# arguments are checked, so that bad input is refused at once.
torch = data_utils = distributed = models = rf = tracking = tu = None


def load_libraries():
    """Import the run's libraries into this module's names above (once; later calls find them loaded)."""
    global torch, data_utils, distributed, models, rf, tracking, tu
    import torch

    import data_utils
    import distributed
    import run_folder as rf
    import tracking
    import train_utils as tu
    from residual_prompts import models


SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignal:
    """SIGTERM/SIGUSR1 (SLURM's warning before preemption or the time limit) and SIGINT (Ctrl-C), for the whole run.
    The handler never raises into the code it interrupts (library code that catches Exception would turn a stop
    into an error). Inside ``deferred()`` (the training loop, the final save, the adapter export) a request is
    noted and our own code acts on it at its next safe point: the loop checkpoints at the next step boundary.
    Anywhere else the process exits at once with ``exit_code`` (75; once the run's outcome is known, that outcome):
    every file is written atomically and the lock dies with the process, so this is a kill -9 that says why, and
    the same command continues. A repeat of the same signal, or any signal more than ``grace_s`` seconds later,
    exits at once. A *different* signal within ``grace_s`` is the same request: on preemption SLURM sends SIGTERM
    to every process of the job while scripts/requeue_on_signal.sh forwards its own as SIGUSR1, and that pair must
    still end in a checkpoint. ``own_process``: leaving, ignore these signals (the interpreter's teardown puts the
    default actions back, and a late signal would turn the run's exit code into a signal death, 143)."""

    def __init__(self, grace_s=5.0, own_process=False):
        self.name, self.at, self.grace_s, self._deferred, self._previous = None, 0.0, grace_s, False, {}
        self.exit_code, self.own_process = EXIT_INTERRUPTED, own_process
        self.hint = "nothing was changed: run the same command again"

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self) for sig in SIGNALS}
        return self

    def __exit__(self, *exc):
        # After a stop, a late second signal of the pair may land while the interpreter shuts down (which puts
        # the default actions back: death by SIGUSR1, no requeue); ignored signals stay ignored.
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self or self.own_process else handler)
        return False

    @contextmanager
    def deferred(self):
        outer, self._deferred = self._deferred, True
        try:
            yield
        finally:
            self._deferred = outer

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.name is not None:
            if name != self.name and time.monotonic() - self.at < self.grace_s:
                return
            self._exit(f"{name} received again: exiting at once")
        self.name, self.at = name, time.monotonic()
        if not self._deferred:
            self._exit(f"{name} received: stopped")
        _say(f"train.py: {name} received: stopping at the next safe point (while training: a checkpoint at the "
             f"next step boundary; while writing the final files: once they are written), then exiting (send it "
             f"again to exit at once)")

    def _exit(self, what):
        tail = {EXIT_INTERRUPTED: self.hint, 0: "the run is complete"}.get(self.exit_code, f"exit {self.exit_code}")
        _say(f"train.py: {what}; {tail}")
        try:
            sys.stdout.flush()  # os._exit skips it; a flush cut into another raises, and is then skipped
        except Exception:
            pass
        os._exit(self.exit_code)

    def __bool__(self):
        return self.name is not None


def _say(line):
    """One line on stderr from a signal handler: os.write (print could be cut inside another print)."""
    try:
        os.write(2, (line + "\n").encode(errors="replace"))
    except OSError:
        pass


def versions():
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import torch
    import transformers

    try:  # its version without importing it: `import datasets` costs ~0.5-1.5 s of start-up, and only the Hub
        datasets_version = version("datasets")  # path (data.py, lazily) uses it
    except PackageNotFoundError:
        datasets_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets_version, "numpy": numpy.__version__}


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
            stop.exit_code = 0  # a stop from here on: the run is complete
            missing = not os.path.isfile(folder.file(os.path.join(rf.ADAPTER_DIR, "adapter_config.json")))
            wanted = args.save_adapter == "1" or args.push_to_hub is not None or (
                missing and args.save_adapter == "auto" and _adapter_kind(folder))
            with stop.deferred():  # finished, so seen through: exit 0
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
    check_model_folder(args.model_name)  # before the data: a mistyped folder is not a Hub name to retry for
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
    if (args.save_adapter == "1" or args.push_to_hub is not None) and not wrapper.PEFT_EXACT:
        raise ConfigError(f"--save_adapter 1 / --push_to_hub: PEFT's prompt tuning adapter does not reproduce a "
                          f"{wrapper.FAMILY} run; {args.model_name}'s prompt (and head) are in checkpoint.pt")
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
        state, spent = _resume(args, folder, saved, fingerprint, (wrapper, optimizer, scaler), len(train))
    arg_dict = vars(args).copy()
    if dist.is_main:
        folder.start(arg_dict) if mode == "fresh" else folder.write_args(arg_dict)
    stop.hint = _continue_hint(args)  # the folder is this run's now
    info = _run_info(args, task, device, dist, wrapper, prompt_ids, (train, val, test), fingerprint)

    # ---- loop ----
    def elapsed():
        return spent + time.time() - t0

    def write_results(history, final=None, complete=False):
        if dist.is_main:
            return folder.write_results(rf.results_record(info, history, final, elapsed(), test_history=bool(
                args.test_eval_after_every_task and test is not None), complete=complete), history)

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
    except BaseException as e:  # the tracker stays open on success, for the run's summary
        tracker.close()
        if not isinstance(e, tu.NonFiniteLoss):
            raise
        write_results(state.history, final={"error": str(e)})
        print(f"train.py: error: {e} (the last good checkpoint and the best state are kept in {folder.path})",
              file=sys.stderr)
        return EXIT_DIVERGED

    # ---- final evaluation with the best state, then save ----
    if dist.any(bool(stop), device):  # noted at the last step: train_state.pt holds it all, the rerun evaluates
        raise Interrupted("stopped before the final evaluation")
    wrapper.load_trainable_state(best)
    final, predictions = _final_eval(args, wrapper, task, val, test, dist, state.best_eval)
    final["norms"] = wrapper.norms(best)
    with stop.deferred():  # the final files and the adapter: seconds; a stop now is seen through, then exit 0
        if dist.is_main:
            for split, preds in predictions.items():
                folder.write_predictions(split, [data_utils.prediction_record(task, row, pred)
                                                 for row, pred in zip(splits[split], preds)])
            folder.save_final(best, arg_dict, history, wrapper)
            tracker.log(folder.write_all_results(write_results(history, final=final, complete=True), arg_dict))
            folder.finish()
        tracker.close()
        stop.exit_code = 0  # complete: a stop from here on cannot make it a failure
        print(f"done: {task.name}{_summary(history, final)} -> {folder.path}")
        if dist.is_main and wrapper.PEFT_EXACT and args.prefix_len > 0:
            return _adapter(args, folder)
    return 0


def _resume(args, folder, saved, fingerprint, parts, n_train):
    """The loaded train_state.pt put back into (wrapper, optimizer, scaler): (TrainState, seconds spent)."""
    if saved.get("data_fingerprint") not in (None, fingerprint):
        raise ConfigError(f"the data differs from the data {folder.path} was trained on (fingerprint "
                          f"{saved['data_fingerprint'][:12]} != {fingerprint[:12]}): use the same --data_dir "
                          f"files, or --overwrite 1 to start over")
    state, spent = rf.restore_train_state(saved, *parts)
    steps = tu.num_batches(n_train, args.batch_size)
    if state.step >= steps:
        raise ConfigError(f"{folder.file(rf.TRAIN_STATE)} is a corrupt checkpoint (step {state.step} of an epoch "
                          f"of {steps} steps): remove it (or pass --overwrite 1) to start the run over")
    print(f"resuming {folder.path} at epoch {state.epoch}, step {state.step}")
    return state, spent


def _adapter_kind(folder):
    """A finished prompt run of a family whose wrapper says PEFT_EXACT: the kind train.py writes an adapter/ for."""
    results, args = rf.read_json(folder.file(rf.RESULTS)), rf.read_json(folder.file(rf.ARGS))
    family = models.FAMILIES.get(results.get("family")) if isinstance(results.get("family"), str) else None
    return bool(getattr(family, "PEFT_EXACT", False)) and isinstance(args.get("prefix_len"), int) and \
        args["prefix_len"] > 0


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
        return EXIT_FAILED if required else 0
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
    if (args.fsdp or args.compile) and not wrapper.FSDP_COMPILE:
        raise ConfigError(f"--fsdp and --compile are implemented for T5 models only: drop them for {args.model_name} "
                          f"(a {wrapper.FAMILY} model)")
    wrapper.to(device)
    from residual_prompts.base import slow_precision_warning

    warning = slow_precision_warning(args.precision, device.type)  # measures ~0.1 s, only for bf16/fp16 on a CPU
    if warning:
        print(f"train.py: warning: {warning}", file=sys.stderr, flush=True)
    if args.fsdp:
        distributed.shard_frozen_model(wrapper.model, device, dist.world)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.compile:  # the encoder is most of the compute; dynamic shapes because batches are padded per batch
        wrapper.model.encoder.forward = torch.compile(wrapper.model.encoder.forward, dynamic=True)


def _run_info(args, task, device, dist, wrapper, prompt_ids, data, fingerprint):
    """The facts at the top of results.json (run_files.run_info)."""
    train, val, test = data
    return rf.run_info(task.name, wrapper.FAMILY, device, dist.world, versions(), vars(args), fingerprint,
                       {"train": len(train), "validation": len(val), "test": len(test) if test else 0},
                       wrapper.trainable_counts(),
                       {"method": args.prompt_init if wrapper.prompt is not None else None,
                        "token_ids": None if prompt_ids is None else [int(i) for i in prompt_ids]})


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
        final["test"], predictions["test"] = rf.scores(res_test), res_test["predictions"]
        final["test"]["constant_score"] = data_utils.constant_score(task, res_test["targets"], test.groups)
    elif args.test_eval_after_every_task:
        final["final_eval"] = {"split": "validation", **rf.scores(res_val)}
    return final, predictions


def _continue_hint(args):
    if args.overwrite:
        return "run the same command WITHOUT --overwrite 1 to continue (with it, the run starts over)"
    return "run the same command again to continue"


def main(argv=None, own_process=False):
    """train.py's command line -> exit code. ``own_process``: the process ends after this (stop signals are then
    ignored, so that nothing after the run turns its exit code into a signal death)."""
    args = build_parser(__doc__.split("\n\n")[0]).parse_args(sys.argv[1:] if argv is None else argv)
    code = EXIT_FAILED  # an exception that escapes (a bug) prints its traceback
    with StopSignal(own_process=own_process) as stop:
        try:
            code = _main(args, stop)
        finally:
            stop.exit_code = code  # decided: a stop during the shutdown exits with it, at once
            if distributed is not None:
                distributed.shutdown()
    return code


def _main(args, stop):
    try:
        try:
            check_args(args)
            load_libraries()
            return run(args, stop)
        except Interrupted as e:
            where = os.path.join(args.save_dir, args.save_name)
            saved = f"the checkpoint is in {where}" if e.checkpointed else "nothing is lost"
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


def leave(code):
    """End the process with ``code`` without the interpreter's teardown, which frees torch's and transformers'
    modules one by one (~0.6 s of a 14 s run; docs/PERFORMANCE.md): by now every file of the run is written
    atomically and closed. What a normal exit does that matters still happens: non-daemon threads are joined, the
    atexit functions run (logging, trackers), the standard streams are flushed."""
    import atexit
    import threading

    # What the interpreter does first on exit: threading's own exit functions (they tell idle executor workers to
    # stop), then join the non-daemon threads. Joining without the first would wait forever on an idle executor.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    else:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    leave(main(own_process=True))
