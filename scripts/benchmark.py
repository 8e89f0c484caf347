"""Training and evaluation throughput and FLOP utilization, side by side in one process, on the same data and model.

    python scripts/benchmark.py --quick                  # t5-small shape, a few steps: a few minutes on 2 CPU cores
    python scripts/benchmark.py --quick --eval_compare   # + evaluation before/after on all 277 RTE validation rows
    python scripts/benchmark.py --shape t5-small --configs none --eval_compare --threads 1   # only that, 1 thread
    python scripts/benchmark.py                          # t5-base shape (the paper's), RTE and CB
    python scripts/benchmark.py --device cuda --configs original,ours,ours_bf16,peft
    python scripts/benchmark.py --run_flops RUN_DIR      # FLOPs and MFU of a finished train.py run (gpu_check.sh)

The model is randomly initialized with the real T5 architecture and vocabulary (speed does not depend on weight
values). Configurations (all Residual PT, MLP1 with a 10-token prompt, batch 8, the frozen model in train mode as
the original; PEFT is plain prompt tuning, for which it has no residual MLP):
  original      our implementation behaving like the original: every batch padded to 512, training-set `generate`
                on every batch (it did so for the first 250), fp32; evaluation as its validate(): batches of 8 in
                file order, padded to 512, `generate` and then the loss, each running the encoder
  ours          the defaults: each batch padded to its longest row, no training-set generate; evaluation by
                train_utils.evaluate (batch 32): length-sorted batches sized by tokens, one encoder pass per batch
                for both generate and the loss; same math (tests/test_speed.py, tests/test_eval_speed.py)
  ours_bf16     + --precision bf16: the frozen weights stored in bf16 (changes numbers); run by default wherever bf16
                matrix products measure faster than fp32 here (measured at the start, not assumed from the device)
  ours_grouped  + --group_by_length 1 (changes the data order)
  ours_nodrop   + --model_dropout 0: the frozen model in eval mode while training, so no dropout masks (changes numbers)
  peft          Hugging Face PEFT prompt tuning (PromptTuningConfig, num_transformer_submodules=1) in a plain torch
                loop with torch.optim.AdamW, fed the same dynamically padded batches, evaluated with `generate` and
                a loss forward on length-sorted batches of 32; needs `pip install peft`
Reported per configuration, training and evaluation separately: examples/s in steady state (every timed training
batch and the whole evaluation run once untimed first, so that every shape the timed pass meets has had its one-time
kernel set-up: a bf16 product on a new shape pays one; evaluation: generate + loss), the FLOPs executed per example
(torch.utils.flop_counter, matrix products and attention, counted in a further, untimed pass over the same work),
the FLOP/s achieved, and that rate as a fraction of the machine's limit (the higher of its fp32 and bf16
matrix-product rates, both measured in the same process: MFU) and of its fp32 rate: measured at the start and again
before every configuration, the fractions taken against the highest measurements (the rate of a virtual machine
drifts by tens of percent between minutes; the highest is the conservative limit). The device line names the CPU
model (/proc/cpuinfo) and its bf16 matrix-unit flags.
Also peak memory above the idle process (CPU: resident set size sampled every 2 ms; CUDA: max_memory_allocated),
ratios to `original`, and the top operators by self time (torch.profiler) of `ours` and of `ours_nodrop`'s
training. --eval_compare times today's evaluation against the previous one (two encoder passes per batch, batches
of 32 rows) on a whole validation split.
No number here is asserted anywhere: this is a measurement.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data_utils  # noqa: E402
from residual_prompts import models  # noqa: E402
import train_utils as tu  # noqa: E402
from residual_prompts import ResidualPromptConfig, get_residual_prompt_model  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
ALL_CONFIGS = ("original", "ours", "ours_bf16", "ours_grouped", "ours_nodrop", "peft")
BATCH = 8        # training batch (the paper's), and the loss batch of evaluation
EVAL_BATCH = 32  # train.py's default --eval_batch_size (4 x --batch_size)


# --------------------------------------------------------------------------------------------------------------
# Measuring instruments
# --------------------------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory above the level at entry: CUDA max_memory_allocated, else the process RSS sampled every 2 ms."""

    def __init__(self, device):
        self.device = device

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:  # give freed heap back to the OS so that the next configuration starts from the same level
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = self.peak - self.base


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device, dtype, n=None, seconds=2.0):
    """The machine's matrix-product rate (FLOP/s): the best of repeated [n, n] x [n, n] products over ``seconds``
    (n = 2048 on CPUs, 8192 on GPUs), the reference for utilization. On a shared machine the best repetition is
    the one least disturbed."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    sync(device)
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        dt = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 / dt)
        if time.perf_counter() > end:
            return best


RATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _positive_seconds(text):
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def sample_rates(device, rates, seconds=2.0):
    """Measure the fp32 and the bf16 matrix-product rates now (``seconds`` each) and append them to ``rates``
    ({"fp32": [...], "bf16": [...]}); -> rates."""
    for name, dtype in RATE_DTYPES.items():
        rates.setdefault(name, []).append(matmul_rate(device, dtype, seconds=seconds))
    return rates


def rate_summary(rates):
    """-> (the machine's limit: the highest rate measured in either dtype, its dtype name, the highest fp32 rate,
    the per-moment limits: max over the dtypes of each sampling)."""
    best = {name: max(v) for name, v in rates.items()}
    limit_name = max(best, key=best.get)
    return best[limit_name], limit_name, best["fp32"], [max(pair) for pair in zip(*rates.values())]


def cpu_model():
    """The CPU's model name as lscpu prints it (/proc/cpuinfo's "model name"), plus its bf16 matrix-unit flags."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    units = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(units) if units else 'no bf16 matrix flags'})"


