"""BERT-style encoders with a soft prompt after [CLS] and a trained linear head (middle floor).

Encoders (BERT, RoBERTa, MiniLM, ...) do not generate: a linear head on the [CLS] output (or the mean over the
outputs) scores the task's label words, or predicts the STS-B score, and the soft prompt goes right after [CLS]:
[CLS] phi(prompt) tok_1 ... [SEP], cut to ``seq_len`` tokens as for T5. Shapes: see prompts.py (E = an encoder's
embedding width, C = classes). See docs/ENCODERS.md.
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from . import data, tasks
from .base import EncodedSplit, PromptedModel
from .errors import ConfigError
from .names import POOLINGS
from .prompts import TOP_PIECES

# model_type of the encoder-only configs tested (tests/test_bert.py runs each one).
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "deberta", "deberta-v2",
                 "albert")
# Models whose position ids start after the pad id (fairseq style): usable positions = max_position_embeddings
# - pad_token_id - 1 (RoBERTa: 514 - 2 = 512).
_PAD_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")
STSB_RANGE = (0.0, 5.0)  # STS-B's score range; an encoder's predictions are clipped to it


class PromptedEncoderClassifier(PromptedModel):
    """An encoder-only transformer with the soft prompt after [CLS] and a linear head (trained) on the [CLS]
    output: [H] -> [C] class logits, or [1] for STS-B regression (``label_words`` empty). ``pooling``: the head
    reads [CLS]'s output ("cls") or the mean over every unmasked position, prompt included ("mean", what
    sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained with)."""
    EXTRA_PARTS = ("head",)
    FAMILY = "encoder"
    PEFT_TASK_TYPE = "FEATURE_EXTRACTION"

    @staticmethod
    def load_pretrained(name):
        """The encoder of a BERT-style checkpoint (AutoModel), pooler dropped: the head reads the hidden states,
        and some checkpoints' poolers are untrained."""
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # what add_pooling_layer=False builds (BertModel/RobertaModel skip a None pooler)
        return model

    @staticmethod
    def candidate_pool(tokenizer):
        return frequent_ids(tokenizer, strict=True)

    @classmethod
    def build(cls, model, tokenizer, soft_prompt, seq_len=512, precision="fp32", label_words=(), pooling="cls"):
        return cls(model, tokenizer, label_words, soft_prompt, seq_len, precision, pooling)

    def hf_batch(self, input_ids, attention_mask=None, labels=None):
        """A Hugging Face batch (input_ids, attention_mask, labels: class ids [B], or scores [B] for regression)
        as this wrapper's {"source_ids", "target_ids" [B, 1]}."""
        source = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, self.pad_id)
        return {"source_ids": source, "target_ids": labels.reshape(-1, 1)}

    def outputs(self, batch, prompt):
        """-> (mean loss over the rows, logits [B, C] or scores [B])."""
        out, gold = self.predict(batch["source_ids"], prompt), batch["target_ids"][:, 0]
        losses = self._losses(out, gold)
        return losses.sum() / losses.shape[0], out

    def _losses(self, out, gold):
        if self.regression:
            return (out - gold.to(out.dtype)) ** 2
        return nn.functional.cross_entropy(out, gold, reduction="none")

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
        """-> (predicted, target) strings for metrics.evaluate: label words, or for regression scores with six
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
        pairs = [data.format_example(task, r) for r in rows]
        sources = [s.removesuffix(" </s>") for s, _ in pairs]  # WordPiece would read T5's " </s>" as 4 pieces
        if is_regression(task):
            targets = [[float(r["label"])] for r in rows]
        else:
            targets = [[task.label_words.index(t.removesuffix(" </s>"))] for _, t in pairs]
        ids = tokenizer(sources, truncation=True, max_length=seq_len, verbose=False)["input_ids"] if sources else []
        return EncodedSplit([list(s) for s in ids], targets, groups, official_groups, tokenizer.pad_token_id)


def is_regression(task) -> bool:
    """STS-B: a score, not a label word (the only task with no label words and a correlation metric)."""
    return not task.label_words and task.metric == "pearson"


def check_task(task) -> None:
    """An encoder head needs label words (a class per word) or a score; record and wsc generate free text."""
    if not task.label_words and not is_regression(task):
        ok = [n for n, t in tasks.TASKS.items() if t.label_words or is_regression(t)]
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
