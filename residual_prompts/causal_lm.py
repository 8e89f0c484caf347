"""Decoder-only language models (GPT-2, Llama, Qwen2, Mistral, ...) with a soft prompt before the input (middle
floor). See docs/DECODERS.md.

The sequence of a row is [phi(prompt); source; target], the projected prompt [P, H] prepended to the embedded
input exactly as PEFT's PeftModelForCausalLM does for prompt tuning: the attention mask extended with P ones, the
prompt's labels -100, positions 0 .. P + n - 1 (the model's default; PEFT drops position ids). The loss is over
the target tokens (the label word or text, then eos) only. Rows are right-padded: a row's tokens sit at the same
positions whatever the batch, so a batch gives each row the numbers of that row alone and of PEFT's model.

Batches are padded with PAD (-100, no token id): GPT-2's pad token is its eos, which a target must hold and count.

Evaluation runs the prompt and source once per row (``context``): its last logits give the first target token,
and its KV cache serves both the greedy generation and the teacher-forced loss of the target (``evaluate_batch``).
"""
from __future__ import annotations

import copy
import inspect
import re

import torch
from torch import nn

from . import data
from .base import EncodedSplit, PromptedModel
from .errors import ConfigError
from .prompts import TOP_PIECES

PAD = -100  # what a batch holds where it has no token (source and target padding)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # sentencepiece byte fallback pieces (Llama)