def _register_cpu_attention_flops():
    """torch's FLOP counter knows the CUDA attention kernels but not the CPU one that SDPA runs on CPUs: count it
    with the same formulas, so that CPU and GPU figures count the same work."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is None or forward in fc.flop_registry or forward.default in fc.flop_registry:
        return

    @fc.register_flop_formula(forward)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward is not None:
        @fc.register_flop_formula(backward)
        def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn):
    """FLOPs (matrix products and attention, forward and backward) that ``fn()`` executes."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def top_ops(fn, device, n=8):
    """The n operators with the most self time while ``fn()`` runs (torch.profiler): [(name, self ms, % of all)]."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.key_averages()

    def self_us(e):
        if device.type == "cuda":
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        return e.self_cpu_time_total

    total = sum(self_us(e) for e in events) or 1
    ranked = sorted(events, key=self_us, reverse=True)[:n]
    return [(e.key, self_us(e) / 1e3, 100.0 * self_us(e) / total) for e in ranked]


# --------------------------------------------------------------------------------------------------------------
# The work
# --------------------------------------------------------------------------------------------------------------
def load_data(task_name, tokenizer, n_train, n_eval, data_dir):
    """(task, train split of n_train rows, validation split of n_eval rows (0: all))."""
    task = data_utils.get_task(task_name)
    splits = data_utils.build_splits(task, data_dir)
    train = models.PromptT5.encode_split(task, splits["train"][:n_train], tokenizer, 512)
    val = models.PromptT5.encode_split(task, splits["val"][:n_eval] if n_eval else splits["val"], tokenizer, 512)
    return task, train, val


@torch.no_grad()
def evaluate_two_pass(wrapper, split, task, batch_size, loss_batch_size, pad_to=None, sort=True):
    """Evaluation before the one-pass change: batches of ``batch_size`` rows (longest first when ``sort``, else in
    file order as the original), and per batch `decode` then `token_losses`, each running the encoder. -> (the
    predictions in the split's order, the reported loss), as train_utils.evaluate computes them."""
    modes = [(m, m.training) for m in wrapper.modules()]
    wrapper.eval()
    n, device = len(split), next(wrapper.parameters()).device
    decoded = [None] * n
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    prompt = wrapper.projected_prompt()
    order = sorted(range(n), key=lambda i: -len(split.source_ids[i])) if sort else None
    for batch in tu.make_batches(split, batch_size, task.target_len, pad_to, order):
        rows = batch.pop("rows")
        batch = {k: v.to(device) for k, v in batch.items()}
        dec, _ = wrapper.decode(batch, prompt, task.target_len)
        s, c = wrapper.token_losses(batch, prompt)
        for i, d in zip(rows, dec):
            decoded[i] = d
        sums[rows], counts[rows] = s.double().cpu(), c.double().cpu()
    for m, was_training in modes:
        m.train(was_training)
    return decoded, tu.mean_of_batch_means(sums, counts, loss_batch_size)


def make_wrapper(model, tokenizer, device, precision="fp32", seed=0):
    """Residual PT (MLP1, 10 tokens, the original's vocab init) through the library's front door."""
    torch.manual_seed(seed)
    config = ResidualPromptConfig(num_virtual_tokens=10, reparameterization="MLP1", init="vocab", seed=seed)
    return get_residual_prompt_model(model, config, tokenizer, seq_len=512, precision=precision).to(device)


def steady_state(train, evaluate, device):
    """-> (seconds of ``train()``, seconds of ``evaluate()``) in steady state: each runs once untimed first, so that
    every shape the timed pass meets (each batch's padded length, every generate step) has had its one-time set-up
    (kernel selection, bf16 weight packing, allocator growth) before the clock starts; the timed pass repeats
    exactly that work."""
    train()
    evaluate()
    times = []
    for fn in (train, evaluate):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return tuple(times)


def run_ours(name, model, tokenizer, task, train, val, steps, device, seed=0):
    """One configuration of our trainer: timed training steps, timed evaluation, then their FLOPs (untimed)."""
    original = name == "original"
    if name == "ours_bf16":  # the wrapper stores the frozen weights in bf16, in place: a copy, dropped afterwards
        model = copy.deepcopy(model)
    wrapper = make_wrapper(model, tokenizer, device, "bf16" if name == "ours_bf16" else "fp32", seed)
    optimizer = tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)
    pad_to = 512 if original else None
    order = tu.length_grouped_order(train, BATCH, 0) if name == "ours_grouped" else None
    batches = [{k: v.to(device) for k, v in b.items() if k != "rows"}
               for b in list(tu.make_batches(train, BATCH, task.target_len, pad_to, order))[:steps]]

    def step(batch):
        prompt = wrapper.projected_prompt()
        if original:  # the original's training accuracy: generate on the batch (first 250 batches)
            wrapper.decode(batch, prompt, task.target_len)
        return tu.train_step(wrapper, optimizer, batch, prompt)

    def evaluate():
        if original:
            evaluate_two_pass(wrapper, val, task, BATCH, BATCH, pad_to=512, sort=False)
        else:
            tu.evaluate(wrapper, val, task, batch_size=EVAL_BATCH, loss_batch_size=BATCH)

    wrapper.train()
    wrapper.model.train(name != "ours_nodrop")  # as train.py's --model_dropout (evaluate restores these modes)
    losses = []
    with PeakMemory(device) as mem:
        train_s, eval_s = steady_state(lambda: [losses.append(step(b)) for b in batches], evaluate, device)
    train_flops = count_flops(lambda: [step(b) for b in batches])
    eval_flops = count_flops(evaluate)
    return dict(train_n=sum(b["source_ids"].shape[0] for b in batches), train_s=train_s, eval_n=len(val),
                eval_s=eval_s, peak_bytes=mem.bytes, train_flops=train_flops, eval_flops=eval_flops,
                losses=[float(l) for l in losses]), wrapper


