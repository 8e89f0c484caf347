"""T5 (the paper's model) with a soft prompt before the encoder input (middle floor)."""
from __future__ import annotations

import torch
from torch import nn

from . import data
from .base import EncodedSplit, PromptedModel
from .prompts import T5_POOL


class PromptT5(PromptedModel):
    """A T5ForConditionalGeneration with the soft prompt prepended to the encoder input: [phi(prompt); embed(src)]
    cut to ``seq_len`` tokens, as in the original (a source that fills seq_len loses its last P tokens)."""
    FAMILY = "t5"
    PEFT_TASK_TYPE = "SEQ_2_SEQ_LM"
    PEFT_EXACT = True  # prompt before the encoder input only, as PEFT's (num_transformer_submodules 1)
    FSDP_COMPILE = True

    @staticmethod
    def load_pretrained(name):
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration.from_pretrained(name)

    @staticmethod
    def candidate_pool(tokenizer):
        """T5's SentencePiece is ordered by frequency from id 3: the pool is ids 3..5002."""
        return T5_POOL

    @classmethod
    def build(cls, model, tokenizer, soft_prompt, seq_len=512, precision="fp32", **_):
        return cls(model, tokenizer, soft_prompt, seq_len, precision)

    def hf_batch(self, input_ids, attention_mask=None, labels=None):
        """A Hugging Face batch (input_ids, attention_mask, labels with -100 at ignored positions) as this wrapper's
        {"source_ids", "target_ids"}: masked positions and -100 labels become the pad id, which is what train.py's
        batches hold there, so both give the same numbers."""
        source = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, self.pad_id)
        return {"source_ids": source, "target_ids": labels.masked_fill(labels == -100, self.pad_id)}

    def outputs(self, batch, prompt):
        """-> (mean loss over the target tokens, logits [B, L, V]): one teacher-forced forward."""
        if self.weights_dtype is not None:  # bf16/fp16 weights: the loss in fp32 from the logits (see loss)
            out, labels = self._forward(batch, prompt, hf_loss=False)
            return _mean_ce(out.logits, labels), out.logits
        out = self._forward(batch, prompt)[0]
        return out.loss.float(), out.logits
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
        """Mean cross-entropy over the non-pad target tokens (transformers' own, as the original's loss). With the
        frozen weights in bf16/fp16 the logits are too, and transformers would take its loss in that dtype: the
        cross-entropy is then computed here, in fp32."""
        if self.weights_dtype is not None:
            out, labels = self._forward(batch, prompt, hf_loss=False)
            return _mean_ce(out.logits, labels)
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
        """-> (generated strings, target strings) of a batch, the two lists metrics.evaluate compares."""
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
        sources, targets = zip(*(data.format_example(task, r) for r in rows)) if rows else ((), ())
        return EncodedSplit(data.encode_batch(tokenizer, list(sources), seq_len),
                            data.encode_batch(tokenizer, list(targets), task.target_len),
                            groups, official_groups, tokenizer.pad_token_id)


def _mean_ce(logits, labels):
    """Mean cross-entropy in fp32 over the labels that are not -100 (logits [B, L, V], labels [B, L])."""
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=-100)


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
