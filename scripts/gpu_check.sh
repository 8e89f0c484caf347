#!/usr/bin/env bash
# One-command GPU acceptance check: self-contained, offline, under 8 minutes on one GPU.
#
#   bash scripts/gpu_check.sh                      # on the GPU: t5-base shape, 20-epoch CB runs
#   bash scripts/gpu_check.sh --device cpu --quick # anywhere: tiny shape, 1 epoch, a minute or two (tests skip)
#
# 1. builds a random T5 of the real t5-base shape (scripts/make_tiny_t5.py --shape t5-base; --quick: tiny) with
#    the real T5 vocabulary, and reads the real data, both from ../shared/data (RPT_DATA_DIR overrides);
# 2. (a) runs the tests marked gpu (tests/test_gpu.py: CUDA fp32 = CPU within the faithfulness tolerances, bf16
#    and fp16 runs with the frozen weights stored in that dtype finite and close to fp32, bf16 weights taking half
#    the memory, --compile and --tf32 run), with RPT_GPU_MODEL = that model;
# 3. (b) times full CB runs of train.py (20 epochs; --quick: 1) in fp32 and, on a GPU, in bf16 (the frozen weights
#    stored in bf16: --precision bf16), and counts their FLOPs (scripts/benchmark.py --run_flops) for the MFU
#    against the matrix-product rate measured on the device;
# 4. runs scripts/benchmark.py at that shape: ex/s, FLOP/s and utilization (of the machine's limit and of fp32) of
#    original / ours / ours_bf16 (bf16 weights) / peft, training and evaluation in steady state, the top
#    operators, and evaluation before/after the one-pass change;
# 5. (c) writes every figure to one JSON: $OUT/gpu_check.json (and the step logs to $OUT/gpu_check_logs/) when OUT
#    is set, else ./gpu_check.json. The work folder (in $TMPDIR) is removed at the end; GPU_CHECK_KEEP=1 keeps it.
# Every step has a time limit and the later, optional steps are skipped when the time budget is spent; the JSON
# says what ran, what passed and how long each step took. Exit status 0 when every step that ran succeeded.
set -u
DEVICE=cuda
QUICK=0
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}  # after this many seconds the remaining optional steps are skipped
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument $1 (valid: --device DEV, --quick)" >&2; exit 2 ;;
  esac
done

START_DIR=$PWD
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python}
DATA=${RPT_DATA_DIR:-$(dirname "$ROOT")/shared/data}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
RESULT=${OUT:+$OUT/gpu_check.json}
RESULT=${RESULT:-$START_DIR/gpu_check.json}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS="$WORK/steps.tsv"
: > "$STEPS"
finish() {  # the step logs go beside the JSON (small); the work folder (the model: ~900 MB at t5-base) is removed
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/gpu_check_logs" && cp "$WORK"/*.log "$WORK"/*.json "$OUT/gpu_check_logs/" 2>/dev/null; fi
  [ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap finish EXIT

if [ ! -d "$DATA/t5_vocab" ] || [ ! -d "$DATA/super_glue" ]; then
  echo "gpu_check.sh: error: $DATA has no t5_vocab/ or super_glue/: set RPT_DATA_DIR to the shared data folder" >&2
  exit 2
fi
if [ "$QUICK" = 1 ]; then
  SHAPE=tiny; EPOCHS=1; RATE=(--rate_seconds 0.2)  # the matrix-product rate: short samples (the timings mean nothing)
  BENCH=(--shape tiny --steps 2 --eval_rows 8 --tasks cb --configs original,ours --eval_compare --compare_rows 16
         --repeats 1 --rate_seconds 0.2)
else
  SHAPE=t5-base; EPOCHS=20; RATE=()
  BENCH=(--shape t5-base --tasks rte_superglue --configs original,ours,ours_bf16,peft --eval_compare --repeats 2)
fi
[ "$DEVICE" = cpu ] && PRECISIONS=(fp32) || PRECISIONS=(fp32 bf16)

# step NAME LIMIT_S [optional] -- COMMAND...: runs COMMAND under a time limit, logs to $WORK/NAME.log, records
# (name, exit status, seconds) in steps.tsv; an optional step is skipped once the budget is spent.
step() {
  local name=$1 limit=$2 optional=$3; shift 4
  if [ "$optional" = optional ] && [ "$SECONDS" -ge "$BUDGET_S" ]; then
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
    echo "== $name: skipped (time budget of ${BUDGET_S} s spent)"
    return 0
  fi
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
  tail -n 4 "$WORK/$name.log" | sed 's/^/   /'
  echo "   -> exit $rc in $((SECONDS - t0)) s"
  return 0
}

MODEL="$WORK/model_$SHAPE"
step make_model 180 required -- "$PY" scripts/make_tiny_t5.py "$MODEL" --shape "$SHAPE" --vocab_dir "$DATA/t5_vocab"

RPT_GPU_MODEL="$MODEL" RPT_SHARED="$(dirname "$DATA")" \
  step gpu_tests 300 required -- "$PY" -m pytest -q -rs -n 0 -m gpu tests/test_gpu.py --junitxml "$WORK/gpu_tests.xml"

for prec in "${PRECISIONS[@]}"; do
  opt=required; [ "$prec" = fp32 ] || opt=optional
  step "cb_$prec" 240 "$opt" -- "$PY" train.py --task cb --data_dir "$DATA" --model_name "$MODEL" --prefix_MLP MLP1 \
    --num_epochs "$EPOCHS" --device "$DEVICE" --precision "$prec" --progress 0 --save_dir "$WORK/runs" \
    --save_name "cb_$prec"
  if [ -f "$WORK/runs/cb_$prec/results.json" ]; then
    step "cb_${prec}_flops" 120 "$opt" -- "$PY" scripts/benchmark.py --run_flops "$WORK/runs/cb_$prec" \
      "${RATE[@]}" --device "$DEVICE" --json "$WORK/cb_${prec}_flops.json"
  fi
done

step benchmark 300 optional -- "$PY" scripts/benchmark.py "${BENCH[@]}" --device "$DEVICE" --data_dir "$DATA" \
  --json "$WORK/benchmark.json"

# ---- one JSON with every figure ----
mkdir -p "$(dirname "$RESULT")"
"$PY" - "$WORK" "$RESULT" "$DEVICE" "$QUICK" "$SHAPE" "$EPOCHS" "$SECONDS" <<'PYEOF'
import json, os, platform, sys, xml.etree.ElementTree as ET

work, result, device, quick, shape, epochs, seconds = sys.argv[1:]
out = {"device": device, "quick": quick == "1", "shape": shape, "cb_epochs": int(epochs), "work_dir": work,
       "total_s": int(seconds), "host": platform.node(), "steps": {}}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as e:  # noqa: BLE001 - the JSON is written whatever failed
    out["torch"] = f"unavailable: {e}"
with open(os.path.join(work, "steps.tsv")) as f:
    for line in f:
        name, rc, secs = line.rstrip("\n").split("\t")
        out["steps"][name] = {"status": "skipped" if rc == "skipped" else ("ok" if rc == "0" else f"exit {rc}"),
                              "seconds": int(secs)}
xml = os.path.join(work, "gpu_tests.xml")
if os.path.exists(xml):
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0)})
    out["gpu_tests"] = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
    out["gpu_tests"]["cases"] = cases