class PromptedCausalLM(PromptedModel):
    """An ``AutoModelForCausalLM`` with the soft prompt before the input: [phi(prompt); source; target] (right
    padding), the loss over the target tokens, greedy generation of the task's target budget for evaluation."""
    FAMILY = "causal_lm"
    PEFT_TASK_TYPE = "CAUSAL_LM"
    PEFT_EXACT = True  # PEFT's adapter, fed the same tokens row by row, gives this wrapper's numbers

    @staticmethod
    def load_pretrained(name):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(name)

    @staticmethod
    def prepare_tokenizer(name, config, tokenizer):
        """Batches are padded with PAD, not the tokenizer's pad: a tokenizer without one (GPT-2) gets its eos as pad
        (what data collators and PEFT users expect); a tokenizer without eos cannot end a target."""
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"--model_name {name}: its tokenizer has no eos token, which ends every target; put "
                              f"the checkpoint's own tokenizer files (with eos_token) beside it")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @staticmethod
    def candidate_pool(tokenizer):
        """The TOP_PIECES first ordinary pieces (BPE merges and sentencepiece pieces come roughly in frequency
        order): special tokens, byte-fallback pieces and single characters skipped."""
        special = set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        ok = [i for i, t in enumerate(tokens) if i not in special and t is not None and len(t.lstrip("Ġ▁")) > 1
              and not _BYTE_PIECE.fullmatch(t)]
        if len(ok) < TOP_PIECES:
            raise ConfigError(f"the vocabulary has only {len(ok)} ordinary pieces, fewer than the {TOP_PIECES} that "
                              f"vocab_top5000 samples from; use --prompt_init vocab")
        return ok[:TOP_PIECES]

    @classmethod
    def build(cls, model, tokenizer, soft_prompt, seq_len=512, precision="fp32", **_):
        return cls(model, tokenizer, soft_prompt, seq_len, precision)

    def __init__(self, model, tokenizer, soft_prompt=None, seq_len=512, precision="fp32"):
        if model.get_output_embeddings() is None:
            raise ConfigError(f"a {model.config.model_type!r} model without its LM head: load it with "
                              f"AutoModelForCausalLM (the head predicts the target tokens)")
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if limit is not None and seq_len > limit:
            raise ConfigError(f"--seq_len {seq_len} is longer than the {limit} positions of this "
                              f"{model.config.model_type} model; use --seq_len {limit} or less")
        super().__init__(model, tokenizer, soft_prompt, seq_len, precision)
        self.pad_id = PAD
        self.eos_id = tokenizer.eos_token_id if tokenizer is not None else model.config.eos_token_id

    # ---- batches -----------------------------------------------------------------------------------------------
    def hf_batch(self, input_ids, attention_mask=None, labels=None):
        """A Hugging Face causal LM batch (input_ids [B, N] = source then target, labels [B, N] with -100 except at
        the target tokens, attention_mask [B, N], left or right padding) as {"source_ids", "target_ids"}: the
        source is the unmasked positions whose label is -100, the target those with a label."""
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        sources = [row[m & (lab == -100)] for row, m, lab in zip(input_ids, valid, labels)]
        targets = [lab[lab != -100] for lab in labels]
        return {"source_ids": _pad_rows(sources), "target_ids": _pad_rows(targets)}

    def n_targets(self, batch):
        return (batch["target_ids"] != PAD).sum()

    def _lengths(self, batch):
        """-> (source lengths [B] cut so that prompt + source + target budget fit seq_len, target lengths [B])."""
        source, target = batch["source_ids"], batch["target_ids"]
        room = self.seq_len - self.prompt_len - target.shape[1]
        if room < 1:
            raise ConfigError(f"--seq_len {self.seq_len} leaves no room for the source after the prompt "
                              f"({self.prompt_len}) and the target ({target.shape[1]} tokens): raise --seq_len")
        return (source != PAD).sum(1).clamp(max=room), (target != PAD).sum(1)

    def _embed(self, ids, prompt):
        """Token ids [B, N] (PAD allowed: embedded as token 0, masked) -> embeddings [B, P + N, H], prompt first."""
        embeds = self.model.get_input_embeddings()(ids.clamp(min=0))
        if prompt is None:
            return embeds
        return torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1), embeds], dim=1)

    # ---- training: one teacher-forced forward ------------------------------------------------------------------
    def sequences(self, batch):
        """-> (ids [B, N]: each row's source then target, right-padded with PAD; labels [B, N]: the target ids,
        -100 elsewhere; mask [B, N]), N = the longest source + target of the batch: PEFT's input, row by row."""
        src, tgt = batch["source_ids"], batch["target_ids"]
        s, t = self._lengths(batch)
        n = int((s + t).max())
        k = torch.arange(n, device=src.device).unsqueeze(0)  # [1, N]
        from_src = src.gather(1, k.clamp(max=src.shape[1] - 1).expand(src.shape[0], -1))
        from_tgt = tgt.gather(1, (k - s[:, None]).clamp(0, tgt.shape[1] - 1))
        is_tgt = (k >= s[:, None]) & (k < (s + t)[:, None])
        ids = torch.where(k < s[:, None], from_src, torch.where(is_tgt, from_tgt, PAD))
        return ids, torch.where(is_tgt, ids, -100), (ids != PAD).long()

    def _forward(self, batch, prompt):
        """-> (logits [B, P + N, V], labels [B, P + N]: -100 on the prompt, as PEFT's)."""
        ids, labels, mask = self.sequences(batch)
        p = 0 if prompt is None else prompt.shape[0]
        mask = torch.cat([mask.new_ones(mask.shape[0], p), mask], dim=1)
        with self.autocast():
            logits = self.model(inputs_embeds=self._embed(ids, prompt), attention_mask=mask, use_cache=False).logits
        return logits, torch.cat([labels.new_full((labels.shape[0], p), -100), labels], dim=1)

    def token_losses(self, batch, prompt=None):
        """Per example: the sum of the target tokens' cross-entropies and their number ([B], [B]). The LM head runs
        only where a target token is predicted (each row's last source token and its target but the last: [B, L]
        positions), not over the whole sequence; the same numbers as ``outputs`` (tests)."""
        ids, _, mask = self.sequences(batch)
        s, _ = self._lengths(batch)
        p = 0 if prompt is None else prompt.shape[0]
        tgt = batch["target_ids"]
        at = (p + s - 1)[:, None] + torch.arange(tgt.shape[1], device=tgt.device)  # [B, L]
        at = at.clamp(max=p + ids.shape[1] - 1)  # a padded target slot past the row's end: its label is -100
        mask = torch.cat([mask.new_ones(mask.shape[0], p), mask], dim=1)
        logits = self._logits(dict(inputs_embeds=self._embed(ids, prompt), attention_mask=mask, use_cache=False), at)
        return _ce_sums(logits, tgt.masked_fill(tgt == PAD, -100))

    def _logits(self, inputs, at):
        """The model's logits at positions ``at`` [B, K] -> [B, K, V]: the LM head on those positions only
        (transformers' logits_to_keep), or on every position then gathered where the model does not take it."""
        with self.autocast():
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
                out = self.model(**inputs, logits_to_keep=at)
                if out.logits.shape[:2] == at.shape:
                    return out.logits
            logits = self.model(**inputs).logits
        return logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))

    def outputs(self, batch, prompt):
        """-> (mean loss over the target tokens, logits [B, P + N, V])."""
        logits, labels = self._forward(batch, prompt)
        sums, counts = _ce_sums(logits[:, :-1], labels[:, 1:])
        return sums.sum() / counts.sum(), logits

    # ---- evaluation: the context once, its KV cache for the generation and the loss ----------------------------
    @torch.no_grad()
    def context(self, batch, prompt):
        """The prompt and the sources, once: -> (first-token logits [B, V] (at each row's last source token), the
        KV cache, the context's attention mask [B, P + S], the position of each row's next token [B])."""
        src = batch["source_ids"]
        s, _ = self._lengths(batch)
        width = int(s.max())
        ids = src[:, :width].masked_fill(torch.arange(width, device=src.device) >= s[:, None], PAD)
        p = 0 if prompt is None else prompt.shape[0]
        mask = torch.cat([ids.new_ones(ids.shape[0], p), (ids != PAD).long()], dim=1)
        positions = torch.arange(p + width, device=src.device).unsqueeze(0).expand(ids.shape[0], -1)
        kwargs = dict(inputs_embeds=self._embed(ids, prompt), attention_mask=mask, position_ids=positions,
                      use_cache=True)
        at = (p + s - 1)[:, None]  # [B, 1]: the LM head on each row's last source token only, where it can
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = at
        with self.autocast():
            out = self.model(**kwargs)
        logits = out.logits if out.logits.shape[1] == 1 else out.logits.gather(
            1, at[..., None].expand(-1, -1, out.logits.shape[-1]))
        cache = getattr(out, "cache", None)  # transformers >= 5.x; before: past_key_values
        return logits[:, 0].float(), cache if cache is not None else out.past_key_values, mask, p + s

    def _step(self, ids, cache, mask, positions):
        """Tokens [B, K] at ``positions`` [B, K] after the cache (grown in place); mask: the whole [B, C + K]."""
        with self.autocast():
            return self.model(inputs_embeds=self._embed(ids, None), attention_mask=mask, position_ids=positions,
                              **{self._cache_arg: cache}, use_cache=True).logits.float()

    @property
    def _cache_arg(self):
        """The forward's name of the KV cache argument: "cache" (transformers >= 5.x), else "past_key_values"."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def greedy(self, ctx, max_new, synced=False):
        """Greedy decoding of up to ``max_new`` tokens after the context (stopping once every row has produced
        eos, unless ``synced``: several processes then run the same number of steps) -> token ids [B, <=max_new]."""
        logits, cache, mask, pos = ctx
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        out = []
        for k in range(max_new):
            token = logits.argmax(-1)  # [B]
            out.append(token)
            done |= token == self.eos_id
            if k == max_new - 1 or (done.all() and not synced):
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            logits = self._step(token[:, None], cache, mask, (pos + k)[:, None])[:, -1]
        return torch.stack(out, dim=1)

    def _cached_losses(self, batch, ctx):
        """The target's loss from the context's cache (which grows by the target): one forward of the target tokens,
        the first one scored by the context's last logits. Same numbers as token_losses."""
        first, cache, mask, pos = ctx
        tgt = batch["target_ids"]
        tmask = (tgt != PAD).long()
        positions = pos[:, None] + torch.arange(tgt.shape[1], device=tgt.device)
        logits = self._step(tgt, cache, torch.cat([mask, tmask], dim=1), positions)  # [B, L, V]
        logits = torch.cat([first.unsqueeze(1), logits[:, :-1]], dim=1)
        return _ce_sums(logits, tgt.masked_fill(tgt == PAD, -100))

    def _strings(self, ids):
        """Token ids [B, N] -> texts, each cut at its first eos (PAD and special tokens dropped)."""
        texts = []
        for row in ids.tolist():
            row = [i for i in row if i != PAD]
            row = row[:row.index(self.eos_id)] if self.eos_id in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    @torch.no_grad()
    def decode(self, batch, prompt, max_length, synced=False):
        """-> (generated strings, target strings): greedy decoding of the target budget (``max_length`` tokens,
        the length targets are encoded to, eos included)."""
        out = self.greedy(self.context(batch, prompt), max_length, synced)
        return self._strings(out), self._strings(batch["target_ids"])

    @torch.no_grad()
    def evaluate_batch(self, batch, prompt, max_length, synced=False, chunks=None):
        """decode + token_losses with the prompt and source run once: the generation and the loss read the same KV
        cache -> (generated, targets, [B] loss sums, [B] target counts), the two calls' numbers (tests). ``chunks``
        (the T5 encoder's split of a batch) does not apply: the context runs on the whole batch."""
        ctx = self.context(batch, prompt)
        # generation grows a copy of the cache (a copy works for every cache type; cropping does not: sliding
        # windows), the loss the original
        out = self.greedy((ctx[0], copy.deepcopy(ctx[1]), *ctx[2:]), max_length, synced)
        sums, counts = self._cached_losses(batch, ctx)
        return self._strings(out), self._strings(batch["target_ids"]), sums, counts

    @staticmethod
    def encode_split(task, rows, tokenizer, seq_len, groups=None, official_groups=None) -> EncodedSplit:
        """source_ids = [bos] + the task's source text (its T5 text without " </s>"), cut to seq_len; target_ids =
        the target text (label word or text) + eos, cut to the task's target_len."""
        pairs = [data.format_example(task, r) for r in rows]
        sources = [s.removesuffix(" </s>") for s, _ in pairs]
        targets = [t.removesuffix(" </s>") for _, t in pairs]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id not in (None, tokenizer.eos_token_id) else []
        src = tokenizer(sources, add_special_tokens=False, verbose=False)["input_ids"] if rows else []
        return EncodedSplit([(bos + list(ids))[:seq_len] for ids in src], target_ids(tokenizer, targets,
                                                                                    task.target_len),
                            groups, official_groups, PAD)


def target_ids(tokenizer, texts, max_length):
    """Each target text as it follows the source (" " + text: a word after a space), + eos, cut to max_length
    (eos kept). A leading piece that is only the space (sentencepiece's lone "▁") is dropped."""
    unique = list(dict.fromkeys(texts))
    done = {}
    for text, ids in zip(unique, tokenizer([" " + t for t in unique], add_special_tokens=False)["input_ids"]
                         if unique else []):
        if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
            ids = ids[1:]
        done[text] = list(ids)[:max_length - 1] + [tokenizer.eos_token_id]
    return [list(done[t]) for t in texts]


def _pad_rows(rows):
    width = max([len(r) for r in rows] + [1])
    out = torch.full((len(rows), width), PAD, dtype=torch.long, device=rows[0].device if rows else None)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _ce_sums(logits, labels):
    """Cross-entropy of logits [B, N, V] against labels [B, N] (-100 ignored) -> ([B] sums, [B] counts), fp32 at
    least, over [B*N, V] rows as transformers computes its loss."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                     reduction="none").view(labels.shape)
    return ce.sum(1), (labels != -100).sum(1)