def run_peft(model, tokenizer, task, train, val, steps, device, seed=0):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    torch.manual_seed(seed)
    hidden = model.get_input_embeddings().weight.shape[1]
    config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=10, num_transformer_submodules=1,
                                token_dim=hidden)
    # PEFT hooks into the model it wraps (and prompt tuning has no unload()): wrap a copy, dropped afterwards.
    peft_model = get_peft_model(copy.deepcopy(model), config).to(device)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.3, eps=1e-8,
                                  weight_decay=1e-5)
    batches = [(b["source_ids"].to(device), b["target_ids"].to(device))
               for b in list(tu.make_batches(train, BATCH, task.target_len))[:steps]]

    def step(src, tgt):
        loss = peft_model(input_ids=src, attention_mask=(src != 0).long(), labels=tgt.masked_fill(tgt == 0, -100),
                          decoder_attention_mask=(tgt != 0).long()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate():
        peft_model.eval()
        order = sorted(range(len(val)), key=lambda i: -len(val.source_ids[i]))
        for batch in tu.make_batches(val, EVAL_BATCH, task.target_len, None, order):
            src, tgt = batch["source_ids"].to(device), batch["target_ids"].to(device)
            out = peft_model.generate(input_ids=src, attention_mask=(src != 0).long(),
                                      max_new_tokens=task.target_len - 1, do_sample=False, num_beams=1)
            tokenizer.batch_decode(out.tolist(), skip_special_tokens=False)
            peft_model(input_ids=src, attention_mask=(src != 0).long(), labels=tgt.masked_fill(tgt == 0, -100))
        peft_model.train()

    peft_model.train()
    with PeakMemory(device) as mem:
        train_s, eval_s = steady_state(lambda: [step(s, t) for s, t in batches], evaluate, device)
    train_flops = count_flops(lambda: [step(s, t) for s, t in batches])
    eval_flops = count_flops(evaluate)
    del peft_model, optimizer
    return dict(train_n=sum(s.shape[0] for s, _ in batches), train_s=train_s, eval_n=len(val), eval_s=eval_s,
                peak_bytes=mem.bytes, train_flops=train_flops, eval_flops=eval_flops, losses=None)


def eval_compare(model, tokenizer, task_name, data_dir, device, repeats, eval_rows=0):
    """Today's evaluation (train_utils.evaluate) against the previous one (evaluate_two_pass, batches of 32 rows
    longest first) on the same wrapper and split, alternating ``repeats`` times; plus their FLOPs and whether
    they agree (predictions identical; loss within float noise: the batches differ, so the padding does)."""
    task, _, val = load_data(task_name, tokenizer, 1, eval_rows, data_dir)
    wrapper = make_wrapper(model, tokenizer, device)
    wrapper.eval()
    runs = {"before": lambda: evaluate_two_pass(wrapper, val, task, EVAL_BATCH, BATCH),
            "after": lambda: tu.evaluate(wrapper, val, task, batch_size=EVAL_BATCH, loss_batch_size=BATCH)}
    tu.evaluate(wrapper, models.EncodedSplit(val.source_ids[:4], val.target_ids[:4]), task, batch_size=4)  # warm-up
    times, results = {"before": [], "after": []}, {}
    for _ in range(repeats):
        for name, fn in runs.items():
            sync(device)
            t0 = time.perf_counter()
            results[name] = fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            print(f"# eval_compare {task_name} {name}: {times[name][-1]:.1f} s", flush=True)
    flops = {name: count_flops(fn) for name, fn in runs.items()}
    before_pred, before_loss = results["before"]
    after = results["after"]
    med = {k: statistics.median(v) for k, v in times.items()}
    after_batches = list(tu.token_batches(val, EVAL_BATCH, task.target_len, None, tu.EVAL_BATCH_COST.get(device.type)))
    n_batches = {"before": -(-len(val) // EVAL_BATCH), "after": len(after_batches)}
    encoder_passes = {"before": 2 * n_batches["before"],
                      "after": sum(len(b["encoder_chunks"] or [1]) for b in after_batches)}
    return {"task": task_name, "rows": len(val), "repeats": repeats, "seconds": times, "median_s": med,
            "ratio": med["before"] / med["after"],
            "pair_ratios": [b / a for b, a in zip(times["before"], times["after"])],
            "flops": flops, "flop_ratio": flops["before"] / max(flops["after"], 1), "batches": n_batches,
            "encoder_passes": encoder_passes,
            "same_predictions": before_pred == after["predictions"],
            "loss_rel_diff": abs(after["loss"] - before_loss) / abs(before_loss)}


def run_flops(run_dir, device_name="auto", seconds=2.0):
    """FLOPs of a finished train.py run, recomputed from its folder: one epoch of training (its batches, its
    training-set generate) and one validation, each counted once and multiplied by the run's epochs and
    validations; with results.json's wall time and the matrix-product rate measured here, the run's achieved
    FLOP/s and its fraction of that rate (MFU). The count runs the same code as train.py (train_utils.train_step,
    train_utils.evaluate) on the run's own data selection."""
    import run_folder as rf

    device = tu.resolve_device(device_name)
    wrapper, args, results = rf.load_run(run_dir, device=str(device))
    task = data_utils.get_task(args["task"])
    splits = data_utils.build_splits(task, args.get("data_dir"), args.get("select_k_per_class", -1),
                                     bool(args.get("get_test_subset", 0)), args.get("limit_val_set", -1),
                                     args.get("data_seed", 0))
    train, val = (wrapper.encode_split(task, splits[s], wrapper.tokenizer, args["seq_len"], splits.get(f"{s}_groups"),
                                       splits.get(f"{s}_official_groups")) for s in ("train", "val"))
    optimizer = tu.build_optimizer(args.get("optimizer", "legacy_adamw"), wrapper, args["lr"], args.get("mlp_lr"),
                                   args.get("weight_decay", 1e-5), head_lr=args.get("head_lr"))
    pad_to = args["seq_len"] if args.get("pad_to_max_length") else None
    order = tu.length_grouped_order(train, args["batch_size"], args.get("data_seed", 0)) \
        if args.get("group_by_length") else None
    scaler = torch.amp.GradScaler(device.type, enabled=args.get("precision") == "fp16")

    def epoch():
        wrapper.train()
        wrapper.model.train(bool(args.get("model_dropout", 1)))
        for i, batch in enumerate(tu.make_batches(train, args["batch_size"], task.target_len, pad_to, order)):
            batch = {k: v.to(device) for k, v in batch.items() if k != "rows"}
            prompt = wrapper.projected_prompt()
            if i < args.get("train_eval_batches", 0):
                wrapper.decode(batch, prompt, task.target_len)
            tu.train_step(wrapper, optimizer, batch, prompt, scaler)

    train_flops = count_flops(epoch)
    eval_flops = count_flops(lambda: tu.evaluate(wrapper, val, task, batch_size=args.get("eval_batch_size") or
                                                 4 * args["batch_size"], loss_batch_size=args["batch_size"],
                                                 pad_to=pad_to))
    epochs, validations = args["num_epochs"], len(results.get("validation") or [])
    total = epochs * train_flops + validations * eval_flops
    # against the bf16 rate on GPUs and for a bf16 run (its products are bf16), else fp32
    dtype = torch.bfloat16 if device.type == "cuda" or args.get("precision") == "bf16" else torch.float32
    peak = matmul_rate(device, dtype, seconds=seconds)
    wall = results.get("wall_time_s") or float("nan")
    return {"run_dir": run_dir, "task": task.name, "device": str(device), "precision": args.get("precision", "fp32"),
            "epochs": epochs, "validations": validations, "train_rows": len(train), "val_rows": len(val),
            "train_flops_per_epoch": train_flops, "eval_flops_per_validation": eval_flops, "total_flops": total,
            "wall_time_s": wall, "achieved_flops_per_s": total / wall, "matmul_dtype": str(dtype).replace("torch.", ""),
            "matmul_flops_per_s": peak, "mfu": total / wall / peak}


def profile_ours(wrappers, train, val, task, device):
    """Top operators of `ours` (2 training steps; the evaluation of ``val``) and, when they ran, of `ours_bf16`'s and
    `ours_nodrop`'s training: where the time goes beside the matrix products, in bf16, without the dropout masks."""
    batches = [{k: v.to(device) for k, v in b.items() if k != "rows"}
               for b in list(tu.make_batches(train, BATCH, task.target_len))[:2]]
    profiles = {}
    for name in ("ours", "ours_bf16", "ours_nodrop"):
        wrapper = wrappers.get(name)
        if wrapper is None:
            continue
        optimizer = tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)
        wrapper.train()
        wrapper.model.train(name != "ours_nodrop")  # as run_ours
        profiles[f"`{name}` training (2 steps)"] = top_ops(
            lambda: [tu.train_step(wrapper, optimizer, b) for b in batches], device)
        if name == "ours":
            profiles[f"`ours` evaluation ({len(val)} rows)"] = top_ops(lambda: tu.evaluate(
                wrapper, val, task, batch_size=EVAL_BATCH, loss_batch_size=BATCH), device)
    return profiles


# --------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------
def build_model(shape, vocab, device):
    from transformers import T5Config, T5ForConditionalGeneration

    if shape == "t5-base":
        with open(os.path.join(vocab, "t5-base-config.json")) as f:
            config = T5Config(**{k: v for k, v in json.load(f).items() if not k.startswith("_")})
    elif shape == "tiny":
        config = T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.1,
                          decoder_start_token_id=0)
    else:
        config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                          dropout_rate=0.1, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).to(device)
    for prm in model.parameters():
        prm.requires_grad_(False)  # frozen, as --freeze_weights 1
    return model


