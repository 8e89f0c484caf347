"""Trainer for (residual) prompt tuning of a frozen T5: model wrapper, prompt initializers, optimizer, batching,
training step, evaluation and checkpoint files.

Notation (used in every shape comment): B batch, T source length, P prompt length, H model width,
L target length, V vocabulary rows of the embedding table.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import data_utils
from res_mlp import build_reparam


class ConfigError(ValueError):
    """A user-facing configuration problem; str(e) is one line naming the problem and the fix."""


# --------------------------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); pick another index")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available on this machine; use --device auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# --------------------------------------------------------------------------------------------------------------
# Prompt initializers: one contract, (embedding table [V, H], P, ...) -> initial prompt [P, H] float32.
# --------------------------------------------------------------------------------------------------------------
def _vocab_rows(embedding: torch.Tensor, token_ids: np.ndarray) -> torch.Tensor:
    return embedding[torch.as_tensor(token_ids, dtype=torch.long)].detach().float().cpu().clone()


def init_vocab(embedding, prompt_len, seed, **_):
    """Rows of the embedding table at uniformly random token ids over the whole table (the original's init).

    The original drew P ids with numpy's global RNG twice (in PromptTuner.__init__ and again in
    train_one_task) and kept the second draw; drawing 2P ids from RandomState(seed) and keeping the last P
    reproduces its prompt exactly for the same seed.
    """
    ids = np.random.RandomState(seed).randint(embedding.shape[0], size=2 * prompt_len)[prompt_len:]
    return _vocab_rows(embedding, ids), ids


def init_vocab_top5000(embedding, prompt_len, seed, **_):
    """Rows at random ids among the 5,000 most common pieces (Lester et al. 2021, Sec. 3.2). SentencePiece orders
    pieces by frequency, so these are ids 3..5002 (0-2 are pad, eos, unk)."""
    ids = np.random.RandomState(seed).randint(3, 5003, size=prompt_len)
    return _vocab_rows(embedding, ids), ids


def init_uniform(embedding, prompt_len, seed, **_):
    """Uniform in [-0.5, 0.5] (the original's --random_prompt_init 1, which its code never reached)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(prompt_len, embedding.shape[1], generator=gen) - 0.5, None


def init_class_labels(embedding, prompt_len, seed, tokenizer=None, label_words=(), **_):
    """Lester et al. 2021, Sec. 3.2: token i < #labels is the mean embedding of label word i's pieces; the
    remaining tokens are sampled as in vocab_top5000 (google-research/prompt-tuning composes it the same way)."""
    if not label_words:
        raise ConfigError("--prompt_init class_labels needs a task with label words; this task has none "
                          "(stsb, record, wsc): use --prompt_init vocab")
    prompt, ids = init_vocab_top5000(embedding, prompt_len, seed)
    for i, word in enumerate(label_words[:prompt_len]):
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        prompt[i] = _vocab_rows(embedding, np.asarray(pieces)).mean(0)
    return prompt, ids


def init_file(embedding, prompt_len, seed, path="", **_):
    """A prompt saved as .npy (--prefix_path); must be numeric [P, H]; pickled files are refused."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"--prefix_path {path}: no such file; give the path of a .npy prompt of shape "
                          f"[{prompt_len}, {embedding.shape[1]}]") from None
    except (ValueError, OSError) as e:
        reason = "it needs pickle (an object array)" if "pickle" in str(e) else "it is not a .npy array"
        raise ConfigError(f"--prefix_path {path}: cannot load, {reason}; save the prompt with "
                          f"np.save(path, prompt.astype(np.float32))") from None
    if arr.dtype.kind not in "fiu" or arr.shape != (prompt_len, embedding.shape[1]):
        raise ConfigError(f"--prefix_path {path} holds a {arr.dtype} array of shape {list(arr.shape)}; expected "
                          f"a numeric [prefix_len, H] = [{prompt_len}, {embedding.shape[1]}] array")
    if not np.isfinite(arr).all():
        raise ConfigError(f"--prefix_path {path} contains NaN or inf values; give a finite prompt")
    return torch.from_numpy(arr.astype(np.float32)), None


PROMPT_INITS = {"vocab": init_vocab, "vocab_top5000": init_vocab_top5000, "uniform": init_uniform,
                "class_labels": init_class_labels, "file": init_file}


def init_prompt(name, embedding, prompt_len, seed, **kwargs):
    """Dispatch to PROMPT_INITS[name] -> (prompt [P, H] float32, chosen token ids or None)."""
    if name not in PROMPT_INITS:
        raise ConfigError(f"unknown --prompt_init {name!r}; valid: {', '.join(PROMPT_INITS)}")
    return PROMPT_INITS[name](embedding, prompt_len, seed, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------------------------------
class LegacyAdamW(torch.optim.Optimizer):
    """The AdamW of transformers <= 4.x (``transformers.AdamW``), which the original (and the paper) used.

    Unlike ``torch.optim.AdamW`` it adds eps to sqrt(v) before the bias correction of the step size and applies
    the decoupled weight decay *after* the Adam update:
        m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  step = lr sqrt(1-b2^t) / (1-b1^t)
        p -= step * m / (sqrt(v) + eps);  p -= lr * wd * p
    At lr 0.3 one step of the two rules differs by up to 1e-2 on the prompt (golden/README.md).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denom = v.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                p.addcdiv_(m, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss


OPTIMIZERS = {"legacy_adamw": LegacyAdamW, "torch_adamw": torch.optim.AdamW}


def build_optimizer(name, wrapper, lr, mlp_lr=None, weight_decay=1e-5, eps=1e-8):
    """Prompt and trainable model parameters at ``lr``; the reparameterization at ``mlp_lr`` (default lr).
    Weight decay applies to every group, as in the original (it did not exempt biases or LayerNorms)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown --optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    main = [p for p in wrapper.model.parameters() if p.requires_grad]
    if wrapper.prompt is not None:
        main = [wrapper.prompt] + main
    if wrapper.head is not None:  # an encoder's task head trains with the prompt, at lr
        main += list(wrapper.head.parameters())
    groups = [{"params": main, "lr": lr}]
    if wrapper.reparam is not None:
        groups.append({"params": list(wrapper.reparam.parameters()), "lr": lr if mlp_lr is None else mlp_lr})
    return OPTIMIZERS[name](groups, lr=lr, eps=eps, weight_decay=weight_decay)


# --------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------
@dataclass
class EncodedSplit:
    """A split ready for the model: token ids per row (no padding) plus what evaluation needs."""
    source_ids: list
    target_ids: list
    groups: list | None = None           # multirc question groups for the original's EM (None: not grouped)
    official_groups: list | None = None  # multirc question groups for the official EM / F1a

    def __len__(self):
        return len(self.source_ids)


def encode_split(task, rows, tokenizer, seq_len, groups=None, official_groups=None) -> EncodedSplit:
    sources, targets = zip(*(data_utils.format_example(task, r) for r in rows)) if rows else ((), ())
    return EncodedSplit(data_utils.encode_batch(tokenizer, list(sources), seq_len),
                        data_utils.encode_batch(tokenizer, list(targets), task.target_len),
                        groups, official_groups)


def make_batches(split: EncodedSplit, batch_size, target_len, pad_to=None, order=None):
    """Yield dicts of LongTensors: source_ids [B, T], target_ids [B, L] (masks are ids != 0), and "rows", the
    split's row numbers in the batch. Rows come in the split's order, or in ``order`` (a permutation). T = the
    longest source in the batch, or ``pad_to`` (--pad_to_max_length 1 pads to seq_len as the original did; with
    T5's attention mask both give the same loss, see tests)."""
    order = range(len(split)) if order is None else order
    for start in range(0, len(split), batch_size):
        rows = list(order[start:start + batch_size])
        src = [split.source_ids[i] for i in rows]
        yield {"source_ids": _pad(src, pad_to or max(map(len, src))),
               "target_ids": _pad([split.target_ids[i] for i in rows], target_len), "rows": rows}


def length_grouped_order(split: EncodedSplit, batch_size, seed, group_batches=50):
    """--group_by_length: within consecutive groups of ``group_batches`` batches (in the split's fixed order),
    rows sorted by source length, then the group's batches shuffled, so that a batch holds similar lengths and
    pads little. Changes the data order (off by default)."""
    rng = np.random.RandomState(seed)
    lengths, size, out = [len(s) for s in split.source_ids], batch_size * group_batches, []
    for start in range(0, len(split), size):
        rows = sorted(range(start, min(start + size, len(split))), key=lambda i: -lengths[i])
        batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        out += [i for b in (batches[j] for j in rng.permutation(len(batches))) for i in b]
    return out


def _pad(seqs, length):
    out = torch.zeros(len(seqs), length, dtype=torch.long)  # T5's pad id is 0
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s[:length], dtype=torch.long)
    return out


def num_batches(n, batch_size):
    return (n + batch_size - 1) // batch_size


# --------------------------------------------------------------------------------------------------------------
# Model wrapper
# --------------------------------------------------------------------------------------------------------------
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PromptT5(nn.Module):
    """A T5ForConditionalGeneration with a soft prompt prepended to the encoder input.

    prompt: nn.Parameter [P, H] or None (full fine-tuning); reparam: a res_mlp network [P, H] -> [P, H] or None.
    The encoder input is [phi(prompt); embed(source)] cut to ``seq_len`` tokens, as in the original: when the
    source fills seq_len its last P tokens fall off.
    """

    def __init__(self, model, prompt=None, reparam=None, seq_len=512, precision="fp32"):
        super().__init__()
        self.model = model
        self.prompt = None if prompt is None else nn.Parameter(prompt.clone())
        self.reparam = reparam
        self.seq_len = seq_len
        self.precision = precision
        self.head = None  # T5 answers with its LM head; encoder_model.PromptEncoder trains a task head here

    def autocast(self):
        """The one precision context (--precision): the frozen model runs in bf16/fp16 under autocast; the prompt
        and the reparameterization are computed outside it, in fp32, and every parameter stays fp32."""
        dtype = PRECISIONS[self.precision]
        device_type = self.model.device.type
        return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    @property
    def prompt_len(self):
        return 0 if self.prompt is None else self.prompt.shape[0]

    def projected_prompt(self) -> torch.Tensor | None:  # [P, H]
        if self.prompt is None:
            return None
        return self.prompt if self.reparam is None else self.reparam(self.prompt)

    def encoder_inputs(self, source_ids, prompt=None):
        """-> (inputs_embeds [B, T', H], attention_mask [B, T']) with T' = min(P + T, seq_len)."""
        mask = (source_ids != 0).long()  # [B, T]; T5 pads with 0 and no real piece has id 0
        if prompt is None:
            return None, mask
        embeds = self.model.get_input_embeddings()(source_ids)  # [B, T, H]
        b = source_ids.shape[0]
        embeds = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1), embeds], dim=1)  # [B, P+T, H]
        # The original filled the prompt's mask with source_mask[0, 0], which is 1 for every non-empty source.
        mask = torch.cat([mask.new_ones(b, prompt.shape[0]), mask], dim=1)  # [B, P+T]
        return embeds[:, :self.seq_len], mask[:, :self.seq_len]

    def loss(self, batch, prompt=None):
        """Mean cross-entropy over the non-pad target tokens (pad -> -100)."""
        source_ids, target_ids = batch["source_ids"], batch["target_ids"]
        labels = target_ids.masked_fill(target_ids == 0, -100)  # [B, L]
        target_mask = (target_ids != 0).long()
        embeds, mask = self.encoder_inputs(source_ids, prompt)
        with self.autocast():
            if embeds is None:  # full fine-tuning: no prompt
                out = self.model(input_ids=source_ids[:, :self.seq_len], attention_mask=mask[:, :self.seq_len],
                                 labels=labels, decoder_attention_mask=target_mask)
            else:
                # differs from original (validation only): its validation loss passed the un-prefixed source mask,
                # hiding the last P real source tokens from cross-attention; here the loss always uses the mask
                # the encoder got, so the validation loss is the training objective on validation data.
                out = self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                                 decoder_attention_mask=target_mask)
        return out.loss.float()

    def token_losses(self, batch, prompt=None):
        """Per example: the sum of target-token cross-entropies and the number of target tokens ([B], [B]).
        sum / count over a batch is exactly ``loss``; keeping them per example lets evaluation rebuild the
        original's batch means whatever batch size it runs with."""
        source_ids, target_ids = batch["source_ids"], batch["target_ids"]
        labels = target_ids.masked_fill(target_ids == 0, -100)  # [B, L]
        embeds, mask = self.encoder_inputs(source_ids, prompt)
        inputs = {"input_ids": source_ids[:, :self.seq_len]} if embeds is None else {"inputs_embeds": embeds}
        with self.autocast():
            logits = self.model(**inputs, attention_mask=mask[:, :self.seq_len], labels=labels,
                                decoder_attention_mask=(target_ids != 0).long()).logits  # [B, L, V]
        ce = nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                         reduction="none")  # [B, L]
        return ce.sum(1), (labels != -100).sum(1)

    @torch.no_grad()
    def generate(self, source_ids, max_length, prompt=None, synced=False):
        """Greedy decoding of max_length - 1 tokens after the decoder start (the original's generate(max_length)).
        ``synced``: several processes decode together (sharded weights need every rank in every step)."""
        embeds, mask = self.encoder_inputs(source_ids, prompt)
        kwargs = dict(attention_mask=mask, max_new_tokens=max_length - 1, do_sample=False, num_beams=1, use_cache=True,
                      synced_gpus=synced)
        with self.autocast():
            if embeds is None:
                return self.model.generate(input_ids=source_ids[:, :self.seq_len], **kwargs)
            return self.model.generate(inputs_embeds=embeds, **kwargs)

    @torch.no_grad()
    def decode(self, batch, prompt, tokenizer, max_length, synced=False):
        """-> (generated strings, target strings) of a batch, the two lists data_utils.evaluate compares."""
        out = self.generate(batch["source_ids"], max_length, prompt, synced=synced)
        return (tokenizer.batch_decode(out.tolist(), skip_special_tokens=False),
                tokenizer.batch_decode(batch["target_ids"].tolist(), skip_special_tokens=False))


