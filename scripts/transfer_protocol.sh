#!/usr/bin/env bash
# Runs a transfer protocol end to end over seeds: for each seed, trains the lambda = 0, MMD
# and Sinkhorn encoders of configs/DATASET-transfer-{mmd,sinkhorn}.toml, then transfers each
# fair encoder family to the held-out tasks (configs/transfer/DATASET.toml, paired with the
# lambda = 0 encoders by seed) and audits every family with `fairrep eval`.
#
#   scripts/transfer_protocol.sh DATASET [SEED ...]      # default seeds: 0 1 2
#
# Environment: FAIRREP_BIN (default target/release/fairrep), FAIRREP_DATA_DIR (default
# ../shared/datasets), OUT (default runs/protocol-DATASET), DEVICE (default flex), EVAL
# (default 1; 0 skips the audits).
# Results: OUT/transfer-{mmd,sinkhorn}.{txt,json}, OUT/eval-{lambda0,mmd,sinkhorn}.{txt,json}.
set -euo pipefail

dataset=${1:?usage: scripts/transfer_protocol.sh DATASET [SEED ...]}
shift
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(0 1 2)
bin=${FAIRREP_BIN:-target/release/fairrep}
export FAIRREP_DATA_DIR=${FAIRREP_DATA_DIR:-../shared/datasets}
out=${OUT:-runs/protocol-$dataset}
device=${DEVICE:-flex}
# Optimiser state of resumed runs loads on burn's default device; keep CPU runs on the CPU.
[ "$device" = flex ] && export BURN_DEVICE=flex
mkdir -p "$out"

train() { # family config seed extra...
    local family=$1 config=$2 seed=$3
    shift 3
    local existing
    existing=$(ls -d "$out/$dataset-$family-s$seed-"* 2>/dev/null | tail -n 1 || true)
    if [ -n "$existing" ] && [ -f "$existing/summary.json" ]; then
        echo "$existing"
        return
    fi
    "$bin" -q train "$config" --device "$device" --seed "$seed" --out "$out" \
        --set "run.name=$dataset-$family" "$@" >/dev/null
    ls -d "$out/$dataset-$family-s$seed-"* | tail -n 1
}

declare -A runs
for seed in "${seeds[@]}"; do
    echo "seed $seed: training lambda = 0, MMD and Sinkhorn encoders" >&2
    runs[lambda0]+=" $(train lambda0 "configs/$dataset-transfer-mmd.toml" "$seed" --set penalty.lambda=0)"
    runs[mmd]+=" $(train mmd "configs/$dataset-transfer-mmd.toml" "$seed")"
    runs[sinkhorn]+=" $(train sinkhorn "configs/$dataset-transfer-sinkhorn.toml" "$seed")"
done

flags() { # --flag dirs...
    local flag=$1
    shift
    for d in "$@"; do printf '%s %s ' "$flag" "$d"; done
}

for family in mmd sinkhorn; do
    echo "transfer: $family encoders vs lambda = 0" >&2
    # shellcheck disable=SC2046,SC2086
    "$bin" -q transfer $(flags --from ${runs[$family]}) "configs/transfer/$dataset.toml" \
        $(flags --baseline ${runs[lambda0]}) --device "$device" \
        --out "$out/transfer-$family.json" | tee "$out/transfer-$family.txt"
done
[ "${EVAL:-1}" = 0 ] && exit 0
for family in lambda0 mmd sinkhorn; do
    echo "eval: $family encoders" >&2
    # shellcheck disable=SC2086
    "$bin" -q eval --from ${runs[$family]} --device "$device" \
        --out "$out/eval-$family.json" | tee "$out/eval-$family.txt"
done
