#!/usr/bin/env bash
# The GPU check: one call on a machine with a GPU (any vendor wgpu reaches) that builds what
# it needs, runs the divergence tests with the wgpu device required, trains shipped configs on
# the GPU and on the CPU, runs the fused-kernel benchmark, and writes one JSON of figures.
#
#   scripts/gpu_check.sh                 # full check (under 8 minutes once built)
#   GPU_CHECK_QUICK=1 scripts/gpu_check.sh   # small sizes: a dry run on lavapipe / any CPU
#
# Output: $OUT/gpu_check.json (OUT defaults to target/gpu_check) and one log per step beside
# it. Datasets come from $FAIRREP_DATA_DIR, else ./shared/datasets, else ../shared/datasets;
# the training steps that need a missing dataset are recorded as skipped. Every step records
# its exit status, wall time and peak resident memory; a failed step does not stop the others,
# and the script exits 1 when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
QUICK=${GPU_CHECK_QUICK:-0}
RESULTS="$OUT/steps.tsv"
: > "$RESULTS"
failed=0

if [ -z "${FAIRREP_DATA_DIR:-}" ]; then
    for d in shared/datasets ../shared/datasets; do
        if [ -d "$d" ]; then FAIRREP_DATA_DIR=$(cd "$d" && pwd); break; fi
    done
fi
export FAIRREP_DATA_DIR=${FAIRREP_DATA_DIR:-}

# step NAME CMD...: runs CMD with its output in $OUT/NAME.log; records status, wall seconds
# and peak RSS (GNU time when installed).
step() {
    local name=$1; shift
    local log="$OUT/$name.log" start end rc rss=""
    echo "== $name ($(date -u +%H:%M:%S))"
    start=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%M" -o "$OUT/$name.rss" "$@" > "$log" 2>&1
        rc=$?
        rss=$(tail -n 1 "$OUT/$name.rss" 2>/dev/null)
    else
        "$@" > "$log" 2>&1
        rc=$?
    fi
    end=$(date +%s.%N)
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN{print $end - $start}")" "${rss:-}" >> "$RESULTS"
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "   failed ($rc); last lines of $log:"
        tail -n 5 "$log" | sed 's/^/   /'
    fi
    return 0
}

# The card.
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        > "$OUT/card.txt" 2>&1
else
    echo "no nvidia-smi; wgpu picks its default adapter" > "$OUT/card.txt"
fi

step build cargo build --release --workspace --all-targets
BIN=target/release/fairrep
if [ -n "${CARGO_TARGET_DIR:-}" ]; then BIN="$CARGO_TARGET_DIR/release/fairrep"; fi

# The fixture tests of every divergence path, with the wgpu device required.
step divergence_tests env FAIRREP_REQUIRE_WGPU=1 \
    cargo test --release --workspace --test divergences

# Training: shipped configs on the GPU (wgpu) and on the CPU (flex), same epochs and seed.
if [ "$QUICK" = 1 ]; then
    EPOCHS=1
    CONFIGS="quickstart synthetic-sinkhorn"
else
    EPOCHS=3
    CONFIGS="adult-mmd adult-sinkhorn adult-mmd-batch4096 celeba-transfer-mmd celeba-sinkhorn"
fi
for name in $CONFIGS; do
    config=configs/$name.toml
    extra=()
    if [ "$name" = adult-mmd-batch4096 ]; then
        config=configs/adult-mmd.toml
        extra=(--set data.batch_size=4096)
    fi
    for device in wgpu flex; do
        run_out="$OUT/runs/${name}_$device"
        rm -rf "$run_out"
        step "train_${name}_$device" "$BIN" -q train "$config" --device "$device" \
            --set "optim.epochs=$EPOCHS" "${extra[@]}" --out "$run_out" --seed 0
    done
done

# The fused kernels against the tensor-op path on the same device.
if [ "$QUICK" = 1 ]; then
    step bench_fused cargo run --release --example bench_fused -- \
        --sizes 512 --dims 8 --repeats 1 --max-tensor-n 512 --memory-n 0
else
    step bench_fused cargo run --release --example bench_fused -- \
        --sizes 4096,16384,65536 --dims 8,32 --repeats 3 --max-tensor-n 16384 --memory-n 50000
fi

# Training throughput against a PyTorch loop on CUDA (scripts/bench_train.py: same data, model,
# optimiser and penalty; fairrep on wgpu), with a Python whose torch has CUDA ($TORCH_PYTHON,
# else python3); skipped with the reason otherwise.
TORCH_PY=${TORCH_PYTHON:-python3}
if ! "$TORCH_PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
        > /dev/null 2>&1; then
    echo "== bench_train skipped: $TORCH_PY has no torch with CUDA (set TORCH_PYTHON)"
elif [ ! -d "${FAIRREP_DATA_DIR:-/nonexistent}/adult" ]; then
    echo "== bench_train skipped: no Adult data in FAIRREP_DATA_DIR"
else
    if [ "$QUICK" = 1 ]; then
        bench_cases=adult-mmd; bench_epochs=1
    else
        bench_cases=adult-none,adult-mmd,adult-sinkhorn,celeba-mmd,adult-mmd-b4096; bench_epochs=3
    fi
    step bench_train "$TORCH_PY" scripts/bench_train.py --fairrep "$BIN" \
        --data-dir "$FAIRREP_DATA_DIR" --cases "$bench_cases" --epochs "$bench_epochs" \
        --device cuda --fairrep-device wgpu --work "$OUT/bench_train" \
        --out "$OUT/bench_train.json"
fi

# One JSON: the card, every step (status, seconds, peak RSS in kB), each training run's
# summary (test accuracy and DP gap of every task, seconds per epoch) and the benchmark table.
python3 - "$OUT" "$EPOCHS" << 'EOF'
import json, pathlib, sys
out, epochs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
report = {"card": (out / "card.txt").read_text().strip(), "epochs": epochs, "steps": {}}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, rss = (line.split("\t") + [""])[:4]
    entry = {"exit": int(rc), "seconds": round(float(seconds), 2),
             "peak_rss_kb": int(rss) if rss.strip().isdigit() else None}
    if name.startswith("train_"):
        runs = sorted((out / "runs" / name[len("train_"):]).glob("*/summary.json"))
        if runs:
            summary = json.loads(runs[-1].read_text())
            entry["summary"] = {
                "device": summary.get("device"),
                "train_seconds": summary.get("train_seconds"),
                "test": {task: {k: v for k, v in m.items() if k in ("accuracy", "dp_gap", "loss")}
                         for task, m in summary.get("test", {}).get("tasks", {}).items()},
            }
    report["steps"][name] = entry
bench = out / "bench_fused.log"
if bench.exists():
    lines = bench.read_text().splitlines()
    start = next((i for i, l in enumerate(lines) if l.lstrip().startswith("op ")), 0)
    report["bench_fused"] = [l for l in lines[start:] if l.strip() and "Compiling" not in l]
train_bench = out / "bench_train.json"
if train_bench.exists():
    report["bench_train"] = json.loads(train_bench.read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: v["exit"] for k, v in report["steps"].items()}, indent=1))
EOF
echo "figures in $OUT/gpu_check.json"
exit "$failed"
