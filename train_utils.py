"""The trainer: device, optimizer, batching, the training step, evaluation and the epoch loop (fit).

It works on any model wrapper (residual_prompts.base.PromptedModel's subclasses) through what every wrapper offers
(loss/token_losses/n_targets, decode, projected_prompt, snapshot) and on splits that carry their own pad id; it
imports no wrapper. One code path for 1 and N processes: distributed.SINGLE's collectives do nothing.
Shapes: see residual_prompts/prompts.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import data_utils
from distributed import SINGLE
from residual_prompts.errors import ConfigError, Interrupted  # noqa: F401  (Interrupted: re-exported)


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


def build_optimizer(name, wrapper, lr, mlp_lr=None, weight_decay=1e-5, eps=1e-8, head_lr=None):
    """The wrapper's parameter groups (every trainable parameter at ``lr``, the reparameterization at ``mlp_lr``
    and an encoder's head at ``head_lr``, both defaulting to lr). Weight decay applies to every group, as in the
    original (it did not exempt biases or LayerNorms)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown --optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](wrapper.param_groups(lr, reparam_lr=mlp_lr, head_lr=head_lr), lr=lr, eps=eps,
                            weight_decay=weight_decay)


# --------------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------------
def make_batches(split, batch_size, target_len, pad_to=None, order=None):
    """Yield dicts of tensors from a models.EncodedSplit: source_ids [B, T] padded with the split's pad id,
    target_ids [B, L], and "rows", the split's row numbers in the batch. Rows come in the split's order, or in
    ``order`` (a permutation). T = the longest source in the batch, or ``pad_to`` (--pad_to_max_length 1 pads to
    seq_len as the original did; with the attention mask both give the same loss, see tests)."""
    order = range(len(split)) if order is None else order
    pad_id = getattr(split, "pad_id", 0)
    for start in range(0, len(split), batch_size):
        rows = list(order[start:start + batch_size])
        src = [split.source_ids[i] for i in rows]
        yield {"source_ids": _pad(src, pad_to or max(map(len, src)), pad_id),
               "target_ids": _pad([split.target_ids[i] for i in rows], target_len, pad_id), "rows": rows}


def length_grouped_order(split, batch_size, seed, group_batches=50):
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


def _pad(seqs, length, pad_id=0):
    """[len(seqs), length] tensor of the sequences cut/padded to ``length``: long ids, or float64 for real-valued
    targets (an encoder's STS-B scores)."""
    dtype = torch.float64 if seqs and seqs[0] and isinstance(seqs[0][0], float) else torch.long
    out = torch.full((len(seqs), length), pad_id, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s[:length], dtype=dtype)
    return out


def num_batches(n, batch_size):
    return (n + batch_size - 1) // batch_size


