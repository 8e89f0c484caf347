"""PEFT prompt-tuning adapters of a trained prompt, and this project's own save / load of a prompted model (middle
floor: used by PromptedModel.save_pretrained, load_residual_prompt and the run-folder export, peft_adapter.py).

After training, the reparameterization is discarded: inference needs only the projected prompt phi(P) [P, H]
(paper, Sec. 3). That is exactly what a PEFT prompt-tuning adapter holds (``prompt_embeddings``), so PEFT itself
writes it (get_peft_model around the base architecture built on the meta device, no weights loaded, then
save_pretrained) and it is read back and compared bit for bit.

Where the adapter reproduces the wrapper (the wrapper's PEFT_EXACT): T5 (task type SEQ_2_SEQ_LM,
num_transformer_submodules 1: the prompt goes before the encoder input, as in PromptT5) and decoder-only LMs
(CAUSAL_LM: the prompt before the input, as in PromptedCausalLM) give the same numbers.
BERT-style encoders (FEATURE_EXTRACTION) do
not: PEFT puts the prompt before [CLS] and has no head, while the wrapper puts it after [CLS] and trains a head.
Their adapter carries the prompt for PEFT users; ``load_residual_prompt`` (residual_prompt.pt) is the exact reload.

Files written into a save directory:
    adapter_config.json, adapter_model.safetensors   the PEFT adapter (PeftModel.from_pretrained(base, dir))
    residual_prompt_config.json                     the ResidualPromptConfig and the wrapper's settings
    residual_prompt.pt                              prompt, network and head weights (torch.load weights_only)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings

import torch

from .config import ResidualPromptConfig
from .errors import ConfigError

CONFIG_FILE, STATE_FILE = "residual_prompt_config.json", "residual_prompt.pt"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterError(ConfigError):
    """A user-facing problem with an adapter; str(e) is one line naming it and the fix."""


def peft_model_for(model_config, base_name: str, n_tokens: int, task_type: str):
    """PEFT's prompt-tuning model around the base architecture built on the meta device (no weights: only the
    prompt embedding, moved to the CPU, holds data)."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM, T5ForConditionalGeneration

    with torch.device("meta"):
        base = (T5ForConditionalGeneration(model_config) if task_type == "SEQ_2_SEQ_LM"
                else AutoModelForCausalLM.from_config(model_config) if task_type == "CAUSAL_LM"
                else AutoModel.from_config(model_config))
    base.name_or_path = base_name  # what PEFT records as base_model_name_or_path
    width = getattr(model_config, "d_model", None) or model_config.hidden_size
    peft_config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=n_tokens, token_dim=width,
                                     num_transformer_submodules=1,  # the encoder input only (T5)
                                     prompt_tuning_init=PromptTuningInit.RANDOM)  # overwritten by the caller
    with warnings.catch_warnings():  # peft 0.21 reads a transformers 5 attribute that warns about its deprecation
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(base, peft_config)
    peft_model.prompt_encoder["default"].to_empty(device="cpu")
    return peft_model


def write_peft_adapter(out_dir: str, prompt: torch.Tensor, model_config, base_name: str, task_type: str,
                       readme: str | None = None, extra: dict | None = None):
    """Write the adapter of ``prompt`` [P, H] into ``out_dir`` (created; files of the same names replaced), through
    a temporary folder beside it, checked before anything is moved: ``out_dir`` never holds a partial adapter.
    ``readme``: README.md's text (replaces PEFT's template); ``extra``: {file name: writer(path)} written with it.
    Returns the PeftConfig read back."""
    from peft import PeftConfig
    from safetensors.torch import load_file

    prompt = prompt.detach().float().cpu().contiguous()
    n_tokens, width = prompt.shape
    peft_model = peft_model_for(model_config, base_name, n_tokens, task_type)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)  # [P, H]
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:
        peft_model.save_pretrained(tmp)
        saved = load_file(os.path.join(tmp, "adapter_model.safetensors"))
        if set(saved) != {"prompt_embeddings"} or not torch.equal(saved["prompt_embeddings"], prompt):
            raise RuntimeError(f"PEFT wrote {sorted(saved)} that do not hold the prompt")
        loaded = PeftConfig.from_pretrained(tmp)
        if (loaded.num_virtual_tokens, loaded.token_dim, loaded.num_transformer_submodules) != (n_tokens, width, 1):
            raise RuntimeError(f"PEFT wrote a config for {loaded.num_virtual_tokens} x {loaded.token_dim} tokens")
        if readme is not None:
            with open(os.path.join(tmp, "README.md"), "w") as f:
                f.write(readme)
        for name, write in (extra or {}).items():
            write(os.path.join(tmp, name))
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded


