#!/usr/bin/env bash
# Regenerate every table and figure of docs/RESULTS.md from the committed run records (docs/results/runs: each run's
# args.json and results.json, copied there by docs/results/collect.sh). Run from anywhere; writes docs/results/*.md
# (the tables as RESULTS.md shows them), *.csv and the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results/runs T=docs/results
MT() { python scripts/make_table.py "$@" 2>/dev/null; }

# 1. Screen: a linear head on the frozen mean-pooled encoder, no prompt, every task; against a constant prediction
MT $R/*-head_only-* --metric test --baseline --out $T/screen_test > $T/screen_test.md
MT $R/*-head_only-* --metric best_val > $T/screen_val.md

# 2. Learning-rate grid (tasks with signal; 3 seeds; the head's lr fixed at 0.01)
LR=$(ls -d $R/{sst2,stsb,cola}-{pt,residual_pt}-len10-lr*-seed[123] 2>/dev/null)
MT $LR --metric best_val --group_by lr --spread lr > $T/lr_val.md     # "best lr": each method's chosen lr per task
MT $LR --metric test --group_by lr --spread lr --out $T/lr_test > $T/lr_test.md
python scripts/plot_curves.py $LR --metric test --out $T/lr > /dev/null 2>&1   # score_vs_lr.png

# 3. Main comparison: each method at its chosen lr (lr_val.md's best lr; PT + MLP1 without the skip at Residual
#    PT's), 5 seeds; the head-only runs of the same tasks as a reference row
declare -A LR_PT=([sst2]=0.03 [stsb]=0.01 [cola]=0.1) LR_RES=([sst2]=0.003 [stsb]=0.03 [cola]=0.1)
MAIN=""
for t in sst2 stsb cola; do
  MAIN+=" $(ls -d $R/$t-pt-len10-lr${LR_PT[$t]}-seed* $R/$t-{mlp_nores,residual_pt}-len10-lr${LR_RES[$t]}-seed* \
            $R/$t-head_only-* 2>/dev/null)"
done
MT $MAIN --metric test --baseline --out $T/main_test > $T/main_test.md
MT $MAIN --metric best_val > $T/main_val.md
MT $MAIN --metric test --paired "Residual PT (MLP1)" PT --out $T/paired_res_pt > $T/paired_res_pt.md
MT $MAIN --metric test --paired "Residual PT (MLP1)" "PT + MLP1 (no residual)" > $T/paired_res_nores.md
MT $MAIN --metric test --paired "PT" "Head only" > $T/paired_pt_head.md
MT $MAIN --metric norm_ratio > $T/norm_ratio.md
MT $MAIN --metric branch_ratio > $T/branch_ratio.md
PROMPT_MAIN=$(for d in $MAIN; do case $d in *head_only*) ;; *) echo $d;; esac; done)
python scripts/convergence.py $PROMPT_MAIN --epochs 1,2,3,5,10 > $T/convergence.md 2>/dev/null
python scripts/plot_curves.py $PROMPT_MAIN --out $T/curves > /dev/null 2>&1      # val_curves.png

# 4. Prompt length on sst2 (2, 10, 64 tokens), 3 seeds, the sst2 lrs above
LEN=$(ls -d $R/sst2-pt-len{2,10,64}-lr${LR_PT[sst2]}-seed[123] \
            $R/sst2-{mlp_nores,residual_pt}-len{2,10,64}-lr${LR_RES[sst2]}-seed[123] 2>/dev/null)
MT $LEN --metric test --group_by prefix_len > $T/len_test.md
MT $LEN --metric test --group_by prefix_len --paired "Residual PT (MLP1)" PT > $T/len_paired.md
MT $LEN --metric best_val --group_by prefix_len > $T/len_val.md

# 5. Cost: wall time per run
MT $R --metric wall_time_s > $T/wall_time.md

# 6. Put each table into docs/RESULTS.md, between its <!-- table: NAME --> and <!-- end --> markers
python - <<'PY'
import pathlib, re
doc = pathlib.Path("docs/RESULTS.md")
text = doc.read_text()
def fill(m):
    table = pathlib.Path(f"docs/results/{m.group(1)}.md").read_text().strip()
    return f"<!-- table: {m.group(1)} -->\n{table}\n<!-- end -->"
new, n = re.subn(r"<!-- table: (\w+) -->\n.*?<!-- end -->", fill, text, flags=re.S)
doc.write_text(new)
print(f"docs/RESULTS.md: {n} tables filled")
PY
