"""Make a BoolQ training set where there is none: split the official validation file into train + validation.

This workplace's SuperGLUE download has BoolQ's val.jsonl (3270 rows) but no train.jsonl. The MiniLM experiment
(docs/RESULTS.md) splits the validation rows, shuffled with a fixed seed, into disjoint halves and writes them as
`OUT/BoolQ/train.jsonl` and `OUT/BoolQ/val.jsonl`; `train.py --task boolq --data_dir OUT` then reads them (a
--data_dir may be the SuperGLUE folder itself). With `--get_test_subset 1` the new validation half is split
again into validation and test, so training, model selection and the reported score never share a row.
Scores on this split are not comparable with published BoolQ validation scores.

    python scripts/split_boolq.py --data_dir ../shared/data --out runs/boolq_split
"""
import argparse
import json
import os
import sys

import numpy as np


def split_rows(lines: list[str], train_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Disjoint (train, validation) lists of the given lines, shuffled by RandomState(seed)."""
    order = np.random.RandomState(seed).permutation(len(lines))
    n_train = int(round(train_fraction * len(lines)))
    return [lines[i] for i in sorted(order[:n_train])], [lines[i] for i in sorted(order[n_train:])]


def find_val(data_dir: str) -> str:
    for path in (os.path.join(data_dir, "super_glue", "BoolQ", "val.jsonl"), os.path.join(data_dir, "BoolQ", "val.jsonl")):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no BoolQ/val.jsonl under {data_dir}: point --data_dir at the SuperGLUE download")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="folder holding super_glue/BoolQ/val.jsonl (or BoolQ/val.jsonl)")
    p.add_argument("--out", required=True, help="folder to write BoolQ/train.jsonl and BoolQ/val.jsonl into")
    p.add_argument("--train_fraction", type=float, default=0.5, help="share of the rows that become training rows")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier split in --out")
    args = p.parse_args(argv)
    if not 0.0 < args.train_fraction < 1.0:
        p.exit(2, f"split_boolq.py: error: --train_fraction {args.train_fraction} must lie strictly between 0 and 1\n")
    try:
        src = find_val(args.data_dir)
    except FileNotFoundError as e:
        p.exit(2, f"split_boolq.py: error: {e}\n")
    out_dir = os.path.join(args.out, "BoolQ")
    targets = [os.path.join(out_dir, f) for f in ("train.jsonl", "val.jsonl")]
    if any(os.path.exists(t) for t in targets) and not args.overwrite:
        p.exit(2, f"split_boolq.py: error: {out_dir} already holds a split: pass --overwrite to replace it\n")
    with open(src, encoding="utf-8") as f:
        lines = [ln if ln.endswith("\n") else ln + "\n" for ln in f if ln.strip()]
    for n, ln in enumerate(lines, 1):
        try:
            json.loads(ln)
        except json.JSONDecodeError as e:
            p.exit(2, f"split_boolq.py: error: {src} line {n} is not JSON ({e.msg}): re-download BoolQ\n")
    train, val = split_rows(lines, args.train_fraction, args.seed)
    os.makedirs(out_dir, exist_ok=True)
    for path, part in zip(targets, (train, val)):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(part)
        os.replace(tmp, path)
    print(f"{src}: {len(lines)} rows -> {targets[0]} ({len(train)}), {targets[1]} ({len(val)}); seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