def _device(wrapper):
    return next(wrapper.parameters()).device


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(wrapper, split, task, *, batch_size, loss_batch_size=None, pad_to=None, dist=SINGLE):
    """Greedy generation (T5) or the head's prediction (encoders) + the original's normalization and metric, the
    official metric, and the loss. Returns {"score", "metric", "official", "loss", "predictions", "targets",
    "runtime"}.

    Runs with the wrapper in eval mode (as the original's validate()) and restores the previous modes. Each batch
    runs the model's encoder once, for both the predictions and the loss (the wrapper's evaluate_batch). Batches
    hold rows of similar lengths, sized by tokens: as many as fit in the ``batch_size`` longest rows' tokens, the
    encoder running on chunks of them with little padding (see token_batches); with ``pad_to`` every row has the
    same length and a batch is ``batch_size`` rows. The loss is the original's: the mean over consecutive batches
    of ``loss_batch_size`` rows in the split's order (its validation batch was the training batch) of each batch's
    mean token loss; it does not depend on the batches evaluation runs with. With several processes, batch j runs
    on rank j % world (every rank runs as many batches, repeating its last one when it has fewer, as sharded
    weights need every rank in every forward), every row is scored once, and the results are gathered on every
    rank.
    """
    modes, t0 = [(m, m.training) for m in wrapper.modules()], time.time()
    wrapper.eval()
    device = _device(wrapper)
    try:
        prompt = wrapper.projected_prompt()
        n = len(split)
        decoded, targets = [None] * n, [None] * n
        sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        batches = list(token_batches(split, batch_size, task.target_len, pad_to,
                                      EVAL_BATCH_COST.get(device.type)))
        mine = batches[dist.rank::dist.world]
        local = []  # (rows, decoded, targets, sums, counts) of this rank's batches
        for j in range(-(-len(batches) // dist.world)):
            batch = dict(mine[min(j, len(mine) - 1)]) if mine else dict(batches[0])
            rows, chunks = batch.pop("rows"), batch.pop("encoder_chunks")
            batch = {k: v.to(device) for k, v in batch.items()}
            dec, tgt, s, c = wrapper.evaluate_batch(batch, prompt, task.target_len, synced=dist.enabled, chunks=chunks)
            if j < len(mine):  # not a repeat
                local.append((rows, dec, tgt, s.double().cpu(), c.double().cpu()))
        for part in dist.gather(local):
            for rows, dec, tgt, s, c in part:
                for i, d, t in zip(rows, dec, tgt):
                    decoded[i], targets[i] = d, t
                sums[rows], counts[rows] = s, c
        result = data_utils.evaluate(task, decoded, targets, groups=split.groups,
                                     official_groups=split.official_groups)
        result["loss"] = mean_of_batch_means(sums, counts, loss_batch_size or batch_size)
        result["predictions"], result["targets"] = decoded, targets
        result["runtime"] = round(time.time() - t0, 4)  # seconds: eval_runtime
        return result
    finally:
        for m, was_training in modes:
            m.train(was_training)


# What one more encoder pass costs in evaluation, in padded source tokens: its fixed work (one pass through the
# encoder's layers, whatever the rows) against the per-token work. On a CPU padding costs FLOPs, and a pass's fixed
# work is worth some hundred tokens of t5-small (more on a machine shared with other jobs); on a GPU padding is
# nearly free and launches are not: None, one encoder pass per decoder batch (docs/PERFORMANCE.md).
EVAL_BATCH_COST = {"cpu": 256}  # other devices: None


def token_batches(split, batch_size, target_len, pad_to=None, batch_cost=EVAL_BATCH_COST["cpu"],
                   max_rows_factor=4):
    """Evaluation batches (make_batches dicts) of the split's rows sorted longest first, sized by tokens, in two
    levels. A batch (what generate and the loss's decoder run on) takes as many rows as memory allows: rows x its
    longest row <= budget = batch_size x the split's longest source (so no batch is larger, in tokens or in
    attention scores, rows x length^2, than the batch_size longest rows together, and a batch_size that fits the
    memory still does) and rows <= max_rows_factor x batch_size (which bounds the decoder's [rows, target_len,
    vocabulary] logits): few batches, so few generate calls. Its "encoder_chunks", [(rows, length)] (None: one),
    cut it into consecutive groups that the encoder runs one by one, each padded to its own longest row: the cuts
    minimize padded tokens + ``batch_cost`` per chunk, exactly (dynamic programming over the sorted rows; None: the
    fewest chunks), and a batch takes consecutive chunks while it fits. With ``pad_to`` every row is padded to it:
    batches of batch_size rows, one chunk. Every row is scored on its own and results go back to the split's order,
    so batches and chunks change nothing but speed (and float noise)."""
    lengths = [len(s) for s in split.source_ids]
    order = sorted(range(len(split)), key=lambda i: -lengths[i])
    if pad_to or not order:
        for batch in make_batches(split, batch_size, target_len, pad_to, order):
            yield {**batch, "encoder_chunks": None}
        return
    ls = [max(lengths[i], 1) for i in order]
    budget, cap = batch_size * ls[0], max_rows_factor * batch_size

    def fits(i, j):  # rows [i, j) in one batch (a single row always does)
        return j - i == 1 or ((j - i) * ls[i] <= budget and j - i <= cap)

    chunks = _least_cost_cuts(ls, fits, batch_cost)
    groups = [[]]  # batches: consecutive chunks while the batch fits
    for i, j in chunks:
        if groups[-1] and not fits(groups[-1][0][0], j):
            groups.append([])
        groups[-1].append((i, j))
    for group in groups:
        i, j = group[0][0], group[-1][1]
        batch = next(make_batches(split, j - i, target_len, None, order[i:j]))  # exactly these rows
        yield {**batch, "encoder_chunks": [(b - a, lengths[order[a]]) for a, b in group] if len(group) > 1 else None}


def _least_cost_cuts(ls, fits, batch_cost):
    """Cuts of the lengths ``ls`` (longest first) into consecutive groups [(i, j)] that ``fits(i, j)`` allows,
    minimizing the padded tokens, sum of (j - i) x ls[i], + batch_cost per group (None: the fewest groups, then the
    fewest tokens)."""
    def key(groups, tokens):
        return (groups, tokens) if batch_cost is None else (tokens + batch_cost * groups, groups)

    n = len(ls)
    best, cut = [(0, 0)] + [None] * n, [0] * (n + 1)  # best[j]: (groups, padded tokens) of ls[:j]; cut: its last i
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # the last group: [i, j), padded to ls[i]
            if not fits(i, j):
                break  # larger groups of longer rows do not fit either
            candidate = (best[i][0] + 1, best[i][1] + (j - i) * ls[i])
            if best[j] is None or key(*candidate) < key(*best[j]):
                best[j], cut[j] = candidate, i
    cuts, j = [], n
    while j:
        cuts.append((cut[j], j))
        j = cut[j]
    return cuts[::-1]


def mean_of_batch_means(sums, counts, batch_size):
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
    """Where training stands: enough to continue exactly (with the optimizer and RNG states, see run_folder.py).
    ``step`` counts the batches of ``epoch`` already trained; ``partial`` holds that epoch's losses and training
    predictions so far; ``best`` is the wrapper's snapshot() at the best validation; ``best_eval`` the evaluations
    of that state ({"epoch", "val", "test"}: evaluate()'s results), so the final outputs need not evaluate it again
    (in memory only: after a resume it is None until a new best, and the caller evaluates)."""
    epoch: int = 0
    step: int = 0
    history: History = field(default_factory=History)
    best: dict | None = None
    best_eval: dict | None = None
    partial: dict = field(default_factory=lambda: {"losses": [], "decoded": [], "targets": []})


@dataclass
class FitConfig:
    """How fit() trains: the resolved arguments it needs (see train.py --help for each)."""
    task: object
    epochs: int
    batch_size: int
    eval_batch_size: int = 0        # 0: 4 x batch_size
    eval_every: int = 1
    early_stopping: bool = False
    model_dropout: bool = True      # the original kept the frozen model in train mode (T5 dropout active)
    train_eval_batches: int = 0
    pad_to: int | None = None
    test_every_eval: bool = False
    save_every_steps: int = 0
    log_every_steps: int = 0        # on_metrics with the mean training loss every N steps (0: evaluations only)
    progress: bool = True
    order: list | None = None       # the training rows' order (default: the split's; --group_by_length's own)
    scaler: object = None           # the fp16 GradScaler (None: none)
    dist: object = SINGLE


@dataclass
class Hooks:
    """What fit() tells its caller: on_eval(history) after every validation, on_checkpoint(state) at the end of
    every epoch, every save_every_steps steps and on a stop request; stop_requested() is polled every step;
    on_metrics(record) gets every log line of metrics.jsonl (step losses, epoch summaries with validation)."""
    on_eval: object = None
    on_metrics: object = None
    on_checkpoint: object = None
    stop_requested: object = lambda: False


_NO_SCALER = torch.amp.GradScaler("cpu", enabled=False)


def train_step(wrapper, optimizer, batch, prompt=None, scaler=None, dist=SINGLE, grad_norms=None):
    """One optimizer step on one batch, as the original's loop: loss.backward(); step(); zero_grad().
    ``prompt`` is the projected prompt of this step (computed by the caller when it also generates with it).
    ``scaler``: the fp16 GradScaler; a disabled one (the default) passes everything through unchanged.
    ``batch`` is the global batch; this process backpropagates its slice's loss sum over the global target count
    (the wrapper's n_targets), and the gradients are summed over the processes (nothing to do for one), so N
    processes follow the 1-process run. ``grad_norms``: a list to append this step's gradient norm to (the L2 norm
    over every trainable parameter, unscaled, before the step: the Trainer's grad_norm). Returns the (global) loss:
    a detached tensor, no host sync here."""
    scaler = scaler or _NO_SCALER
    if prompt is None:
        prompt = wrapper.projected_prompt()
    local, weight = dist.shard(batch), 1.0
    if not local["source_ids"].shape[0]:  # a short last batch left this rank nothing: it runs the first row with
        local, weight = {k: v[:1] for k, v in batch.items()}, 0.0  # weight 0 (sharded weights need every rank)
    sums, _ = wrapper.token_losses(local, prompt)
    loss = sums.sum() * weight / wrapper.n_targets(batch)
    scaler.scale(loss).backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    dist.all_reduce_grads(params)
    if grad_norms is not None:
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.zeros(())
        grad_norms.append(norm / scaler.get_scale() if scaler.is_enabled() else norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return dist.sum(loss.detach())


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


def fit(wrapper, optimizer, train, val, cfg: FitConfig, hooks: Hooks | None = None, state: TrainState | None = None,
        test=None):
    """Train for ``cfg.epochs`` epochs in the split's fixed order (the original never reshuffled), validate every
    ``cfg.eval_every`` epochs (at epochs 0, N, 2N, ... counted from 0, as the original), and keep the best state.

    Resumable: ``state`` says where to continue. Losses are checked for NaN/inf at every checkpoint (not every
    step: no host sync), before any state is saved, so a saved state is always a good one. On a stop request the
    state is checkpointed at the next step boundary and Interrupted is raised; with several processes a request
    on any rank stops all at the same step.

    Returns (history, best snapshot): the state with the best validation score when ``cfg.early_stopping``, else
    the final state, whose epoch (and its validation score, if it was validated) history.best_* then describe.
    """
    from tqdm.auto import tqdm

    hooks, state = hooks or Hooks(), state or TrainState()
    history, dist = state.history, cfg.dist

    def stop_requested():  # every rank must agree, at every step, on whether to stop
        return dist.any(hooks.stop_requested(), _device(wrapper))

    for epoch in tqdm(range(state.epoch, cfg.epochs), desc="epochs", disable=not cfg.progress, initial=state.epoch,
                      total=cfg.epochs):
        t0, first_step = time.time(), state.step
        _train_epoch(wrapper, optimizer, train, cfg, hooks, state, epoch, stop_requested)
        seconds = time.time() - t0
        losses, part = state.partial["losses"], state.partial
        history.step_losses.append(losses)
        history.train_loss.append(float(np.mean(np.asarray(losses, np.float32))) if losses else float("nan"))
        history.train_acc.append(data_utils.evaluate(cfg.task, part["decoded"], part["targets"], training=True)
                                 ["metric"] if part["decoded"] else float("nan"))
        res = _validate(wrapper, val, test, cfg, state, epoch) if epoch % cfg.eval_every == 0 else None
        record = epoch_record(epoch, num_batches(len(train), cfg.batch_size), first_step, history.train_loss[-1],
                              seconds, res, len(val))
        tqdm.write(_epoch_line(record))
        if hooks.on_metrics is not None:
            hooks.on_metrics(record)
        if res is not None and hooks.on_eval is not None:
            hooks.on_eval(history)
        state.epoch, state.step = epoch + 1, 0
        state.partial = {"losses": [], "decoded": [], "targets": []}
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(state)
        if stop_requested() and state.epoch < cfg.epochs:
            raise Interrupted(f"stopped after epoch {epoch}")
    best = state.best
    if not cfg.early_stopping or best is None:
        best = wrapper.snapshot()
        last = cfg.epochs - 1
        history.best_epoch = last if cfg.epochs else None
        scores = [e["score"] for e in history.evals if e["epoch"] == last]
        history.best_score = scores[0] if scores else -math.inf  # None in results.json: the last epoch not validated
        if state.best_eval is not None and state.best_eval["epoch"] != last:
            state.best_eval = None  # the final state was not evaluated
    return history, best


def _train_epoch(wrapper, optimizer, train, cfg, hooks, state, epoch, stop_requested):
    """One epoch from state.step on; checkpoints every cfg.save_every_steps steps and on a stop request."""
    from tqdm.auto import tqdm

    wrapper.train()
    wrapper.model.train(cfg.model_dropout)  # the original's frozen model in train mode; --model_dropout 0: eval
    lr = optimizer.param_groups[0]["lr"]
    steps = num_batches(len(train), cfg.batch_size)
    part, device = state.partial, _device(wrapper)

    def checkpoint(save=True):
        part["losses"] = _as_floats(part["losses"])
        _check_finite(part["losses"], state.epoch, lr)
        if save and hooks.on_checkpoint is not None:
            hooks.on_checkpoint(state)

    def logs(i):  # this step is logged (the Trainer's logging_steps)
        every = cfg.log_every_steps
        return hooks.on_metrics is not None and every and (epoch * steps + i + 1) % every == 0

    def log(i, norms):
        step = epoch * steps + i + 1  # global, as transformers' Trainer counts
        recent = _as_floats(part["losses"][-cfg.log_every_steps:])  # this epoch's part of the last N steps
        hooks.on_metrics({"epoch": round(step / steps, 4), "step": step, "loss": float(np.mean(recent)),
                          "learning_rate": lr, "grad_norm": float(norms[0])})

    batches = make_batches(train, cfg.batch_size, cfg.task.target_len, cfg.pad_to, cfg.order)
    for i, batch in enumerate(tqdm(batches, total=steps, desc=f"epoch {epoch}", leave=False,
                                   disable=not cfg.progress, initial=state.step)):
        if i < state.step:  # resumed inside this epoch: these batches were trained before the stop
            continue
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "rows"}
        prompt = wrapper.projected_prompt()  # [P, H], once per step, in fp32
        if i < cfg.train_eval_batches:  # the original's training accuracy: generate on the first 250 batches
            dec, tgt = wrapper.decode(batch, prompt, cfg.task.target_len)
            part["decoded"] += dec
            part["targets"] += tgt
        norms = [] if logs(i) else None
        part["losses"].append(train_step(wrapper, optimizer, batch, prompt, cfg.scaler, cfg.dist, norms))
        state.step = i + 1
        if norms is not None:
            log(i, norms)
        stop = state.step < steps and stop_requested()
        every = cfg.save_every_steps and (epoch * steps + state.step) % cfg.save_every_steps == 0
        if stop or (state.step < steps and every):
            checkpoint()
            if stop:
                raise Interrupted(f"stopped at epoch {epoch}, step {state.step}")
    checkpoint(save=False)


def epoch_record(epoch, steps, first_step, epoch_loss, seconds, res, n_val):
    """An epoch's line of metrics.jsonl (and trainer_state.json's log_history, the tracker, the log line), under
    transformers' Trainer's names: ``epoch`` a float counted from 1 after the first epoch (results.json counts its
    validations from 0), ``step`` global; the epoch's mean training loss and speed; with a validation ``res``,
    eval_loss, eval_score (the early-stopping score: results.json's score) and the official metrics under their
    Hugging Face names (metrics.HF_NAMES: eval_accuracy, eval_f1, eval_matthews_correlation...), eval_runtime."""
    record = {"epoch": float(epoch + 1), "step": (epoch + 1) * steps, "epoch_loss": epoch_loss,
              "epoch_runtime": round(seconds, 3),
              "steps_per_second": round((steps - first_step) / max(seconds, 1e-9), 3)}
    if res is not None:
        record.update({"eval_loss": res["loss"], "eval_score": res["score"], **data_utils.hf_metrics(res["official"]),
                       "eval_runtime": res["runtime"],
                       "eval_samples_per_second": round(n_val / max(res["runtime"], 1e-9), 3)})
    return record


def _epoch_line(r):
    """One log line per epoch, fit for files and SLURM logs: time, epoch, loss, speed, validation; every number
    under its metrics.jsonl name."""
    text = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} epoch {r['epoch']:g}: epoch_loss {r['epoch_loss']:.4f} | "
            f"{r['epoch_runtime']:.1f} s, {r['steps_per_second']:.2f} steps/s")
    evals = [f"{k} {v:.4f}" for k, v in r.items() if k.startswith("eval_") and "runtime" not in k
             and "per_second" not in k and isinstance(v, float)]
    return text + (" | " + " ".join(evals) if evals else "")


