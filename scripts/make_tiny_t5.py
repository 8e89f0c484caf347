"""Write a randomly initialized T5 with the real T5 tokenizer to a directory, for offline smoke tests and speed work.

    python scripts/make_tiny_t5.py tiny_t5                       # 1.07 M parameters (d_model 32), ~4 MB
    python scripts/make_tiny_t5.py t5_base_random --shape t5-base  # real t5-base shape, random weights, ~900 MB

The vocabulary comes from --vocab_dir (default ../shared/data/t5_vocab beside the project root): a folder with
the real T5 `spiece.model` and/or `tokenizer.json`. The weights are random, so predictions are nonsense; the
tokenization, shapes and speed are those of the real model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VOCAB = os.path.join(os.path.dirname(ROOT), "shared", "data", "t5_vocab")

# A 2+2-layer T5 of width 32 with the full 32,128-row vocabulary (the golden outputs' model has this shape).
TINY = dict(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
            feed_forward_proj="relu", layer_norm_epsilon=1e-6, initializer_factor=1.0, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--shape", default="tiny", choices=["tiny", "t5-small", "t5-base"],
                   help="tiny (d_model 32), or the real t5-small / t5-base architecture")
    p.add_argument("--vocab_dir", default=DEFAULT_VOCAB, help="folder with the real T5 spiece.model/tokenizer.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=None, help="override dropout_rate (tiny default 0.1)")
    args = p.parse_args(argv)

    if not any(os.path.isfile(os.path.join(args.vocab_dir, f)) for f in ("spiece.model", "tokenizer.json")):
        sys.exit(f"make_tiny_t5.py: error: no spiece.model or tokenizer.json in {args.vocab_dir}; "
                 f"pass --vocab_dir pointing at the T5 vocabulary")
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    if args.shape == "tiny":
        config = T5Config(**TINY)
    else:
        base_file = os.path.join(args.vocab_dir, "t5-base-config.json")
        if args.shape == "t5-base" and os.path.isfile(base_file):
            with open(base_file) as f:
                config = T5Config(**{k: v for k, v in json.load(f).items() if not k.startswith("_")})
        else:
            small = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8)
            base = dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12)
            config = T5Config(**{**TINY, "dropout_rate": 0.1, **(small if args.shape == "t5-small" else base)})
    if args.dropout is not None:
        config.dropout_rate = args.dropout
    torch.manual_seed(args.seed)
    model = T5ForConditionalGeneration(config)
    tokenizer = T5Tokenizer.from_pretrained(args.vocab_dir, model_max_length=512)
    os.makedirs(args.out_dir, exist_ok=True)
    model.save_pretrained(args.out_dir)
    tokenizer.save_pretrained(args.out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.shape} T5 ({n / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}) to {args.out_dir}")


if __name__ == "__main__":
    main()
