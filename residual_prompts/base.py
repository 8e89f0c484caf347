"""What every prompted model shares (middle floor): ``PromptedModel``, the one interface the trainer, train.py and
the library front door call without knowing the model family, and ``EncodedSplit``, a tokenized split.

The trainer's side:
    loss(batch, prompt)  token_losses(batch, prompt) -> ([B] sums, [B] counts)  n_targets(batch)
    decode(batch, prompt) -> (predicted strings, target strings)  projected_prompt()  autocast()
    evaluate_batch(batch, prompt, max_length, synced, chunks) -> (predicted, targets, [B] sums, [B] counts)
    snapshot()  trainable_state()  load_trainable_state(state)  param_groups(lr, ...)  trainable_parts()
The Hugging Face side (a module ``transformers.Trainer`` or a plain loop trains unchanged):
    forward(input_ids, attention_mask, labels) -> ResidualPromptOutput(loss, logits)
    print_trainable_parameters()  save_pretrained(dir)  (and residual_prompts.load_residual_prompt)

A batch is ``{"source_ids": [B, T], "target_ids": [B, L]}`` padded with the tokenizer's pad id (EncodedSplit
carries it, so no code assumes T5's 0). Shapes: see prompts.py.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# The parts of a prompted model that can train, in this order: the one list (trainable_state's keys, the
# learning-rate groups, results.json's trainable_params, checkpoint.pt's contents).
PARTS = ("prompt", "reparam", "model", "head")


@dataclass
class ResidualPromptOutput(ModelOutput):
    """What forward returns: the mean loss of the batch and the logits (T5 [B, L, V]; encoders [B, C] or [B]); a
    transformers ModelOutput, so that Trainer reads it as it reads a model's."""
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


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

    FAMILY: str = ""  # models.FAMILIES key
    PEFT_TASK_TYPE: str = ""  # the PEFT TaskType of the adapter save_pretrained writes
    PEFT_EXACT: bool = False  # PEFT's adapter reproduces this wrapper's numbers: a run folder gets one (adapter/)
    FSDP_COMPILE: bool = False  # train.py's --fsdp and --compile are implemented for this family
    accepts_loss_kwargs = False  # transformers.Trainer: forward returns a batch mean (scale it for accumulation)

    def __init__(self, model, tokenizer, soft_prompt=None, seq_len=512, precision="fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.model, self.tokenizer, self.soft_prompt = model, tokenizer, soft_prompt
        self.seq_len, self.precision = seq_len, precision
        # A frozen model's weights are stored in the reduced dtype itself (half the memory, no per-op casts); a
        # model whose weights train keeps fp32 master weights and runs under autocast (see autocast()).
        self.weights_dtype = PRECISIONS[precision] if precision != "fp32" and not self.model_trains else None
        if self.weights_dtype is not None:
            model.to(self.weights_dtype)
            if precision == "bf16":  # (fp16 keeps SDPA's fp32 softmax: T5's scores overflow fp16's range)
                _use_reduced_attention(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer is not None else model.config.pad_token_id
        self.prompt_config, self.prompt_ids = None, None  # set by models.wrap: the ResidualPromptConfig, the init's ids

    @staticmethod
    def prepare_tokenizer(name, config, tokenizer) -> None:
        """models.load_model's check of a loaded tokenizer for this family (batches are padded with its pad id,
        which must be the model's); a family may set what it lacks instead. ConfigError on failure."""
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id != config.pad_token_id:
            raise ConfigError(f"{name}: the tokenizer's pad id ({tokenizer.pad_token_id}) is not the model's "
                              f"({config.pad_token_id}); fix pad_token in the tokenizer or config files")

    # ---- the Hugging Face front door ------------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, labels=None, source_ids=None, target_ids=None):
        """A training or evaluation forward on a Hugging Face batch (input_ids [B, T], attention_mask [B, T], labels:
        T5 [B, L] target ids with -100 where ignored; encoders [B] class ids or scores), or on this project's batch
        (source_ids, target_ids): -> ResidualPromptOutput(loss, logits). The prompt is projected through its network
        in every call, so gradients reach the prompt and the network. The same numbers as train.py's train step."""
        if source_ids is None:
            if input_ids is None or labels is None:
                raise ValueError("forward needs input_ids and labels (or source_ids and target_ids)")
            batch = self.hf_batch(input_ids, attention_mask, labels)
        else:
            batch = {"source_ids": source_ids, "target_ids": target_ids}
        loss, logits = self.outputs(batch, self.projected_prompt())
        return ResidualPromptOutput(loss=loss, logits=logits)

    def trainable_parts(self) -> dict:
        """{part: module or parameter} of what trains, parts named as in PARTS: the prompt, its network, the
        model when any of its weights train, and an encoder's head. The one definition every other place uses."""
        parts = {"prompt": self.prompt, "reparam": self.reparam,
                 "model": self.model if self.model_trains else None}
        parts.update({name: getattr(self, name) for name in self.EXTRA_PARTS})
        return {k: v for k, v in parts.items() if v is not None}

    def trainable_counts(self) -> dict:
        """{part: number of trainable values} for every part of PARTS (0 where absent): results.json's
        trainable_params."""
        counts = dict.fromkeys(PARTS, 0)
        for name, part in self.trainable_parts().items():
            params = [part] if isinstance(part, nn.Parameter) else part.parameters()
            counts[name] = sum(p.numel() for p in params if p.requires_grad)
        return counts

    def param_groups(self, lr, reparam_lr=None, head_lr=None) -> list[dict]:
        """Optimizer parameter groups: every trainable parameter at ``lr``, except the reparameterization
        (``reparam_lr``, default lr) and an encoder's head (``head_lr``, default lr); one group per part, in
        the order the parts' parameters are met."""
        rates = {"reparam": reparam_lr, "head": head_lr}
        groups = {}  # lr -> params, in parameter order (one group per distinct part)
        owner = {}
        for name, part in self.trainable_parts().items():
            for p in ([part] if isinstance(part, nn.Parameter) else part.parameters()):
                owner[id(p)] = name
        for _, p in self.named_parameters():
            if p.requires_grad and id(p) in owner:
                part = owner[id(p)] if owner[id(p)] in rates else ""
                groups.setdefault(part, []).append(p)
        return [{"params": ps, "lr": lr if rates.get(part) is None else rates[part]} for part, ps in groups.items()]

    def print_trainable_parameters(self) -> None:
        """As PEFT's: trainable params: N || all params: M || trainable%: X."""
        trainable = sum(self.trainable_counts().values())
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """Only what trains (the prompt, its network, a head; the model's weights when they train), as PEFT's
        adapters keep it: what transformers.Trainer writes into its checkpoints and loads back with
        load_state_dict(strict=False). The frozen model's weights are the base model's, not ours to save."""
        full = super().state_dict(*args, prefix=prefix, keep_vars=keep_vars)
        parts = self.trainable_parts()
        keep = tuple(prefix + ("soft_prompt." if name in ("prompt", "reparam") else f"{name}.")
                     for name in parts)
        out = type(full)((k, v) for k, v in full.items() if k.startswith(keep))
        if destination is not None:
            destination.update(out)
            return destination
        return out

    def save_pretrained(self, save_directory, **_) -> str:
        """Write ``save_directory``: the PEFT prompt-tuning adapter of the projected prompt (adapter_config.json,
        adapter_model.safetensors: PeftModel.from_pretrained(base_model, dir) loads it), and this project's own
        files for training on or reloading the exact wrapper (residual_prompt_config.json, residual_prompt.pt:
        prompt, network, head). See residual_prompts.peft_export."""
        from .peft_export import save_residual_prompt

        return save_residual_prompt(self, save_directory)

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
        """The one precision context (--precision). A frozen model (nothing in it trains when the wrapper is built)
        holds its weights in bf16/fp16 (``weights_dtype``): it runs in that dtype without autocast, and the fp32
        prompt is cast once where it enters the model. A model whose weights train keeps fp32 master weights and
        runs under autocast. Either way the prompt, the reparameterization and a head are computed outside, in
        fp32, and the loss is fp32."""
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.weights_dtype is not None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=dtype)

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


REDUCED_ATTENTION = "rpt_reduced"  # the attention of a model whose weights are stored in bf16/fp16


def _reduced_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention for bf16 weights: with dropout (training), the model's own eager attention, whose products, softmax
    and dropout stay in bf16 (SDPA's CPU path with dropout converts q, k, v to fp32 and back: 7-12% of a t5-small
    bf16 step, CPU time, one thread); without dropout (evaluation), SDPA, whose fused CPU kernel keeps bf16 and is
    the faster one there (eager: 17% more CPU time). A model module without an eager function gets SDPA. The tiny
    T5's loss after 20 steps stays 0.12% from fp32 (tests/test_precision.py pins 1%)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if module.training and kwargs.get("dropout", 0.0) > 0:
        import sys

        eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if eager is not None:
            return eager(module, query, key, value, attention_mask, **kwargs)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def _use_reduced_attention(model):
    """Switch a model on SDPA (transformers' default) to _reduced_attention; any other choice is left alone."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(REDUCED_ATTENTION, _reduced_attention)
    # the masks the model builds for it: eager's additive float masks (padding, causality), which SDPA takes too; an
    # implementation without a registered mask function gets no mask at all from transformers (padding attended)
    ALL_MASK_ATTENTION_FUNCTIONS.register(REDUCED_ATTENTION, eager_mask)
    try:
        model.set_attn_implementation(REDUCED_ATTENTION)
    except (ValueError, ImportError, AttributeError):  # a model that accepts only its built-in implementations
        model.set_attn_implementation("sdpa")


@functools.lru_cache(maxsize=None)
def matmul_rates(device_type="cpu", n=512, seconds=0.02) -> dict:
    """{precision: FLOP/s} of an [n, n] x [n, n] product in fp32, bf16 and fp16 on ``device_type``: the best of the
    repetitions that fit in ``seconds`` per dtype after one warm-up, about 0.1 s in all. On a CPU it runs on one
    thread (the thread count is restored): a per-core rate, which other processes on a shared machine disturb far
    less than a multi-threaded product (2 threads on 2 busy cores measured 10x below 1 thread). Measured once per
    process and kept in memory only."""
    threads = torch.get_num_threads()
    if device_type == "cpu":
        torch.set_num_threads(1)
    try:
        return {name: _best_rate(dtype, device_type, n, seconds) for name, dtype in
                (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16))}
    finally:
        torch.set_num_threads(threads)


def _best_rate(dtype, device_type, n, seconds):
    a = torch.randn(n, n, device=device_type).to(dtype)
    b = torch.randn(n, n, device=device_type).to(dtype)
    a @ b  # warm-up: kernel selection, first touch
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
        if time.perf_counter() > end:
            return best


FASTER = 1.25  # reduced-precision products at least this much faster than fp32 per core: matrix units at work


def slow_precision_warning(precision, device_type) -> str | None:
    """A one-line warning when --precision ``precision`` will not be faster than fp32 on this CPU (no bf16/fp16
    matrix units: its products measured less than FASTER x the fp32 rate, so the casts and elementwise work make
    the step slower), naming the measured rates; None for fp32, on GPUs, or when the products measured faster.
    Measures (matmul_rates) only when asked about bf16/fp16 on a CPU."""
    if precision == "fp32" or device_type != "cpu":
        return None
    rates = matmul_rates("cpu")
    if rates[precision] >= FASTER * rates["fp32"]:
        return None
    return (f"--precision {precision} will likely be slower than fp32 here: this CPU's {precision} matrix products "
            f"measured {rates[precision] / 1e9:.1f} GFLOP/s per core against {rates['fp32'] / 1e9:.1f} for fp32 "
            f"(no {precision} matrix units); drop --precision for speed")