def print_tables(task_name, rows, rates, mean_len, n_train):
    base = rows.get("original")
    print(f"\n## {task_name} (mean source length {mean_len:.0f} tokens, {n_train} training rows)\n")
    print("| configuration | train ex/s | eval ex/s | peak memory MB | train × | eval × | memory × |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        tr, ev = r["train_n"] / r["train_s"], r["eval_n"] / r["eval_s"]
        if base:
            btr, bev = base["train_n"] / base["train_s"], base["eval_n"] / base["eval_s"]
            ratios = [f"{tr / btr:.2f}", f"{ev / bev:.2f}",
                      f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if base["peak_bytes"] > 0 else "-"]
        else:
            ratios = ["-"] * 3
        print(f"| {name} | {tr:.2f} | {ev:.2f} | {r['peak_bytes'] / 2**20:.0f} | " + " | ".join(ratios) + " |")
    if "ours" in rows and "peft" in rows:
        o, p = rows["ours"], rows["peft"]
        print(f"\nours / peft: train {(o['train_n'] / o['train_s']) / (p['train_n'] / p['train_s']):.2f}×, "
              f"eval {(o['eval_n'] / o['eval_s']) / (p['eval_n'] / p['eval_s']):.2f}×")
    peak, peak_dtype, fp32, samples = rate_summary(rates)
    sampled = (f": the highest of {len(samples)} measurements in this run, before each configuration "
               f"({min(samples) / 1e9:.1f}-{max(samples) / 1e9:.1f})") if len(samples) > 1 else ""
    print(f"\nFLOPs executed (counted, padding included) and achieved rate; % of matmul rate: of the machine's limit, "
          f"the {peak_dtype} matrix-product rate measured here ({peak / 1e9:.1f} GFLOP/s{sampled}), and of the fp32 "
          f"rate ({fp32 / 1e9:.1f} GFLOP/s, the highest fp32 measurement)\n")
    print("| configuration | phase | ex/s | GFLOP/example | GFLOP/s | % of matmul rate (limit) | % of fp32 rate |")
    print("|---|---|---|---|---|---|---|")
    for phase in ("train", "eval"):
        for name, r in rows.items():
            n, s, f = r[f"{phase}_n"], r[f"{phase}_s"], r[f"{phase}_flops"]
            print(f"| {name} | {'training' if phase == 'train' else 'evaluation'} | {n / s:.2f} | {f / n / 1e9:.2f} | "
                  f"{f / s / 1e9:.1f} | {100 * f / s / peak:.1f} | {100 * f / s / fp32:.1f} |")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="t5-small shape, 4 steps, 32 evaluation rows, RTE only")
    p.add_argument("--shape", default=None, choices=["tiny", "t5-small", "t5-base"],
                   help="default: t5-base (quick: t5-small); tiny (d_model 32, 2 layers) is for tests")
    p.add_argument("--tasks", default=None, help="comma-separated, default rte_superglue,cb (quick: rte_superglue)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per configuration (default 8)")
    p.add_argument("--eval_rows", type=int, default=None, help="evaluation rows (default 64)")
    p.add_argument("--configs", default=None,
                   help=f"comma-separated subset of {ALL_CONFIGS} (default: all, but ours_bf16 only where bf16 "
                        "matrix products measure faster than fp32 here; quick: original,ours[,ours_bf16],peft); "
                        "'none': only --eval_compare")
    p.add_argument("--eval_compare", action="store_true",
                   help="also time evaluation before/after the one-pass change on a whole validation split")
    p.add_argument("--compare_task", default="rte_superglue", help="--eval_compare's task (all its validation rows)")
    p.add_argument("--compare_rows", type=int, default=0, help="--eval_compare's rows (default 0: all)")
    p.add_argument("--repeats", type=int, default=2, help="--eval_compare's alternating repetitions (default 2)")
    p.add_argument("--no_profile", action="store_true", help="skip the top-operators profile of `ours`")
    p.add_argument("--run_flops", default=None, metavar="RUN_DIR",
                   help="only count the FLOPs of a finished train.py run and report its MFU (see gpu_check.sh)")
    p.add_argument("--device", default="auto")
    p.add_argument("--rate_seconds", type=_positive_seconds, default=2.0,
                   help="seconds of each measurement of the matrix-product rates (the best product counts; shorter "
                        "is noisier: tests use 0.2)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (torch.set_num_threads; default 0: torch's choice). On a CPU shared with other "
                        "jobs, 1 avoids threads waiting for each other at every operator")
    p.add_argument("--data_dir", default=SHARED)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def resolve_configs(args, device, bf16_faster=False):
    """--configs (or its default for --quick) -> the configurations to time; an unknown name exits. The defaults
    include ours_bf16 where ``bf16_faster``: bf16 products measured faster than fp32 on this device."""
    if args.configs == "none":
        return []
    if args.configs:
        configs = args.configs.split(",")
    elif args.quick:
        configs = ["original", "ours"] + (["ours_bf16"] if bf16_faster else []) + ["peft"]
    else:
        configs = [c for c in ALL_CONFIGS if bf16_faster or c != "ours_bf16"]
    unknown = set(configs) - set(ALL_CONFIGS)
    if unknown:
        sys.exit(f"benchmark.py: error: unknown configuration(s) {sorted(unknown)}; valid: {', '.join(ALL_CONFIGS)}")
    return configs


