#!/usr/bin/env bash
# Equal opportunity for the deep representation on Adult: configs/adult-mmd.toml trained with
# the penalty on every row (`penalty.condition` unset) and on the positives of `income`
# (`penalty.condition = "positive"`), at the same lambda.
#
#   scripts/adult_condition.sh select            # seed 0, lambda grid, validation metrics only
#   scripts/adult_condition.sh compare LAMBDA    # seeds 0 1 2: lambda = 0, unset, positive
#
# Environment: FAIRREP_BIN (default target/release/fairrep), FAIRREP_DATA_DIR (default
# ../shared/datasets), OUT (default runs/adult-condition), DEVICE (default flex).
# Each run's summary is OUT/TAG-lLAMBDA-sSEED.json; scripts/condition_table.py formats them.
set -euo pipefail

mode=${1:?usage: scripts/adult_condition.sh select | compare LAMBDA}
bin=${FAIRREP_BIN:-target/release/fairrep}
export FAIRREP_DATA_DIR=${FAIRREP_DATA_DIR:-../shared/datasets}
out=${OUT:-runs/adult-condition}
device=${DEVICE:-flex}
mkdir -p "$out"

run() { # tag lambda seed extra...
    local tag=$1 lambda=$2 seed=$3
    shift 3
    local file="$out/$tag-l$lambda-s$seed.json"
    [ -s "$file" ] && return 0
    "$bin" train configs/adult-mmd.toml --device "$device" --seed "$seed" \
        --set "penalty.lambda=$lambda" --set "run.out_dir=\"$out/runs\"" \
        --set "run.name=$tag-l$lambda" "$@" > "$file.tmp" 2> "$out/$tag-l$lambda-s$seed.log"
    mv "$file.tmp" "$file"
}
positive=(--set penalty.condition=positive --set penalty.task=income)

case $mode in
    select)
        run unset 0 0
        for lambda in 3 10 15 20 30; do
            run positive "$lambda" 0 "${positive[@]}"
        done
        ;;
    compare)
        lambda=${2:?usage: scripts/adult_condition.sh compare LAMBDA}
        for seed in 0 1 2; do
            run unset 0 "$seed"
            run unset "$lambda" "$seed"
            run positive "$lambda" "$seed" "${positive[@]}"
        done
        ;;
    *)
        echo "unknown mode $mode: select | compare LAMBDA" >&2
        exit 2
        ;;
esac
