"""Training and evaluation throughput, side by side in one process, on the same data and the same model.

    python scripts/benchmark.py --quick                  # t5-small shape, a few steps: ~2 minutes on 2 CPU cores
    python scripts/benchmark.py                          # t5-base shape (the paper's), RTE and CB
    python scripts/benchmark.py --device cuda --configs original,ours,ours_bf16,peft

The model is randomly initialized with the real T5 architecture and vocabulary (speed does not depend on weight
values). Configurations (all Residual PT, MLP1 with a 10-token prompt, batch 8, the frozen model in train mode as
the original; PEFT is plain prompt tuning, for which it has no residual MLP):
  original      our implementation behaving like the original: every batch padded to 512, training-set `generate`
                on every batch (it did so for the first 250), fp32, evaluation batch = training batch
  ours          the defaults: each batch padded to its longest row, no training-set generate, evaluation sorted by
                length in batches of 32; same math (tests/test_speed.py checks the losses)
  ours_bf16     + --precision bf16 (changes numbers)
  ours_grouped  + --group_by_length 1 (changes the data order)
  peft          Hugging Face PEFT prompt tuning (PromptTuningConfig, num_transformer_submodules=1) in a plain torch
                loop with torch.optim.AdamW, fed the same dynamically padded batches; needs `pip install peft`
Reported: training examples/s (optimizer steps after one warm-up step), evaluation examples/s (generate + loss),
peak memory above the idle process (CPU: resident set size sampled every 2 ms; CUDA: max_memory_allocated),
and ratios to `original`. No number here is asserted anywhere: this is a measurement.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data_utils  # noqa: E402
import models  # noqa: E402
import train_utils as tu  # noqa: E402
from prompts import SoftPrompt, init_prompt  # noqa: E402
from res_mlp import build_reparam  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
ALL_CONFIGS = ("original", "ours", "ours_bf16", "ours_grouped", "peft")


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


def load_data(task_name, tokenizer, n_train, n_eval, data_dir):
    task = data_utils.get_task(task_name)
    splits = data_utils.build_splits(task, data_dir)
    train = models.PromptT5.encode_split(task, splits["train"][:n_train], tokenizer, 512)
    val = models.PromptT5.encode_split(task, splits["val"][:n_eval], tokenizer, 512)
    return task, train, val


def run_ours(name, model, tokenizer, task, train, val, steps, device, seed=0):
    """One configuration of our trainer; returns (train ex/s, eval ex/s, peak bytes, losses)."""
    original = name == "original"
    torch.manual_seed(seed)
    hidden = model.get_input_embeddings().weight.shape[1]
    prompt, _ = init_prompt("vocab", model.get_input_embeddings().weight, 10, seed)
    wrapper = models.PromptT5(model, tokenizer, SoftPrompt(prompt, build_reparam("MLP1", hidden, 10)), 512,
                              "bf16" if name == "ours_bf16" else "fp32").to(device)
    optimizer = tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)
    pad_to = 512 if original else None
    order = tu.length_grouped_order(train, 8, 0) if name == "ours_grouped" else None
    batches = list(tu.make_batches(train, 8, task.target_len, pad_to, order))[:steps + 1]
    wrapper.train()
    losses = []
    with PeakMemory(device) as mem:
        for i, batch in enumerate(batches):
            if i == 1:  # the first step warms up allocators and kernels
                sync(device)
                t0 = time.perf_counter()
            batch = {k: v.to(device) for k, v in batch.items() if k != "rows"}
            prompt = wrapper.projected_prompt()
            if original:  # the original's training accuracy: generate on the batch (first 250 batches)
                with torch.no_grad():
                    out = wrapper.generate(batch["source_ids"], task.target_len, prompt)
                tokenizer.batch_decode(out.tolist(), skip_special_tokens=False)
            losses.append(tu.train_step(wrapper, optimizer, batch, prompt))
        sync(device)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tu.evaluate(wrapper, val, task, batch_size=8 if original else 32, pad_to=pad_to, loss_batch_size=8)
        sync(device)
        eval_s = time.perf_counter() - t0
    n_train = sum(b["source_ids"].shape[0] for b in batches[1:])
    return n_train / train_s, len(val) / eval_s, mem.bytes, [float(l) for l in losses]


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
    batches = list(tu.make_batches(train, 8, task.target_len))[:steps + 1]
    peft_model.train()
    with PeakMemory(device) as mem:
        for i, batch in enumerate(batches):
            if i == 1:
                sync(device)
                t0 = time.perf_counter()
            src, tgt = batch["source_ids"].to(device), batch["target_ids"].to(device)
            loss = peft_model(input_ids=src, attention_mask=(src != 0).long(),
                              labels=tgt.masked_fill(tgt == 0, -100), decoder_attention_mask=(tgt != 0).long()).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        train_s = time.perf_counter() - t0
        peft_model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            order = sorted(range(len(val)), key=lambda i: -len(val.source_ids[i]))
            for batch in tu.make_batches(val, 32, task.target_len, None, order):
                src, tgt = batch["source_ids"].to(device), batch["target_ids"].to(device)
                out = peft_model.generate(input_ids=src, attention_mask=(src != 0).long(),
                                          max_new_tokens=task.target_len - 1, do_sample=False, num_beams=1)
                tokenizer.batch_decode(out.tolist(), skip_special_tokens=False)
                peft_model(input_ids=src, attention_mask=(src != 0).long(), labels=tgt.masked_fill(tgt == 0, -100))
        sync(device)
        eval_s = time.perf_counter() - t0
    del peft_model, optimizer
    n_train = sum(b["source_ids"].shape[0] for b in batches[1:])
    return n_train / train_s, len(val) / eval_s, mem.bytes, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="t5-small shape, 4 steps, 32 evaluation rows, RTE only")
    p.add_argument("--shape", default=None, choices=["tiny", "t5-small", "t5-base"],
                   help="default: t5-base (quick: t5-small); tiny (d_model 32, 2 layers) is for tests")
    p.add_argument("--tasks", default=None, help="comma-separated, default rte_superglue,cb (quick: rte_superglue)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per configuration (default 8)")
    p.add_argument("--eval_rows", type=int, default=None, help="evaluation rows (default 64)")
    p.add_argument("--configs", default=None,
                   help=f"comma-separated subset of {ALL_CONFIGS} (default: all on GPUs; on CPUs all but ours_bf16, "
                        "which is slower than fp32 on CPUs without bf16 matrix units; quick: original,ours,peft)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data_dir", default=SHARED)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    shape = args.shape or ("t5-small" if args.quick else "t5-base")
    tasks = (args.tasks or ("rte_superglue" if args.quick else "rte_superglue,cb")).split(",")
    steps = args.steps or (4 if args.quick else 8)
    eval_rows = args.eval_rows or (32 if args.quick else 64)
    device = tu.resolve_device(args.device)
    if args.configs:
        configs = args.configs.split(",")
    elif args.quick:
        configs = ["original", "ours", "peft"]
    else:
        configs = [c for c in ALL_CONFIGS if device.type == "cuda" or c != "ours_bf16"]
    unknown = set(configs) - set(ALL_CONFIGS)
    if unknown:
        sys.exit(f"benchmark.py: error: unknown configuration(s) {sorted(unknown)}; valid: {', '.join(ALL_CONFIGS)}")
    vocab = os.path.join(args.data_dir, "t5_vocab")
    if not os.path.isdir(vocab):
        sys.exit(f"benchmark.py: error: {vocab} not found: pass --data_dir holding glue/, super_glue/ and t5_vocab/")

    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = T5Tokenizer.from_pretrained(vocab)
    if shape == "t5-base":
        with open(os.path.join(vocab, "t5-base-config.json")) as f:
            config = T5Config(**json.load(f))
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
    n_params = sum(prm.numel() for prm in model.parameters())
    print(f"# benchmark: {shape} shape ({n_params / 1e6:.0f} M parameters, random weights), device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"# batch 8, {steps} timed steps after 1 warm-up, {eval_rows} evaluation rows; "
          f"command: python scripts/benchmark.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    results = []
    for task_name in tasks:
        task, train, val = load_data(task_name, tokenizer, 8 * (steps + 1), eval_rows, args.data_dir)
        mean_len = np.mean([len(s) for s in train.source_ids])
        rows = {}
        for name in configs:
            started = time.perf_counter()
            if name == "peft":
                try:
                    import peft  # noqa: F401
                except ImportError:
                    print("# peft is not installed (pip install peft): skipping its row")
                    continue
                rows[name] = run_peft(model, tokenizer, task, train, val, steps, device)
            else:
                rows[name] = run_ours(name, model, tokenizer, task, train, val, steps, device)
            print(f"# {task_name} {name}: {time.perf_counter() - started:.0f} s", flush=True)
        base = rows.get("original")
        print(f"\n## {task_name} (mean source length {mean_len:.0f} tokens, {len(train)} training rows)\n")
        print("| configuration | train ex/s | eval ex/s | peak memory MB | train × | eval × | memory × |")
        print("|---|---|---|---|---|---|---|")
        for name, (tr, ev, mem, _) in rows.items():
            ratios = [f"{tr / base[0]:.2f}", f"{ev / base[1]:.2f}",
                      f"{mem / base[2]:.2f}" if base[2] > 0 else "-"] if base else ["-"] * 3
            print(f"| {name} | {tr:.2f} | {ev:.2f} | {mem / 2**20:.0f} | " + " | ".join(ratios) + " |")
        if "ours" in rows and "peft" in rows:
            print(f"\nours / peft: train {rows['ours'][0] / rows['peft'][0]:.2f}×, "
                  f"eval {rows['ours'][1] / rows['peft'][1]:.2f}×")
        results.append({"task": task_name, "shape": shape, "device": str(device), "steps": steps,
                        "rows": {k: {"train_ex_s": v[0], "eval_ex_s": v[1], "peak_bytes": v[2]} for k, v in rows.items()}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
