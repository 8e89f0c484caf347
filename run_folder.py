"""The run folder, save_dir/save_name: its one writer. The decision fresh/resume/complete, the lock, atomic writes,
results.json, the final files, the resumable training state, and rebuilding a trained prompt from a run
(load_run). The file names, the "complete" decision, results.json's schema and the table readers are run_files.py's
(torch-free), re-exported here.

Every file is written through a temporary file in the same folder, fsynced, then renamed over the old one, so a
crash or a kill at any instant leaves either the previous file or the new one. Everything is loadable with
``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts only, never pickled objects.
A run's folder holds a "complete" results.json only for the arguments that args.json and results.json record.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import random
import shutil
import socket
import stat
import tempfile

import numpy as np
import torch

from residual_prompts.base import PARTS
from residual_prompts.errors import ConfigError
from run_files import *  # noqa: F401,F403  (the file names, the complete decision and the readers, re-exported)
from run_files import (ALL_RESULTS, ARGS, CHECKPOINT, LOCK, METRICS_LOG, MODEL_DIR, OUTPUTS, PROMPT,
                       PREDICTIONS, RESULTS, SCORES, TENSORBOARD_DIR, TRAIN_STATE, TRAINER_STATE, all_results,
                       differing_args, is_complete, read_json, run_outputs, run_problem, train_summary, trainer_state)
from train_utils import History, TrainState

_UMASK = os.umask(0)
os.umask(_UMASK)



def atomic_write(path, write):
    """write(f) into a temporary file beside ``path``, fsync, then os.replace it over ``path``. A failed write
    (a full disk) leaves the previous file and raises OSError (train.py prints one line for it)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:  # torch.save reports a failed write (a full disk) as a RuntimeError
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = shutil.disk_usage(d).free < 2**20
        raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                      (str(e).strip().splitlines() or ["write failed"])[0][:150], path) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def open_regular(path, flags) -> int:
    """os.open for the files a run appends to or locks: never through a symbolic link (O_NOFOLLOW), never a FIFO,
    device or folder (opened without blocking, then checked); ConfigError naming the path otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666 & ~_UMASK)
    except OSError as e:
        what = "a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise ConfigError(f"{path} is {what}: a run folder's files must be plain files; remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file (a FIFO, device or folder): remove it")
    os.set_blocking(fd, True)
    return fd


def _drop_torn_line(fd):
    """Truncate an appended log after its last complete line (a kill can cut the last one short)."""
    size = os.fstat(fd).st_size
    start = max(0, size - 65536)
    tail = os.pread(fd, size - start, start)
    if not tail or tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    if cut < 0 and start:
        cut, start = os.pread(fd, size, 0).rfind(b"\n"), 0
    os.ftruncate(fd, start + cut + 1)


def save_json(path, obj):
    """Strict JSON (NaN and inf become null, so every JSON reader accepts the file)."""
    text = json.dumps(_plain(obj), indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write((text + "\n").encode()))


def _plain(o):
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def save_npy(path, array, allow_pickle=False):
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=allow_pickle))


# ---- RNG states as plain types ----------------------------------------------------------------------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])




# ---- the resumable training state ---------------------------------------------------------------------------
def save_train_state(path, state: TrainState, wrapper, optimizer, args: dict, elapsed_s: float, scaler=None,
                     data_fingerprint=None):
    """Everything needed to continue exactly: trainable state, optimizer, position, history, best, RNG, args."""
    obj = {
        "args": args, "epoch": state.epoch, "step": state.step, "elapsed_s": float(elapsed_s),
        "partial": {"losses": [float(x) for x in state.partial["losses"]], "decoded": list(state.partial["decoded"]),
                    "targets": list(state.partial["targets"])},
        "history": vars(state.history), "best": state.best, "trainable": wrapper.trainable_state(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(), "data_fingerprint": data_fingerprint,
    }
    atomic_write(path, lambda f: torch.save(obj, f))


# key -> accepted types of a train_state.pt (checked before anything is restored or written)
_STATE_SCHEMA = {"args": dict, "epoch": int, "step": int, "elapsed_s": (int, float), "partial": dict,
                 "history": dict, "best": (dict, type(None)), "trainable": dict, "optimizer": dict,
                 "scaler": (dict, type(None)), "rng": dict}


def load_train_state(path) -> dict:
    """A train_state.pt, loaded with weights_only and checked for structure; ConfigError if it is not one."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say so, never guess
        raise ConfigError(f"cannot read the checkpoint {path} ({type(e).__name__}): pass --overwrite 1 to start "
                          f"over") from None
    problem = _state_problem(obj)
    if problem:
        raise ConfigError(f"{path} is not a training state of this program ({problem}): pass --overwrite 1 to "
                          f"start over")
    problem = _state_inconsistency(obj)
    if problem:  # a checkpoint is written only after finite losses, within its --num_epochs: this one is corrupt
        raise ConfigError(f"{path} is a corrupt checkpoint ({problem}): remove it (or pass --overwrite 1) to start "
                          f"the run over")
    return obj