def _validate(wrapper, val, test, cfg, state, epoch):
    """Score the validation split (and the test subset with --test_eval_after_every_task); keep the best state."""
    history = state.history
    kwargs = dict(batch_size=cfg.eval_batch_size or 4 * cfg.batch_size, loss_batch_size=cfg.batch_size,
                  pad_to=cfg.pad_to, dist=cfg.dist)
    res = evaluate(wrapper, val, cfg.task, **kwargs)
    history.evals.append(_entry(epoch, res))
    res_test = None
    if test is not None and cfg.test_every_eval:
        res_test = evaluate(wrapper, test, cfg.task, **kwargs)
        history.test_evals.append(_entry(epoch, res_test))
    # differs from original: its best score started at 0.0, so a run whose scores are all <= 0 (CoLA's MCC,
    # STS-B's Pearson early on) never kept a best state; here the first evaluation always counts.
    if cfg.early_stopping and res["score"] > history.best_score:
        history.best_score, history.best_epoch = res["score"], epoch
        state.best = wrapper.snapshot()
    if not cfg.early_stopping or history.best_epoch == epoch:  # without early stopping the final state counts
        state.best_eval = {"epoch": epoch, "val": res, "test": res_test}
    return res


def _entry(epoch, res):
    return {"epoch": epoch, "score": res["score"], "metric": res["metric"], "official": res["official"],
            "loss": res["loss"]}
