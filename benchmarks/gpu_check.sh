#!/usr/bin/env bash
# The checks to run the day a CUDA GPU is available, one line each: `check NAME: ok|FAIL|skipped figures`.
#
#   benchmarks/gpu_check.sh                       on a CUDA machine, from the repository root (venv active)
#   GPU_CHECK_ALLOW_CPU=1 benchmarks/gpu_check.sh a CPU smoke run of the same commands (tiny settings work best)
#
# Checks:
#   demo-fp32, demo-bf16, demo-fp16   recipes/latent_dm.py under `accelerate launch --mixed_precision no|bf16|fp16`
#                                     (GPU_CHECK_STEPS steps, one evaluation network): a finite set, its accuracy, time
#   two-process                       benchmarks/dm_multiprocess.py --device cuda: the DM loop (pixel match space, shipped
#                                     VAE) in 2 processes on the one GPU vs 1: max abs difference of the two sets, and the
#                                     2-process step time / 1-process
#   speed                             benchmarks/dm_speed.py: latent vs pixel DM seconds per iteration
#   eval-NAME-sS                      only with GPU_CHECK_EVAL_SETS: `gendistill eval SET --epochs E --runs 1 --seed S`
#                                     for each set and seed, all at once on the one GPU (the sets too large to evaluate
#                                     on a CPU: a budget-50 vq8 set's networks train on 31,910 images)
#
# Settings (environment): GPU_CHECK_STEPS (50), GPU_CHECK_EVAL_EPOCHS (300), GPU_CHECK_PARITY_STEPS (10),
# GPU_CHECK_TOL (1e-4, max abs difference counted as parity), GPU_CHECK_OUT (a new temporary folder),
# GPU_CHECK_RECIPE_ARGS (extra flags for the demos), GPU_CHECK_PARITY_ARGS (for benchmarks/dm_multiprocess.py),
# GPU_CHECK_SPEED_ARGS (--steps 20), GPU_CHECK_EVAL_SETS (space-separated set files), GPU_CHECK_EVAL_SEEDS (0 1 2),
# GPU_CHECK_EVAL_LIMIT (seconds each evaluation may run: 1800), GPU_CHECK_BACKEND (gloo: NCCL refuses two ranks on one GPU;
# nccl on a machine with a GPU per process). Exits 1 when any check fails, 2 when there is no CUDA device.
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
STEPS=${GPU_CHECK_STEPS:-50}
EPOCHS=${GPU_CHECK_EVAL_EPOCHS:-300}
PARITY_STEPS=${GPU_CHECK_PARITY_STEPS:-10}
TOL=${GPU_CHECK_TOL:-1e-4}
OUT=${GPU_CHECK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
RECIPE_ARGS=${GPU_CHECK_RECIPE_ARGS:-}
export GPU_CHECK_BACKEND=${GPU_CHECK_BACKEND:-gloo} TQDM_DISABLE=1
mkdir -p "$OUT" || exit 2
failures=0

report() {  # report NAME STATUS FIGURES
    echo "check $1: $2${3:+ $3}"
    [ "$2" = FAIL ] && failures=$((failures + 1))
    return 0
}

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    ON_CPU=0
    DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'), torch.cuda.device_count(), 'GPU(s)')")
    ONE=(--num_processes 1)
elif [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
    ON_CPU=1
    DEVICE="CPU smoke run (GPU_CHECK_ALLOW_CPU=1): the figures are not GPU figures"
    ONE=(--cpu --num_processes 1)
else
    echo "check cuda: FAIL no CUDA device (torch.cuda.is_available() is False); run this on a GPU machine, or set GPU_CHECK_ALLOW_CPU=1 for a CPU smoke run"
    exit 2
fi
if ! missing=$("$PY" -c "import gendistill, diffusers, accelerate" 2>&1 | tail -1); then
    echo "check imports: FAIL $missing (install the project, or put its wheels on this machine: pip install --no-deps WHEELS)"
    exit 2
fi
echo "gpu_check: $DEVICE; outputs in $OUT"
LAUNCH=("$PY" -m accelerate.commands.launch --num_machines 1 --dynamo_backend no)

# ------------------------------------------------------------------------------------------------- the demo recipe
for precision in no bf16 fp16; do
    name=demo-$([ $precision = no ] && echo fp32 || echo $precision)
    dir="$OUT/$name"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086  # RECIPE_ARGS is a list of flags
    "${LAUNCH[@]}" "${ONE[@]}" --mixed_precision "$precision" recipes/latent_dm.py --steps "$STEPS" --eval-runs 1 \
        --eval-epochs "$EPOCHS" --output "$dir" $RECIPE_ARGS >"$dir.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then
        seconds=$("$PY" -c "print(f'{$(date +%s.%N) - $start:.1f}')")
        figures=$("$PY" - "$dir" <<'EOF'
import json, sys
import torch
from safetensors import safe_open
d = sys.argv[1]
with safe_open(f"{d}/set.safetensors", framework="pt") as f:
    z = f.get_tensor("latents")
    run = json.loads(f.metadata()["gendistill.run"])
acc = json.load(open(f"{d}/eval.json"))["mean"]
finite = bool(torch.isfinite(z).all())
print(("ok" if finite else "FAIL"), f"accuracy {100 * acc:.2f}% (1 net), distil {run.get('distill_seconds')} s, "
      f"latents {'finite' if finite else 'NOT FINITE'}")
EOF
)
        report "$name" "${figures%% *}" "${figures#* }, wall ${seconds} s"
    elif [ $ON_CPU = 1 ] && [ $precision = fp16 ] && grep -q "fp16" "$dir.log"; then
        report "$name" skipped "(fp16 needs a GPU: $(grep -m1 -i "error" "$dir.log" | cut -c1-120))"
    else
        report "$name" FAIL "exit $rc ($(grep -E '^error|Error' "$dir.log" | tail -1 | cut -c1-200); log $dir.log)"
    fi
done

# ------------------------------------------------------------------------------------------------- 2 processes vs 1
# benchmarks/dm_multiprocess.py: the DM loop (pixel match space, shipped VAE) in 1 and in 2 processes on the one device
# shellcheck disable=SC2086  # GPU_CHECK_PARITY_ARGS is a list of flags
"$PY" benchmarks/dm_multiprocess.py --device "$([ $ON_CPU = 1 ] && echo cpu || echo cuda)" --backend "$GPU_CHECK_BACKEND" \
    --steps "$PARITY_STEPS" ${GPU_CHECK_PARITY_ARGS:-} >"$OUT/two-process.log" 2>&1
rc=$?
if [ $rc = 0 ]; then
    line=$("$PY" - "$OUT/two-process.log" "$TOL" <<'EOF'
import re, sys
text, tol = open(sys.argv[1]).read(), float(sys.argv[2])
diff = float(re.search(r"max abs difference (\S+)", text).group(1))
times = re.search(r"1 process: (\S+) ms/step; 2 processes: (\S+) ms/step", text).groups()
ratio = re.search(r"1-process: (\S+) x", text).group(1)
print("ok" if diff <= tol else "FAIL", f"max abs difference {diff:.3g} (tolerance {tol:g}); step time {times[0]} ms (1 process) vs "
      f"{times[1]} ms (2 processes on one device): {ratio} x")
EOF
)
    report two-process "${line%% *}" "${line#* }"
else
    report two-process FAIL "exit $rc ($(grep -E 'Error|error' "$OUT/two-process.log" | tail -1 | cut -c1-200); log $OUT/two-process.log)"
fi

# ------------------------------------------------------------------------------------------------- speed benchmark
# shellcheck disable=SC2086  # GPU_CHECK_SPEED_ARGS is a list of flags
"$PY" benchmarks/dm_speed.py ${GPU_CHECK_SPEED_ARGS:---steps 20} >"$OUT/speed.log" 2>&1
rc=$?
if [ $rc = 0 ]; then
    report speed ok "$(grep -E 'ms/iteration|faster' "$OUT/speed.log" | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
else
    report speed FAIL "exit $rc ($(grep -E 'Error|error' "$OUT/speed.log" | tail -1 | cut -c1-200); log $OUT/speed.log)"
fi

# ------------------------------------------------------------------------------------------------- sets on fresh networks
eval_names=()
for set_ in ${GPU_CHECK_EVAL_SETS:-}; do
    for seed in ${GPU_CHECK_EVAL_SEEDS:-0 1 2}; do
        name=eval-$(basename "$(dirname "$set_")")-s$seed
        [ "$(basename "$set_")" = set.safetensors ] || name=eval-$(basename "$set_" .safetensors)-s$seed
        eval_names+=("$name")
        timeout "${GPU_CHECK_EVAL_LIMIT:-1800}" "$PY" -m gendistill eval "$set_" --epochs "$EPOCHS" --runs 1 \
            --seed "$seed" --out "$OUT/$name.json" >"$OUT/$name.log" 2>&1 &
    done
done
wait
for name in "${eval_names[@]}"; do
    if [ -f "$OUT/$name.json" ]; then
        report "$name" ok "$("$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"accuracy {100 * r['mean']:.2f}% (1 net, {r['num_images']} images), {r['seconds']:.0f} s\")" "$OUT/$name.json")"
    else
        report "$name" FAIL "no result ($(grep -E 'Error|error' "$OUT/$name.log" | tail -1 | cut -c1-200); log $OUT/$name.log)"
    fi
done

echo "gpu_check: $failures check(s) failed; logs in $OUT"
[ $failures = 0 ]
