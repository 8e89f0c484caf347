"""The soft prompt (ground floor: imports errors.py and res_mlp.py): a trainable [P, H] parameter, an optional
reparameterization phi (a res_mlp network, built by the caller), its initializers and its trainable state.

Notation (used in every shape comment of the project): B batch, T source length, P prompt length, H model width
(E for an encoder's embedding width when it differs), L target length, V vocabulary rows, M bottleneck width.

Initializers have one contract (as google-research/prompt-tuning's ``prompts.py``):

    init(embedding [V, H], prompt_len P, seed, pool=ids, tokenizer=..., label_words=..., path=...)
        -> (prompt [P, H] float32 on the CPU, the token ids it was read from, or None)

``pool`` is the model family's candidate ids for the frequency-based initializers (vocab_top5000 and
class_labels' fallback): T5's SentencePiece is ordered by frequency from id 3, so its pool is ids 3..5002; a
WordPiece vocabulary is not, and the encoder wrapper passes its frequent ids (models.frequent_ids).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .res_mlp import build_reparam

TOP_PIECES = 5000  # vocab_top5000: the most frequent pieces (Lester et al. 2021, Sec. 3.2)
T5_POOL = np.arange(3, 3 + TOP_PIECES)  # T5: ids 0-2 are pad, eos, unk; frequency order starts at 3


class SoftPrompt(nn.Module):
    """prompt: [P, H] parameter; reparam: a network [P, H] -> [P, H] or None (plain prompt tuning).

    Trainable state = this module's state dict (``prompt`` and ``reparam.*``); after training only
    ``projected()`` in eval mode is needed for inference (the reparameterization is discarded, paper Sec. 3).
    """

    def __init__(self, prompt: torch.Tensor, reparam: nn.Module | None = None):
        super().__init__()
        self.prompt = nn.Parameter(prompt.detach().float().clone())  # [P, H]
        self.reparam = reparam

    def __len__(self):
        return self.prompt.shape[0]

    @classmethod
    def from_config(cls, config, embedding: torch.Tensor, pool=None, tokenizer=None, label_words=()):
        """The prompt a ResidualPromptConfig describes, for a model whose input embedding table is ``embedding``
        [V, H]: initialized by ``config.init`` (``pool``: the family's frequency-ordered candidate ids, for
        vocab_top5000 and class_labels), then its reparameterization built (torch's global RNG, after the prompt).
        -> (SoftPrompt, the token ids the prompt was read from, or None)."""
        prompt, ids = init_prompt(config.init, embedding, config.num_virtual_tokens, config.seed, pool=pool,
                                  tokenizer=tokenizer, label_words=tuple(label_words), path=config.init_path or "")
        reparam = build_reparam(config.reparameterization or "None", embedding.shape[1], config.num_virtual_tokens,
                                config.bottleneck, config.nonlinearity, config.layer_norm, config.dropout,
                                config.residual, config.separate_networks, config.mlp2_shared_weights)
        return cls(prompt, reparam), ids

    def projected(self) -> torch.Tensor:  # [P, H]
        return self.prompt if self.reparam is None else self.reparam(self.prompt)

    def trainable_state(self) -> dict:
        """{"prompt": [P, H] CPU tensor, "reparam": the network's state dict or None} (detached CPU copies)."""
        return {"prompt": self.prompt.detach().float().cpu().clone(),
                "reparam": None if self.reparam is None else _cpu(self.reparam.state_dict())}

    def load_trainable_state(self, state: dict) -> None:
        """Load a ``trainable_state()``; shapes must match (a ConfigError otherwise: another run's file)."""
        prompt = state.get("prompt")
        if not torch.is_tensor(prompt) or tuple(prompt.shape) != tuple(self.prompt.shape):
            got = list(prompt.shape) if torch.is_tensor(prompt) else type(prompt).__name__
            raise ConfigError(f"saved prompt is {got}, this run's is {list(self.prompt.shape)}")
        if (state.get("reparam") is None) != (self.reparam is None):
            raise ConfigError("saved state and this run disagree on whether there is a reparameterization")
        with torch.no_grad():
            self.prompt.copy_(prompt.to(self.prompt.device))
        if self.reparam is not None:
            try:
                self.reparam.load_state_dict(state["reparam"])
            except (RuntimeError, TypeError, AttributeError) as e:
                raise ConfigError(f"saved reparameterization does not fit this run's ({str(e).splitlines()[0]})"
                                  ) from None


def _cpu(state_dict: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------------------------------
def _rows(embedding: torch.Tensor, token_ids) -> torch.Tensor:
    return embedding[torch.as_tensor(np.asarray(token_ids), dtype=torch.long)].detach().float().cpu().clone()


def init_vocab(embedding, prompt_len, seed, **_):
    """Rows of the embedding table at uniformly random ids over the whole table (the original's init).

    The original drew P ids with numpy's global RNG twice (in PromptTuner.__init__ and again in train_one_task)
    and kept the second draw; drawing 2P ids from RandomState(seed) and keeping the last P reproduces its prompt
    exactly for the same seed.
    """
    ids = np.random.RandomState(seed).randint(embedding.shape[0], size=2 * prompt_len)[prompt_len:]
    return _rows(embedding, ids), ids


def init_vocab_top5000(embedding, prompt_len, seed, pool=T5_POOL, **_):
    """Rows at random ids among the pool of the most frequent pieces (Lester et al. 2021, Sec. 3.2).
    RandomState(seed).randint(len(pool)) indexes the pool: for T5's pool (ids 3..5002) the same ids as
    randint(3, 5003)."""
    pool = np.asarray(pool)
    ids = pool[np.random.RandomState(seed).randint(len(pool), size=prompt_len)]
    return _rows(embedding, ids), ids


def init_uniform(embedding, prompt_len, seed, **_):
    """Uniform in [-0.5, 0.5] (the original's --random_prompt_init 1, which its code never reached)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(prompt_len, embedding.shape[1], generator=gen) - 0.5, None


def init_class_labels(embedding, prompt_len, seed, pool=T5_POOL, tokenizer=None, label_words=(), **_):
    """Lester et al. 2021, Sec. 3.2: token i < #labels is the mean embedding of label word i's pieces; the
    remaining tokens are sampled as in vocab_top5000 (google-research/prompt-tuning composes it the same way)."""
    if not label_words:
        raise ConfigError("--prompt_init class_labels needs a task with label words; this task has none "
                          "(stsb, record, wsc): use --prompt_init vocab")
    prompt, ids = init_vocab_top5000(embedding, prompt_len, seed, pool=pool)
    for i, word in enumerate(label_words[:prompt_len]):
        prompt[i] = _rows(embedding, tokenizer(word, add_special_tokens=False)["input_ids"]).mean(0)
    return prompt, ids


def init_file(embedding, prompt_len, seed, path="", **_):
    """A prompt saved as .npy (--prefix_path): a numeric [P, H] array, finite in float32; pickles are refused."""
    shape = [prompt_len, embedding.shape[1]]
    fix = f"expected a numeric [prefix_len, H] = {shape} array (np.save(path, prompt.astype(np.float32)))"
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block the run (and its folder's lock)
        raise ConfigError(f"--prefix_path {path} is not a regular file (a FIFO, device or folder); {fix}")
    try:
        with open(path, "rb") as f:  # the header first: a huge claimed shape is refused before any data is read
            if f.read(4) == b"PK\x03\x04":
                raise ConfigError(f"--prefix_path {path} holds an archive (.npz); {fix}")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version in reader:
                claimed, _, dtype = reader[version](f)
                if dtype.hasobject:
                    raise ValueError("needs pickle")
                if list(claimed) != shape or dtype.kind not in "fiu":
                    raise ConfigError(f"--prefix_path {path} holds a {dtype} array of shape {list(claimed)}; {fix}")
        arr = np.load(path, allow_pickle=False)
        if list(arr.shape) != shape or arr.dtype.kind not in "fiu":
            raise ConfigError(f"--prefix_path {path} holds a {arr.dtype} array of shape {list(arr.shape)}; {fix}")
    except FileNotFoundError:
        raise ConfigError(f"--prefix_path {path}: no such file; {fix}") from None
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, TypeError) as e:
        pickled = "pickle" in str(e) or "Python objects" in str(e)
        reason = "it needs pickle (an object array)" if pickled else "it is not a .npy array"
        raise ConfigError(f"--prefix_path {path}: cannot load, {reason}; {fix}") from None
    with np.errstate(over="ignore", invalid="ignore"):
        arr32 = arr.astype(np.float32)
    if not np.isfinite(arr32).all():
        raise ConfigError(f"--prefix_path {path} contains NaN or inf values (in float32: |x| > 3.4e38 overflows); "
                          f"give a finite prompt")
    return torch.from_numpy(arr32), None


INITIALIZERS = {"vocab": init_vocab, "vocab_top5000": init_vocab_top5000, "uniform": init_uniform,
                "class_labels": init_class_labels, "file": init_file}


def init_prompt(name, embedding, prompt_len, seed, **kwargs):
    """Dispatch to INITIALIZERS[name] -> (prompt [P, H] float32, chosen token ids or None)."""
    if name not in INITIALIZERS:
        raise ConfigError(f"unknown --prompt_init {name!r}; valid: {', '.join(INITIALIZERS)}")
    return INITIALIZERS[name](embedding, prompt_len, seed, **kwargs)