def bench_task(task_name, configs, model, tokenizer, steps, eval_rows, device, rates, args):
    """Every configuration on one task (the fp32 and bf16 matmul rates sampled before each): -> the report's entry."""
    task, train, val = load_data(task_name, tokenizer, BATCH * steps, eval_rows, args.data_dir)
    mean_len = np.mean([len(s) for s in train.source_ids])
    rows, wrappers = {}, {}
    for name in configs:
        sample_rates(device, rates, args.rate_seconds)  # the rates drift on a VM: sampled before every configuration
        started = time.perf_counter()
        if name == "peft":
            try:
                import peft  # noqa: F401
            except ImportError:
                print("# peft is not installed (pip install peft): skipping its row")
                continue
            rows[name] = run_peft(model, tokenizer, task, train, val, steps, device)
        else:
            rows[name], wrappers[name] = run_ours(name, model, tokenizer, task, train, val, steps, device)
        print(f"# {task_name} {name}: {time.perf_counter() - started:.0f} s", flush=True)
    peak, _, fp32, _ = rate_summary(rates)
    print_tables(task_name, rows, rates, mean_len, len(train))
    entry = {"task": task_name, "steps": steps, "mean_source_len": float(mean_len), "matmul_flops_per_s": peak,
             "fp32_matmul_flops_per_s": fp32,
             "rows": {k: {**{m: v[m] for m in v if m != "losses"}, "train_ex_s": v["train_n"] / v["train_s"],
                          "eval_ex_s": v["eval_n"] / v["eval_s"],
                          "train_flops_per_s": v["train_flops"] / v["train_s"],
                          "eval_flops_per_s": v["eval_flops"] / v["eval_s"],
                          "train_util": v["train_flops"] / v["train_s"] / peak,
                          "eval_util": v["eval_flops"] / v["eval_s"] / peak,
                          "train_util_fp32": v["train_flops"] / v["train_s"] / fp32,
                          "eval_util_fp32": v["eval_flops"] / v["eval_s"] / fp32} for k, v in rows.items()}}
    if wrappers.get("ours") is not None and not args.no_profile:
        profiles = profile_ours(wrappers, train, val, task, device)
        for what, ops in profiles.items():
            print(f"\n{what}: top operators by self {'GPU' if device.type == 'cuda' else 'CPU'} time\n")
            print("| operator | self ms | % |")
            print("|---|---|---|")
            for op, ms, pct in ops:
                print(f"| {op} | {ms:.0f} | {pct:.1f} |")
        entry["profile"] = {k: [{"op": o, "self_ms": m, "percent": q} for o, m, q in v] for k, v in profiles.items()}
    return entry