def freeze_model(model, freeze: bool, except_substring: str):
    """--freeze_weights 1: freeze every parameter whose name does not contain --freeze_except (original rule)."""
    if freeze:
        for name, p in model.named_parameters():
            if except_substring not in name:
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_prompt_model(model, args, tokenizer=None, label_words=()):
    """Freeze the model (--freeze_weights/--freeze_except), initialize the prompt (--prompt_init) and build the
    reparameterization (--prefix_MLP and its options) from the resolved arguments.
    Returns (PromptT5 on the CPU, the prompt's token ids or None, number of trainable model parameters)."""
    n_model_trainable = freeze_model(model, bool(args.freeze_weights), args.freeze_except)
    embedding = model.get_input_embeddings().weight  # [V, H]
    prompt, prompt_ids = None, None
    if args.prefix_len > 0:
        prompt, prompt_ids = init_prompt(args.prompt_init, embedding, args.prefix_len, args.seed,
                                         tokenizer=tokenizer, label_words=label_words, path=args.prefix_path)
    reparam = build_reparam(args.prefix_MLP, embedding.shape[1], args.prefix_len, args.bottleneck_size,
                            args.nonlinearity, bool(args.mlp_layer_norm), args.mlp_dropout, bool(args.residual),
                            bool(args.separate_mlps), bool(args.mlp2_shared_weights))
    wrapper = PromptT5(model, prompt, reparam, args.seq_len, getattr(args, "precision", "fp32"))
    return wrapper, prompt_ids, n_model_trainable


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(wrapper: PromptT5, split: EncodedSplit, task, tokenizer, batch_size, device, pad_to=None,
             loss_batch_size=None, dist=None):
    """Greedy generation + the original's normalization and metric, the official metric, and the loss.

    Runs with the model and reparameterization in eval mode (as the original's validate()) and restores the
    previous modes. The loss is the original's: the mean over consecutive batches of ``loss_batch_size`` rows
    (its validation batch was the training batch) of each batch's mean token loss; it does not depend on the
    ``batch_size`` evaluation runs with. Returns {"score", "metric", "official", "loss", "predictions"}.
    ``dist``: with several processes, batch j runs on rank j % world (every rank runs as many batches, repeating
    its last one when it has fewer, as sharded weights need every rank in every forward), every row is scored
    once, and the results are gathered on every rank.
    """
    modes = [(m, m.training) for m in wrapper.modules()]
    wrapper.eval()
    try:
        prompt = wrapper.projected_prompt()
        n = len(split)
        decoded, targets = [None] * n, [None] * n
        sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        # Longest rows first: batches of similar lengths pad little. Every row is scored on its own, and results
        # are put back in the split's order, so the order changes nothing but speed (and float noise).
        order = sorted(range(n), key=lambda i: -len(split.source_ids[i]))
        batches = list(make_batches(split, batch_size, task.target_len, pad_to, order))
        rank, world = (dist.rank, dist.world) if dist is not None and dist.enabled else (0, 1)
        mine = batches[rank::world]
        rounds = -(-len(batches) // world)
        local = []  # (rows, decoded, targets, sums, counts) of this rank's batches
        for j in range(rounds):
            batch = dict(mine[min(j, len(mine) - 1)]) if mine else dict(batches[0])
            rows = batch.pop("rows")
            batch = {k: v.to(device) for k, v in batch.items()}
            dec, tgt = wrapper.decode(batch, prompt, tokenizer, task.target_len, synced=world > 1)
            s, c = wrapper.token_losses(batch, prompt)
            if j < len(mine):  # not a repeat
                local.append((rows, dec, tgt, s.double().cpu(), c.double().cpu()))
        for part in (dist.gather(local) if world > 1 else [local]):
            for rows, dec, tgt, s, c in part:
                for i, d, t in zip(rows, dec, tgt):
                    decoded[i], targets[i] = d, t
                sums[rows], counts[rows] = s, c
        result = data_utils.evaluate(task, decoded, targets, groups=split.groups,
                                     official_groups=split.official_groups)
        result["loss"] = _mean_of_batch_means(sums, counts, loss_batch_size or batch_size)
        result["predictions"] = decoded
        return result
    finally:
        for m, was_training in modes:
            m.train(was_training)


def _mean_of_batch_means(sums, counts, batch_size):
    """np.mean over batches of (token-loss sum / token count), in float64, as the original averaged its batches."""
    sums, counts = sums.numpy(), counts.numpy()
    if not len(sums):
        return float("nan")
    cuts = range(0, len(sums), batch_size)
    return float(np.mean([sums[i:i + batch_size].sum() / counts[i:i + batch_size].sum() for i in cuts]))


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """A stop was requested (SIGTERM/SIGUSR1): the state was checkpointed at a step boundary."""


@dataclass
class History:
    """Everything results.json and score_dict.npy are made of."""
    evals: list = field(default_factory=list)       # one dict per validation: epoch, score, metric, official, loss
    test_evals: list = field(default_factory=list)  # --test_eval_after_every_task 1: test subset at each validation
    train_loss: list = field(default_factory=list)  # mean training loss per epoch
    train_acc: list = field(default_factory=list)   # training metric per epoch (nan when --train_eval_batches 0)
    step_losses: list = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf


@dataclass
class TrainState:
    """Where training stands: enough to continue exactly (with the optimizer and RNG states, see checkpoints.py).
    ``step`` counts the batches of ``epoch`` already trained; ``partial`` holds that epoch's losses and training
    predictions so far."""
    epoch: int = 0
    step: int = 0
    history: History = field(default_factory=History)
    best: dict | None = None
    partial: dict = field(default_factory=lambda: {"losses": [], "decoded": [], "targets": []})


def _snapshot(wrapper: PromptT5, full_model: bool):
    """A CPU copy of the trainable state: the projected prompt (eval mode), the raw prompt, the reparameterization,
    and when model weights train, the model's state dict."""
    with torch.no_grad():
        modes = [(m, m.training) for m in wrapper.modules()]
        wrapper.eval()
        projected = wrapper.projected_prompt()
        for m, t in modes:
            m.train(t)
    return {
        "projected_prompt": None if projected is None else projected.detach().float().cpu().clone(),
        "prompt": None if wrapper.prompt is None else wrapper.prompt.detach().float().cpu().clone(),
        "reparam": None if wrapper.reparam is None else {k: v.detach().cpu().clone()
                                                          for k, v in wrapper.reparam.state_dict().items()},
        "model": {k: v.detach().cpu().clone() for k, v in wrapper.model.state_dict().items()} if full_model else None,
        "head": None if wrapper.head is None else {k: v.detach().cpu().clone()
                                                    for k, v in wrapper.head.state_dict().items()},
    }


_NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)