runs = {}
for name in sorted(os.listdir(os.path.join(work, "runs"))) if os.path.isdir(os.path.join(work, "runs")) else []:
    res_path = os.path.join(work, "runs", name, "results.json")
    if not os.path.exists(res_path):
        continue
    with open(res_path) as f:
        res = json.load(f)
    entry = {"complete": res.get("complete"), "wall_time_s": res.get("wall_time_s"),
             "best_val_score": res.get("best_val_score"), "train_loss": (res.get("train") or {}).get("loss"),
             "validation_scores": [v.get("score") for v in res.get("validation") or []],
             "n_examples": res.get("n_examples")}
    flops = os.path.join(work, f"{name}_flops.json")
    if os.path.exists(flops):
        with open(flops) as f:
            entry["flops"] = json.load(f)
        entry["mfu"] = entry["flops"].get("mfu")
    runs[name] = entry
out["cb_runs"] = runs
bench = os.path.join(work, "benchmark.json")
if os.path.exists(bench):
    with open(bench) as f:
        out["benchmark"] = json.load(f)
bad = [n for n, s in out["steps"].items() if s["status"] not in ("ok", "skipped")]
bad += ["gpu_tests: failures"] if out.get("gpu_tests", {}).get("failure") or out.get("gpu_tests", {}).get("error") else []
out["ok"], out["problems"] = not bad, bad
with open(result, "w") as f:
    json.dump(out, f, indent=2)
print(f"== summary: {'OK' if not bad else 'PROBLEMS: ' + ', '.join(bad)}")
for name, r in runs.items():
    f = r.get("flops")
    if f and f.get("wall_time_s"):
        print(f"   {name}: {f['wall_time_s']:.0f} s for {f['epochs']} epochs, {f['achieved_flops_per_s'] / 1e12:.3f} "
              f"TFLOP/s achieved, MFU {100 * f['mfu']:.1f} % of the {f['matmul_dtype']} matrix-product rate "
              f"measured there ({f['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s)")
    else:
        print(f"   {name}: complete {r['complete']}, no FLOP count")
if "gpu_tests" in out:
    t = out["gpu_tests"]
    print(f"   gpu tests: {t['passed']} passed, {t['failure'] + t['error']} failed, {t['skipped']} skipped")
cmp = out.get("benchmark", {}).get("eval_compare")
if cmp:
    print(f"   evaluation before/after the one-pass change: {cmp['ratio']:.2f}x faster, {cmp['flop_ratio']:.2f}x fewer FLOPs")
print(f"   all figures: {result}")
sys.exit(0 if not bad else 1)
PYEOF
