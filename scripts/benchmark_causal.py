"""Evaluation of a decoder-only LM with and without the shared KV cache (docs/PERFORMANCE.md):

    python scripts/benchmark_causal.py                                  # llama shape, RTE validation, 2 repeats
    python scripts/benchmark_causal.py --arch gpt2 --task cb --rows 56 --threads 1

A random model of the named architecture and shape (no weights needed: the work does not depend on them) with the
real T5 vocabulary (../shared/data/t5_vocab) evaluates the task's validation rows through train_utils.evaluate:
"shared" is PromptedCausalLM.evaluate_batch (prompt + source once, its KV cache read by the greedy generation and by
the target's loss), "two-pass" is decode then token_losses (each runs the prompt and source). The two alternate,
--repeats times each; the predictions must be identical (else exit 1) and the losses are printed.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(arch, tokenizer, layers, width, seed=0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    v, eos = len(tokenizer), tokenizer.eos_token_id
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=width, n_layer=layers, n_head=width // 64,
                                          n_positions=1024, bos_token_id=eos, eos_token_id=eos))
    return LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=width, intermediate_size=4 * width,
                                        num_hidden_layers=layers, num_attention_heads=width // 64,
                                        max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=eos, bos_token_id=None))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="llama", choices=["llama", "gpt2"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--task", default="rte_superglue")
    p.add_argument("--rows", type=int, default=128, help="validation rows (0: all)")
    p.add_argument("--prefix_len", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data_dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    a = p.parse_args(argv)
    vocab = os.path.join(a.data_dir, "t5_vocab")
    if not os.path.isdir(vocab):
        print(f"benchmark_causal.py: error: {vocab} not found: pass --data_dir the folder with t5_vocab/ and the "
              f"task's data", file=sys.stderr)
        return 2

    import torch
    from transformers import T5Tokenizer

    import data_utils
    import train_utils as tu
    from residual_prompts import ResidualPromptConfig, get_residual_prompt_model

    if a.threads:
        torch.set_num_threads(a.threads)
    tok = T5Tokenizer.from_pretrained(vocab, model_max_length=1024)
    task = data_utils.get_task(a.task)
    rows = data_utils.load_split(task, "validation", a.data_dir)
    rows = rows[:a.rows] if a.rows else rows
    model = build(a.arch, tok, a.layers, a.width)
    model.requires_grad_(False)
    rp = get_residual_prompt_model(model, ResidualPromptConfig(num_virtual_tokens=a.prefix_len), tok,
                                   seq_len=512).eval()
    split = rp.encode_split(task, rows, tok, 512)
    mean_len = sum(map(len, split.source_ids)) / len(split)
    print(f"# {a.arch} {a.layers} layers x {a.width}, vocab {len(tok)}, {task.name} {len(split)} rows (mean source "
          f"{mean_len:.0f} tokens, target budget {task.target_len}), P {a.prefix_len}, batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")

    def two_pass(batch, prompt, max_length, synced=False, chunks=None):
        return (*rp.decode(batch, prompt, max_length, synced), *rp.token_losses(batch, prompt))

    shared_fn, times, results = rp.evaluate_batch, {"shared": [], "two-pass": []}, {}
    for _ in range(a.repeats):
        for name, fn in (("shared", shared_fn), ("two-pass", two_pass)):
            rp.evaluate_batch = fn
            t0 = time.perf_counter()
            results[name] = tu.evaluate(rp, split, task, batch_size=a.batch_size)
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    same = results["shared"]["predictions"] == results["two-pass"]["predictions"]
    best = {k: min(v) for k, v in times.items()}
    print(f"best of {a.repeats}: shared {best['shared']:.2f} s, two-pass {best['two-pass']:.2f} s, speed-up "
          f"{best['two-pass'] / best['shared']:.2f}x; predictions identical: {same}; loss "
          f"{results['shared']['loss']:.6f} vs {results['two-pass']['loss']:.6f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