def print_eval_compare(cmp):
    print(f"\n## evaluation before/after: {cmp['task']}, {cmp['rows']} validation rows, evaluation batch "
          f"{EVAL_BATCH}, {cmp['repeats']} alternating repetitions\n")
    print("| evaluation | batches | encoder passes | seconds (each repetition) | median s | ex/s | GFLOP |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("before", "before: 2 encoder passes per batch, 32-row batches"),
                        ("after", "after: 1 encoder pass per row, token-sized batches")):
        secs = ", ".join(f"{s:.1f}" for s in cmp["seconds"][name])
        print(f"| {label} | {cmp['batches'][name]} | {cmp['encoder_passes'][name]} | {secs} | "
              f"{cmp['median_s'][name]:.1f} | {cmp['rows'] / cmp['median_s'][name]:.2f} | "
              f"{cmp['flops'][name] / 1e9:.0f} |")
    print(f"\nspeed-up (median before / median after): **{cmp['ratio']:.2f}×** (per pair: "
          f"{', '.join(f'{r:.2f}' for r in cmp['pair_ratios'])}); FLOPs before / after: {cmp['flop_ratio']:.2f}×; "
          f"same predictions: {cmp['same_predictions']}; loss relative difference {cmp['loss_rel_diff']:.1e}")