def train_step(wrapper: PromptT5, optimizer, batch, prompt=None, scaler=None, dist=None):
    """One optimizer step on one batch, as the original's loop: loss.backward(); step(); zero_grad().
    ``prompt`` is the projected prompt of this step (computed by the caller when it also generates with it).
    ``scaler``: the fp16 GradScaler; a disabled one (the default) passes everything through unchanged.
    ``dist``: with several processes (distributed.Dist), ``batch`` is the global batch; this rank backpropagates
    its slice's token-loss sum over the global token count, and the gradients are summed over the ranks.
    Returns the (global) loss: a detached tensor, no host sync here."""
    scaler = scaler or _NO_SCALER
    if prompt is None:
        prompt = wrapper.projected_prompt()
    if dist is None or not dist.enabled:
        loss = wrapper.loss(batch, prompt)
        scaler.scale(loss).backward()
    else:
        local = dist.shard(batch)
        n_tokens = (batch["target_ids"] != 0).sum()
        weight = 1.0
        if not local["source_ids"].shape[0]:  # a short last batch left this rank nothing: it runs the first row with
            local, weight = {k: v[:1] for k, v in batch.items()}, 0.0  # weight 0 (sharded weights need every rank)
        sums, _ = wrapper.token_losses(local, prompt)
        loss = sums.sum() * weight / n_tokens
        scaler.scale(loss).backward()
        dist.all_reduce_grads([p for group in optimizer.param_groups for p in group["params"]])
        loss = dist.sum(loss.detach())
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _as_floats(losses):
    """Loss tensors (or floats restored from a checkpoint) -> float32 values as python floats (one host sync)."""
    tensors = [l for l in losses if torch.is_tensor(l)]
    values = iter(torch.stack(tensors).float().cpu().tolist() if tensors else [])
    return [float(np.float32(next(values) if torch.is_tensor(l) else l)) for l in losses]


