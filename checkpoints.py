"""Run files: atomic writes, the final checkpoint, and the resumable training state (train_state.pt).

Every file is written through a temporary file in the same folder, fsynced, then renamed over the old one, so a
crash or a kill at any instant leaves either the previous file or the new one. Everything is loadable with
``torch.load(path, weights_only=True)``: tensors, numbers, strings, lists and dicts only, never pickled objects.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile

import numpy as np
import torch

from train_utils import History, TrainState

_UMASK = os.umask(0)
os.umask(_UMASK)

TRAIN_STATE = "train_state.pt"
# Arguments that do not define a run: they may change when a run is resumed (another machine, paths, logging).
NOT_DEFINING = {"save_dir", "save_name", "device", "progress", "overwrite", "resume", "save_every_steps", "data_dir",
                "eval_batch_size", "fsdp", "compile"}


def atomic_write(path, write):
    """write(f) into a temporary file beside ``path``, fsync, then os.replace it over ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def save_checkpoint(path, snap, args: dict, extra: dict | None = None):
    """checkpoint.pt: the best (or final) raw prompt + reparameterization state + projected prompt + resolved args."""
    obj = {"prompt": snap["prompt"], "reparam": snap["reparam"], "projected_prompt": snap["projected_prompt"],
           "head": snap.get("head"), "args": args, **(extra or {})}
    atomic_write(path, lambda f: torch.save(obj, f))


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
def save_train_state(path, state: TrainState, wrapper, optimizer, args: dict, elapsed_s: float, full_model: bool,
                     scaler=None):
    """Everything needed to continue exactly: trainable state, optimizer, position, history, best, RNG, args."""
    obj = {
        "args": args, "epoch": state.epoch, "step": state.step, "elapsed_s": float(elapsed_s),
        "partial": {"losses": [float(x) for x in state.partial["losses"]], "decoded": list(state.partial["decoded"]),
                    "targets": list(state.partial["targets"])},
        "history": vars(state.history), "best": state.best,
        "prompt": None if wrapper.prompt is None else wrapper.prompt.detach().cpu(),
        "reparam": None if wrapper.reparam is None else wrapper.reparam.state_dict(),
        "model": wrapper.model.state_dict() if full_model else None,
        "head": None if wrapper.head is None else wrapper.head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
    }
    atomic_write(path, lambda f: torch.save(obj, f))


def load_train_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_train_state(obj: dict, wrapper, optimizer, scaler=None) -> tuple[TrainState, float]:
    """Put a loaded train_state back into the wrapper and optimizer; the RNG states last, so that what follows draws
    exactly what the uninterrupted run drew. Returns (TrainState, seconds already spent)."""
    with torch.no_grad():
        if obj["prompt"] is not None:
            wrapper.prompt.copy_(obj["prompt"])
        if obj["reparam"] is not None:
            wrapper.reparam.load_state_dict(obj["reparam"])
        if obj["model"] is not None:
            wrapper.model.load_state_dict(obj["model"])
        if obj.get("head") is not None:
            wrapper.head.load_state_dict(obj["head"])
    optimizer.load_state_dict(obj["optimizer"])
    if scaler is not None and obj.get("scaler"):
        scaler.load_state_dict(obj["scaler"])
    state = TrainState(epoch=obj["epoch"], step=obj["step"], history=History(**obj["history"]), best=obj["best"],
                       partial=obj["partial"])
    set_rng_state(obj["rng"])
    return state, obj["elapsed_s"]


def differing_args(saved: dict, current: dict) -> list[str]:
    """The run-defining arguments whose values differ: '--lr 0.3 (saved) != 0.1 (now)'."""
    keys = sorted((set(saved) | set(current)) - NOT_DEFINING)
    return [f"--{k} {saved.get(k)!r} (saved) != {current.get(k)!r} (now)" for k in keys
            if saved.get(k) != current.get(k)]