def write_json(path, obj):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.run_flops:
        out = run_flops(args.run_flops, args.device, args.rate_seconds)
        print(json.dumps(out, indent=2))
        write_json(args.json, out)
        return
    shape = args.shape or ("t5-small" if args.quick else "t5-base")
    tasks = (args.tasks or ("rte_superglue" if args.quick else "rte_superglue,cb")).split(",")
    steps = args.steps or (4 if args.quick else 8)
    eval_rows = args.eval_rows or (32 if args.quick else 64)
    device = tu.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = sample_rates(device, {}, args.rate_seconds)
    peak, peak_name, fp32, _ = rate_summary(rates)
    configs = resolve_configs(args, device, bf16_faster=rates["bf16"][0] > rates["fp32"][0])
    vocab = os.path.join(args.data_dir, "t5_vocab")
    if not os.path.isdir(vocab):
        sys.exit(f"benchmark.py: error: {vocab} not found: pass --data_dir holding glue/, super_glue/ and t5_vocab/")

    from transformers import T5Tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = T5Tokenizer.from_pretrained(vocab)
    model = build_model(shape, vocab, device)
    n_params = sum(prm.numel() for prm in model.parameters())
    dname = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    command = f"python scripts/benchmark.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    print(f"# benchmark: {shape} shape ({n_params / 1e6:.0f} M parameters, random weights), device {device} ({dname}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"# matrix-product rates measured ({'8192' if device.type == 'cuda' else '2048'}² products): fp32 "
          f"{fp32 / 1e9:.1f} GFLOP/s, bf16 {rates['bf16'][0] / 1e9:.1f} GFLOP/s; the machine's limit: {peak_name}"
          + ("" if "ours_bf16" in configs or args.configs else " (bf16 not faster here: ours_bf16 left out)"))
    print(f"# batch {BATCH}, {steps} timed steps, {eval_rows} evaluation rows, in steady state: every training batch "
          f"and the whole evaluation run once untimed first (every shape warmed); command: {command}")
    report = {"command": command, "shape": shape, "device": str(device), "device_name": dname,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "matmul_dtype": peak_name,
              "matmul_flops_per_s": peak, "fp32_matmul_flops_per_s": fp32,
              "load_average_start": os.getloadavg()[0], "tasks": []}
    for task_name in tasks if configs else []:
        report["tasks"].append(bench_task(task_name, configs, model, tokenizer, steps, eval_rows, device, rates, args))
    if args.eval_compare:
        report["eval_compare"] = eval_compare(model, tokenizer, args.compare_task, args.data_dir, device,
                                              args.repeats, args.compare_rows)
        print_eval_compare(report["eval_compare"])
    report["load_average_end"] = os.getloadavg()[0]
    report["matmul_flops_per_s"], _, report["fp32_matmul_flops_per_s"], samples = rate_summary(rates)
    report["matmul_flops_per_s_samples"] = samples  # the limit (the higher dtype) at each sampling
    report["matmul_samples"] = rates
    print(f"\n# load average (1 min) at start {report['load_average_start']:.1f}, at end "
          f"{report['load_average_end']:.1f} on {os.cpu_count()} CPUs")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
