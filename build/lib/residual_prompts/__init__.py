"""Residual Prompt Tuning (Razdaibiedina et al., Findings of ACL 2023) as a library: a soft prompt for a frozen
Hugging Face model, optionally passed through a shallow network with a skip connection.

    from residual_prompts import ResidualPromptConfig, get_residual_prompt_model
    model.requires_grad_(False)                                   # the frozen model (T5 or a BERT-style encoder)
    rp = get_residual_prompt_model(model, ResidualPromptConfig(num_virtual_tokens=10, reparameterization="MLP1"))
    transformers.Trainer(model=rp, ...).train()                   # or any loop: rp(**batch).loss.backward()
    rp.save_pretrained("out")                                     # a PEFT adapter (+ the exact prompt and network)

Public names (imported on first use, so ``import residual_prompts`` is cheap):
    ResidualPromptConfig          the prompt and its reparameterization, validated (config.py)
    get_residual_prompt_model     wrap a model: forward(**batch).loss, print_trainable_parameters, save_pretrained
    load_residual_prompt          a saved prompt back around its base model (peft_export.py)
    SoftPrompt, build_reparam     the prompt module and the networks (prompts.py, res_mlp.py)
    load_model, family_of         this project's model loading and its one model-family test (models.py)
"""
import importlib

_PUBLIC = {"ResidualPromptConfig": "config", "get_residual_prompt_model": "models", "load_model": "models",
           "family_of": "models", "load_residual_prompt": "peft_export", "SoftPrompt": "prompts",
           "build_reparam": "res_mlp", "ConfigError": "errors", "DataError": "errors"}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'residual_prompts' has no attribute {name!r}")