def _publish(tmp, out_dir):
    """Give the files the modes open() gives (mkdtemp makes 0700, safetensors 0600), then move them into out_dir:
    a new or empty out_dir is replaced by the folder in one rename; otherwise file by file (each atomic)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    os.chmod(tmp, 0o777 & ~umask)
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if not os.path.exists(out_dir):
        os.replace(tmp, out_dir)
        return
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))


def _settings(wrapper) -> dict:
    return {"family": wrapper.FAMILY, "config": wrapper.prompt_config.to_dict(), "seq_len": wrapper.seq_len,
            "label_words": list(getattr(wrapper, "label_words", ())), "pooling": getattr(wrapper, "pooling", None),
            "base_model_name_or_path": _base_name(wrapper.model)}


def _base_name(model) -> str:
    name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def save_residual_prompt(wrapper, save_directory: str) -> str:
    """PromptedModel.save_pretrained: the PEFT adapter of the projected prompt (eval mode) plus this project's
    files (CONFIG_FILE, STATE_FILE). Returns ``save_directory``."""
    if wrapper.soft_prompt is None or wrapper.prompt_config is None:
        raise AdapterError("save_pretrained: this model has no residual prompt (built without a "
                           "ResidualPromptConfig): save the model itself with its own save_pretrained")
    if os.path.exists(save_directory) and not os.path.isdir(save_directory):
        raise AdapterError(f"save_pretrained: {save_directory} is a file; give a folder")
    snap = wrapper.snapshot()  # the projected prompt in eval mode + the trainable state, CPU copies
    settings = _settings(wrapper)
    state = {k: v for k, v in snap.items() if k != "model" and v is not None}

    def write_config(path):
        with open(path, "w") as f:
            json.dump(settings, f, indent=2)

    def write_state(path):
        torch.save({"settings": settings, **state}, path)

    write_peft_adapter(save_directory, snap["projected_prompt"], wrapper.model.config,
                       settings["base_model_name_or_path"], wrapper.PEFT_TASK_TYPE,
                       extra={CONFIG_FILE: write_config, STATE_FILE: write_state})
    return save_directory


def load_residual_prompt(model, save_directory: str, tokenizer=None, precision="fp32"):
    """The prompted model ``save_pretrained`` wrote, around ``model`` (the same base model, frozen or not):
    prompt, network and head restored exactly, so training can continue or it can predict. -> PromptedModel."""
    from . import models

    path = os.path.join(save_directory, STATE_FILE)
    if not os.path.isfile(path):
        raise AdapterError(f"{save_directory} has no {STATE_FILE}: give a folder written by save_pretrained "
                           f"(a PEFT-only adapter loads with peft.PeftModel.from_pretrained)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        settings = saved["settings"]
        config = ResidualPromptConfig.from_dict(settings["config"])
    except ConfigError:
        raise
    except Exception as e:  # a torn, foreign or pickled file
        raise AdapterError(f"{path} is not a residual prompt saved by save_pretrained ({str(e).splitlines()[0][:120]}"
                           f"); save it again") from None
    if models.family_of(model.config) != settings.get("family"):
        raise AdapterError(f"{save_directory} holds a prompt for a {settings.get('family')} model, not for this "
                           f"{model.config.model_type!r} model")
    rebuild = ResidualPromptConfig.from_dict({**config.to_dict(), "init": "uniform", "init_path": None})
    wrapper = models.get_residual_prompt_model(model, rebuild, tokenizer, label_words=settings.get("label_words") or (),
                                               seq_len=settings["seq_len"], precision=precision,
                                               pooling=settings.get("pooling") or "cls")
    wrapper.load_trainable_state({**saved, "model": None})
    wrapper.prompt_config = config
    return wrapper