def _check_finite(losses, epoch, lr):
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"training loss became {losses[bad[0]]} at epoch {epoch}, step {bad[0]}; "
                            f"lower --lr (now {lr}) or check the data")


def fit(wrapper, optimizer, train: EncodedSplit, val: EncodedSplit, task, tokenizer, device, *, epochs, batch_size,
        eval_batch_size, eval_every, early_stopping, model_dropout, train_eval_batches=0, pad_to=None,
        test: EncodedSplit | None = None, test_every_eval=False, full_model=False, on_eval=None, progress=True,
        state: TrainState | None = None, save_every_steps=0, on_checkpoint=None, stop_requested=lambda: False,
        order=None, scaler=None, dist=None):
    """Train for ``epochs`` epochs in the split's fixed order (the original never reshuffled), evaluate every
    ``eval_every`` epochs (at epochs 0, N, 2N, ... counted from 0, as the original), and keep the best state.

    Resumable: ``state`` says where to continue. ``on_checkpoint(state)`` is called at the end of every epoch and
    every ``save_every_steps`` steps, and at the next step boundary once ``stop_requested()`` is true (then
    Interrupted is raised). Losses are checked for NaN/inf at each of these points (not every step: no host sync),
    before any state is saved, so a saved state is always a good one.

    ``order``: the training rows' order (default: the split's; --group_by_length passes its own). ``scaler``: the
    fp16 GradScaler (None: none). ``dist``: distributed.Dist with several processes (see distributed.py): every
    rank runs this loop on the same global batches; a stop request on any rank stops all at the same step.

    Returns (history, best_snapshot): the state with the best validation score when ``early_stopping``, else the
    final state.
    """
    from tqdm.auto import tqdm

    state = state or TrainState()
    history = state.history
    if dist is not None and dist.enabled:  # every rank must agree, at every step, on whether to stop
        local_stop = stop_requested

        def stop_requested():
            return dist.any(local_stop(), device)
    lr = optimizer.param_groups[0]["lr"]
    steps_per_epoch = num_batches(len(train), batch_size)

    def checkpoint(epoch_done=False):
        state.partial["losses"] = _as_floats(state.partial["losses"])
        _check_finite(state.partial["losses"], state.epoch, lr)
        if on_checkpoint is not None and not epoch_done:
            on_checkpoint(state)

    for epoch in tqdm(range(state.epoch, epochs), desc="epochs", disable=not progress, initial=state.epoch,
                      total=epochs):
        # The original kept the frozen model in train mode (T5 dropout active); --model_dropout 0 turns it off.
        wrapper.train()
        wrapper.model.train(model_dropout)
        part = state.partial
        batches = make_batches(train, batch_size, task.target_len, pad_to, order)
        for i, batch in enumerate(tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False,
                                       disable=not progress, initial=state.step)):
            if i < state.step:  # resumed inside this epoch: these batches were trained before the stop
                continue
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "rows"}
            prompt = wrapper.projected_prompt()  # [P, H], once per step, in fp32
            if i < train_eval_batches:  # the original's training accuracy: generate on the first 250 batches
                dec, tgt = wrapper.decode(batch, prompt, tokenizer, task.target_len)
                part["decoded"] += dec
                part["targets"] += tgt
            part["losses"].append(train_step(wrapper, optimizer, batch, prompt, scaler, dist))
            state.step = i + 1
            done = epoch * steps_per_epoch + state.step
            stop = state.step < steps_per_epoch and stop_requested()
            if stop or (state.step < steps_per_epoch and save_every_steps and done % save_every_steps == 0):
                checkpoint()
                if stop:
                    raise Interrupted(f"stopped at epoch {epoch}, step {state.step}")

        checkpoint(epoch_done=True)
        losses = part["losses"]
        history.step_losses.append(losses)
        history.train_loss.append(float(np.mean(np.asarray(losses, np.float32))) if losses else float("nan"))
        history.train_acc.append(data_utils.evaluate(task, part["decoded"], part["targets"], training=True)["metric"]
                                 if part["decoded"] else float("nan"))
        if epoch % eval_every == 0:
            res = evaluate(wrapper, val, task, tokenizer, eval_batch_size, device, pad_to, batch_size, dist)
            entry = {"epoch": epoch, "score": res["score"], "metric": res["metric"], "official": res["official"],
                     "loss": res["loss"]}
            history.evals.append(entry)
            metric = "/".join(f"{v:.4f}" for v in np.atleast_1d(res["metric"]))
            tqdm.write(f"epoch {epoch}: train loss {history.train_loss[-1]:.4f} | validation score "
                       f"{res['score']:.4f} (metric {metric}) loss {res['loss']:.4f}")
            if test is not None and test_every_eval:
                t = evaluate(wrapper, test, task, tokenizer, eval_batch_size, device, pad_to, batch_size, dist)
                history.test_evals.append({"epoch": epoch, "score": t["score"], "metric": t["metric"],
                                           "official": t["official"], "loss": t["loss"]})
            # differs from original: its best score started at 0.0, so a run whose scores are all <= 0 (CoLA's
            # MCC, STS-B's Pearson early on) never kept a best state; here the first evaluation always counts.
            if early_stopping and res["score"] > history.best_score:
                history.best_score, history.best_epoch = res["score"], epoch
                state.best = _snapshot(wrapper, full_model)
            if on_eval is not None:
                on_eval(history)
        state.epoch, state.step = epoch + 1, 0
        state.partial = {"losses": [], "decoded": [], "targets": []}
        if on_checkpoint is not None:
            on_checkpoint(state)
        if stop_requested() and state.epoch < epochs:
            raise Interrupted(f"stopped after epoch {epoch}")
    best = state.best
    if not early_stopping or best is None:
        best = _snapshot(wrapper, full_model)
        if history.evals:
            history.best_epoch = history.evals[-1]["epoch"]
            history.best_score = history.evals[-1]["score"]
    return history, best


def load_snapshot(wrapper: PromptT5, snap):
    """Put a snapshot's trainable state back into the wrapper (for the final test evaluation)."""
    with torch.no_grad():
        if snap["prompt"] is not None:
            wrapper.prompt.copy_(snap["prompt"].to(wrapper.prompt.device))
        if snap["reparam"] is not None:
            wrapper.reparam.load_state_dict(snap["reparam"])
        if snap["model"] is not None:
            wrapper.model.load_state_dict(snap["model"])
        if snap.get("head") is not None:  # .get: snapshots written before heads existed have none
            wrapper.head.load_state_dict(snap["head"])
