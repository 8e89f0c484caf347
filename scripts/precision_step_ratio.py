"""Training-step time of --precision fp32 / bf16 configurations on one fixed shape, alternating in one process.

    python scripts/precision_step_ratio.py                       # t5-small shape, batch 8 x 80 tokens, CPU time
    python scripts/precision_step_ratio.py --clock wall --threads 2 --length 120

Configurations (a random frozen t5-small-shaped T5, Residual PT MLP1 with 10 tokens, dropout on, as train.py):
  fp32                the default
  bf16_autocast       fp32 weights under bf16 autocast (what --precision bf16 did before the weights were stored low;
                      what it still does for a model whose weights train)
  bf16_weights        --precision bf16: the frozen weights stored in bf16, training attention in bf16 (eager)
  bf16_weights_sdpa   the same with transformers' SDPA attention in training (fp32 inside, on CPUs, with dropout)
Every configuration is warmed with 2 steps on the shape, then the rounds alternate them. ``--clock cpu`` (default)
times with the process's CPU time: on a machine shared with other jobs it is far steadier than the wall clock,
and with one thread it counts the work alone. Prints seconds per step and each configuration's speed-up on fp32;
nothing here is asserted anywhere.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_utils as tu  # noqa: E402
from residual_prompts import ResidualPromptConfig, get_residual_prompt_model  # noqa: E402


def configurations(base):
    def wrap(precision, autocast=False, attn=None):
        torch.manual_seed(0)
        config = ResidualPromptConfig(num_virtual_tokens=10, reparameterization="MLP1", init="vocab", seed=0)
        wrapper = get_residual_prompt_model(copy.deepcopy(base), config, None,
                                            precision="fp32" if autocast else precision)
        if autocast:  # fp32 weights, bf16 autocast: the path of a model whose weights train
            wrapper.precision = precision
        if attn:
            wrapper.model.set_attn_implementation(attn)
        return wrapper.train(), tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)

    return {"fp32": wrap("fp32"), "bf16_autocast": wrap("bf16", autocast=True), "bf16_weights": wrap("bf16"),
            "bf16_weights_sdpa": wrap("bf16", attn="sdpa")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--length", type=int, default=80, help="source tokens per row (default 80)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = p.parse_args(argv)
    if args.threads < 1 or args.length < 1 or args.rounds < 1:
        p.error("--threads, --length and --rounds must be >= 1")
    from transformers import T5Config, T5ForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                                               num_heads=8, dropout_rate=0.1, decoder_start_token_id=0))
    base.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    batch = {"source_ids": torch.randint(3, 32000, (8, args.length), generator=g),
             "target_ids": torch.randint(3, 32000, (8, 3), generator=g)}
    confs = configurations(base)
    for wrapper, optimizer in confs.values():
        for _ in range(2):
            tu.train_step(wrapper, optimizer, batch)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = {name: [] for name in confs}
    for _ in range(args.rounds):
        for name, (wrapper, optimizer) in confs.items():
            t0 = clock()
            tu.train_step(wrapper, optimizer, batch)
            times[name].append(clock() - t0)
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    print(f"# {cpu}, {args.threads} thread(s), {args.clock} time, batch 8 x {args.length} tokens (+10 prompt), "
          f"load average {os.getloadavg()[0]:.1f}")
    ref = statistics.median(times["fp32"])
    for name, t in times.items():
        print(f"{name:18s} s/step {' '.join(f'{x:.3f}' for x in t)}  median {statistics.median(t):.3f}  "
              f"speed-up on fp32 {ref / statistics.median(t):.2f}x")


if __name__ == "__main__":
    main()
