#!/usr/bin/env bash
# The Communities and Crime protocol of docs/RESULTS.md ("Fair regression by post-processing"):
# per seed S, an unconstrained fairrep regression head (configs/communities-regression.toml,
# split seed S: 70% train / 20% validation / 10% test), then `fairrep postprocess` on its head
# (calibrated on the validation split, reported on the test split); finally the summary over
# seeds (scripts/postprocess_summary.py).
#
#   scripts/postprocess_protocol.sh DATA_DIR OUT_DIR [SEEDS...]   (default seeds 0..9)
#
# FAIRREP_BIN names the binary (default ./target/release/fairrep); TRAIN_ARGS adds arguments to
# `fairrep train`, e.g. TRAIN_ARGS='--set data.split={train=0.5,valid=0.2,test=0.3}'.
set -euo pipefail
data=${1:?usage: $0 DATA_DIR OUT_DIR [SEEDS...]}
out=${2:?usage: $0 DATA_DIR OUT_DIR [SEEDS...]}
shift 2
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2 3 4 5 6 7 8 9)
bin=${FAIRREP_BIN:-./target/release/fairrep}
reports=()
for s in "${seeds[@]}"; do
    "$bin" -q train configs/communities-regression.toml --data-dir "$data" --seed "$s" \
        --set "data.split_seed=$s" --out "$out/seed$s" ${TRAIN_ARGS:-} > /dev/null
    run=$(ls -d "$out/seed$s"/*/ | head -n 1)
    "$bin" -q postprocess --from "$run" --task violent_crimes --data-dir "$data" --seed "$s" \
        > "$out/seed$s/curve.txt"
    reports+=("${run}postprocess/violent_crimes/report.json")
done
python3 scripts/postprocess_summary.py "${reports[@]}"