def _state_inconsistency(obj) -> str | None:
    """What no train_state.pt of ours holds: an epoch past its --num_epochs, a history of another length, a NaN."""
    epochs = obj["args"].get("num_epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return f"its args hold num_epochs {epochs!r}"
    if obj["epoch"] > epochs:
        return f"epoch {obj['epoch']} is past its --num_epochs {epochs}"
    losses = obj["history"].get("train_loss")
    if not isinstance(losses, list) or len(losses) != obj["epoch"]:
        return f"epoch {obj['epoch']} with a history of {len(losses) if isinstance(losses, list) else '?'} epochs"
    where = nonfinite_tensor({k: obj[k] for k in ("trainable", "best", "optimizer")})
    return f"{where} holds NaN or inf" if where else None


def nonfinite_tensor(obj, where="") -> str | None:
    """The path of the first floating-point tensor in ``obj`` (nested dicts, lists) holding NaN or inf, or None."""
    if isinstance(obj, torch.Tensor):
        return where or "a tensor" if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = nonfinite_tensor(value, f"{where}[{key!r}]" if where else str(key))
        if found:
            return found
    return None


def load_checkpoint(path) -> dict:
    """A finished run's checkpoint.pt (weights_only), checked: a dict whose tensors are finite, whose
    projected_prompt is a [P, H] tensor or None; ConfigError naming the file otherwise."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torn, foreign, pickled objects, unreadable
        raise ConfigError(f"cannot read {path} ({type(e).__name__}): it is not a checkpoint of this program; "
                          f"retrain the run") from None
    prompt = obj.get("projected_prompt", "absent") if isinstance(obj, dict) else "absent"
    if not (prompt is None or isinstance(prompt, torch.Tensor) and prompt.ndim == 2 and prompt.is_floating_point()):
        raise ConfigError(f"{path} is not a checkpoint of this program (no [P, H] projected_prompt): retrain the run")
    where = nonfinite_tensor(obj)
    if where:
        raise ConfigError(f"{path} is a corrupt checkpoint ({where} holds NaN or inf): retrain the run")
    return obj


def _state_problem(obj) -> str | None:
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not a dict"
    for key, types in _STATE_SCHEMA.items():
        if key not in obj:
            return f"no {key!r}"
        if not isinstance(obj[key], types) or isinstance(obj[key], bool):
            return f"{key!r} is a {type(obj[key]).__name__}"
    if obj["epoch"] < 0 or obj["step"] < 0:
        return "negative epoch or step"
    if set(obj["history"]) != set(History.__dataclass_fields__) or set(obj["partial"]) != {"losses", "decoded",
                                                                                            "targets"}:
        return "history or partial of another shape"
    return None


def restore_train_state(obj: dict, wrapper, optimizer, scaler=None) -> tuple[TrainState, float]:
    """Put a loaded train_state back into the wrapper and optimizer; the RNG states last, so that what follows draws
    exactly what the uninterrupted run drew. Returns (TrainState, seconds already spent). A state that does not
    fit this run raises ConfigError before the wrapper is left half-restored for training."""
    try:
        if obj["best"] is not None:  # fits this wrapper? (loaded first: the current state then overwrites it)
            wrapper.load_trainable_state(obj["best"])
        wrapper.load_trainable_state(obj["trainable"])
        optimizer.load_state_dict(obj["optimizer"])
        if scaler is not None and obj["scaler"]:
            scaler.load_state_dict(obj["scaler"])
        state = TrainState(epoch=obj["epoch"], step=obj["step"], history=History(**obj["history"]),
                           best=obj["best"], partial=obj["partial"])
        set_rng_state(obj["rng"])
    except ConfigError as e:
        raise ConfigError(f"the checkpoint does not fit this run: {e}; pass --overwrite 1 to start over") from None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        raise ConfigError(f"the checkpoint's {type(e).__name__} ({str(e).splitlines()[0][:150] if str(e) else ''})"
                          f" does not fit this run: pass --overwrite 1 to start over") from None
    return state, float(obj["elapsed_s"])


# ---- one run folder ----------------------------------------------------------------------------------------
class RunFolder:
    """save_dir/save_name: the decision fresh/resume/complete, the lock that keeps a second run out, and every
    write (args.json, results.json, train_state.pt, the final files)."""

    def __init__(self, path):
        self.path = path
        self._lock_fd = None
        self._created, self._made = False, []
        self._metrics_checked = False

    def file(self, name):
        return os.path.join(self.path, name)

    # -- claim: check writable, create, lock, decide -------------------------------------------------------
    def claim(self, args, lock=True) -> tuple[str, dict | None]:
        """-> ('fresh' | 'resume' | 'complete', the loaded training state or None). Refuses to clobber another
        run. With ``lock`` (the writing process) the folder is created and locked first (fcntl.flock, released
        when this process ends): a second run into it is refused, naming the first's pid and host."""
        self._check_writable()
        if lock:
            self._lock()
        try:
            return self._decide(args)
        except BaseException:
            self.release()
            raise

    def _check_writable(self):
        if os.path.lexists(self.path) and not os.path.exists(self.path):
            raise ConfigError(f"run folder {self.path} is a broken symbolic link: remove it or choose another "
                              f"--save_dir/--save_name")
        existing = os.path.abspath(self.path)
        while not os.path.isdir(existing):  # the nearest folder that exists: the run folder will be made inside it
            if os.path.lexists(existing):
                what = "a file" if os.path.exists(existing) else "a broken symbolic link"
                raise ConfigError(f"cannot create run folder {self.path}: {existing} is {what}; "
                                  f"choose another --save_dir")
            existing = os.path.dirname(existing)
        try:  # a real write (not os.access): catches read-only mounts, full disks and quota
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-") as f:
                f.write(b"x" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise ConfigError(f"cannot write under {existing} ({e.strerror}); choose a writable --save_dir") from None

    def _lock(self):
        self._created = not os.path.isdir(self.path)
        self._made = []  # the folders this process creates, deepest first (save_dir too, when it was missing)
        missing = os.path.abspath(self.path)
        while not os.path.isdir(missing):
            self._made.append(missing)
            missing = os.path.dirname(missing)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create run folder {self.path} ({e.strerror}); choose another --save_dir"
                              ) from None
        for _ in range(100):  # the lock file is removed on release: lock it, then check it is still the one there
            fd = open_regular(self.file(LOCK), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise ConfigError(f"run folder {self.path} is in use by {holder}: wait for that run to end, or "
                                  f"choose another --save_name") from None
            try:
                if os.stat(self.file(LOCK)).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it after we opened it: take the new one
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._lock_fd = fd
        log = self.file(METRICS_LOG)  # appended to during the run: refused now, before any work, if not a file
        if os.path.lexists(log) and (os.path.islink(log) or not os.path.isfile(log)):
            self.release()
            raise ConfigError(f"{log} is a symbolic link or not a regular file: a run folder's files must be plain "
                              f"files; remove it")
        for name in os.listdir(self.path):  # temporary files of writes cut short by kill -9 (we hold the lock)
            if name.startswith(".tmp-"):
                os.unlink(self.file(name))

    def release(self, failed=False):
        """Unlock and remove the lock file. A folder this process created is removed again when it is left empty,
        or (``failed``: the run ended in an error) when it holds no result yet, only args.json and logs."""
        if self._lock_fd is None:
            return
        if self._created and failed and not any(os.path.exists(self.file(f)) for f in OUTPUTS):
            for name in (ARGS, METRICS_LOG):
                if os.path.exists(self.file(name)):
                    os.unlink(self.file(name))
            shutil.rmtree(self.file(TENSORBOARD_DIR), ignore_errors=True)
        os.unlink(self.file(LOCK))  # while still locked, so that no one can take a lock on a file about to go
        os.close(self._lock_fd)
        self._lock_fd = None
        for folder in self._made:  # the run folder, then a save_dir made for it: gone again when left empty
            try:
                os.rmdir(folder)
            except OSError:  # not empty (another run's, or files of this one), or already gone
                break

    def _decide(self, args):
        taken = [f for f in OUTPUTS if os.path.exists(self.file(f))]
        if not taken or args.overwrite:
            return "fresh", None
        if args.resume == "never":
            raise ConfigError(f"run folder {self.path} already holds {', '.join(taken)}: pick another --save_name, "
                              f"pass --resume auto to continue it, or --overwrite 1 to start over")
        results = read_json(self.file(RESULTS), required=RESULTS in taken)
        if os.path.exists(self.file(TRAIN_STATE)):
            state = load_train_state(self.file(TRAIN_STATE))
            mode, saved = "resume", state["args"]
        else:
            state, saved = None, read_json(self.file(ARGS), required=True)
            # complete only when results.json says so for these very arguments (it records them); unfinished without
            # a checkpoint: nothing to continue, start over
            mode = "complete" if is_complete(results, saved) else "fresh"
        diff = differing_args(saved, vars(args))
        if diff:
            raise ConfigError(f"run folder {self.path} holds a run with other arguments ({'; '.join(diff)}): rerun "
                              f"with its arguments, pick another --save_name, or pass --overwrite 1 to replace it")
        return mode, state

    # -- writes ---------------------------------------------------------------------------------------------
    def start(self, args: dict):
        """A fresh start: the previous run's outputs go first (results.json first: the folder never claims a result
        its args.json does not describe), then args.json is written."""
        os.makedirs(self.path, exist_ok=True)
        for name in run_outputs(self.path):  # every output of a replaced run (side outputs included)
            target = self.file(name)
            shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.unlink(target)
        save_json(self.file(ARGS), args)

    def write_args(self, args: dict):
        save_json(self.file(ARGS), args)

    def write_results(self, results: dict, history: History) -> dict:
        score_dict = {"val": {"acc": [e["metric"] for e in history.evals], "loss": [e["loss"] for e in history.evals]},
                      "train": {"acc": history.train_acc, "loss": history.train_loss}}
        save_npy(self.file(SCORES), score_dict, allow_pickle=True)
        save_json(self.file(RESULTS), results)
        return results

    def log_metrics(self, record: dict):
        """Append one line to metrics.jsonl (followed live: tail -f, or pandas.read_json(path, lines=True)). A run
        resumed from a checkpoint appends again from there: a (epoch, step) may then appear twice, the later
        line being the one the finished run's numbers continue from. A last line torn by a kill is dropped before
        this process appends its first; a symbolic link or a non-regular file there is refused."""
        fd = open_regular(self.file(METRICS_LOG), os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            if not self._metrics_checked:
                _drop_torn_line(fd)
                self._metrics_checked = True
            os.write(fd, (json.dumps(_plain(record), allow_nan=False) + "\n").encode())
        finally:
            os.close(fd)

    def write_predictions(self, split: str, rows: list[dict]):
        """predictions_{split}.jsonl: one line per row (id, input, target, prediction), for error analysis."""
        text = "".join(json.dumps(_plain(r), allow_nan=False) + "\n" for r in rows)
        atomic_write(self.file(PREDICTIONS.format(split=split)), lambda f: f.write(text.encode()))

    def write_all_results(self, results: dict, args: dict) -> dict:
        """all_results.json (run_files.all_results: flat, as transformers' run_glue writes it), the run's summary
        appended to metrics.jsonl, and trainer_state.json (its log_history: metrics.jsonl). Returns the summary."""
        flat = all_results(results)
        save_json(self.file(ALL_RESULTS), flat)
        records = self.read_metrics()
        summary = train_summary(flat, max((r.get("step") or 0 for r in records), default=0))
        self.log_metrics(summary)
        save_json(self.file(TRAINER_STATE), trainer_state(records + [summary], flat, args))
        return summary

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's records (a line cut short by a kill is left out)."""
        out = []
        if os.path.exists(self.file(METRICS_LOG)):
            with open(self.file(METRICS_LOG)) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        return out

    def write_state(self, *a, **kw):
        save_train_state(self.file(TRAIN_STATE), *a, **kw)

    def save_final(self, best: dict, args: dict, history: History, wrapper=None):
        """prompt.npy (the best projected prompt), checkpoint.pt, and model/ when model weights trained."""
        if best["projected_prompt"] is not None:
            # differs from original: it saved the final *raw* prompt; inference needs the best *projected* one.
            save_npy(self.file(PROMPT), best["projected_prompt"].numpy())
        extra = {"best_epoch": history.best_epoch,
                 "best_val_score": None if history.best_epoch is None or not math.isfinite(history.best_score)
                 else history.best_score}
        obj = {"projected_prompt": best["projected_prompt"], "args": args, **extra,
               **{k: v for k, v in best.items() if k not in ("projected_prompt", "model")}}
        atomic_write(self.file(CHECKPOINT), lambda f: torch.save(obj, f))
        if best.get("model") is not None and wrapper is not None:
            wrapper.model.save_pretrained(self.file(MODEL_DIR))
            wrapper.tokenizer.save_pretrained(self.file(MODEL_DIR))

    def finish(self):
        """After results.json says complete: the training state is no longer needed."""
        if os.path.exists(self.file(TRAIN_STATE)):
            os.unlink(self.file(TRAIN_STATE))


def load_run(path, model_name=None, device="cpu"):
    """Rebuild a finished run's trained wrapper (best state) from its folder: (wrapper, args dict, results dict).
    ``model_name`` overrides the recorded --model_name (e.g. the model moved)."""
    from argparse import Namespace

    import data_utils
    from residual_prompts import models

    fix = "pass the save_dir/save_name folder of a finished train.py run"
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: no such run folder: {fix}")
    for name in (ARGS, RESULTS):
        if not os.path.isfile(os.path.join(path, name)):
            raise ConfigError(f"{path} is not a finished run folder (it has no {name}): {fix}")
    args = read_json(os.path.join(path, ARGS), required=True)
    built = Namespace(**{**args, "prompt_init": "uniform", "prefix_path": ""})  # the prompt is then loaded
    results = read_json(os.path.join(path, RESULTS), required=True)
    if not is_complete(results):
        raise ConfigError(f"{path} is not a finished run (results.json says complete: {results.get('complete')})")
    problem = run_problem(args, results)
    if problem:
        raise ConfigError(f"{path}: {problem}: retrain the run (or restore its files)")
    if not os.path.isfile(os.path.join(path, CHECKPOINT)):
        raise ConfigError(f"{path} is not a finished run folder (it has no {CHECKPOINT}): {fix}")
    ckpt = load_checkpoint(os.path.join(path, CHECKPOINT))
    name = model_name or (os.path.join(path, MODEL_DIR) if os.path.isdir(os.path.join(path, MODEL_DIR))
                          else args["model_name"])
    model, tokenizer = models.load_model(name)
    wrapper, _ = models.build_model(model, tokenizer, built, data_utils.get_task(args["task"]))
    state = {k: v for k, v in ckpt.items() if k in PARTS and k != "model"}
    wrapper.load_trainable_state({**state, "model": None})
    return wrapper.to(device).eval(), args, results


