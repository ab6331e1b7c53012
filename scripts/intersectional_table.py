#!/usr/bin/env python3
"""Formats a sweep over penalty.lambda and penalty.mode with several sensitive attributes
(configs/sweeps/adult-intersectional-mmd.toml) as a Markdown table.

    python3 scripts/intersectional_table.py SWEEP_DIR SPLIT [TASK [ATTRIBUTES]]

Reads SWEEP_DIR/results.jsonl (written by `fairrep sweep`). One row per (lambda, mode), over
the seeds found: `mean ± half-width` of the 95% Student-t interval of TASK's (default
`income`) accuracy, intersectional DP gap (the largest gap between the cells, the sweep's
`SPLIT.TASK.dp_gap`) and each attribute's DP gap (`SPLIT.TASK.dp_gap:ATTRIBUTE`; ATTRIBUTES
comma-separated, default `sex,race`) on SPLIT (`valid` or `test`).
"""
import json
import sys

from intervals import interval

def main():
    sweep, split = sys.argv[1], sys.argv[2]
    task = sys.argv[3] if len(sys.argv) > 3 else "income"
    attributes = (sys.argv[4] if len(sys.argv) > 4 else "sex,race").split(",")
    rows = [json.loads(line) for line in open(f"{sweep}/results.jsonl")]
    groups = {}
    for r in rows:
        key = (float(r["penalty.lambda"]), r["penalty.mode"])
        groups.setdefault(key, []).append(r)
    columns = ["accuracy", "dp_gap"] + [f"dp_gap:{a}" for a in attributes]
    titles = ["accuracy", "intersectional DP gap"] + [f"DP gap ({a})" for a in attributes]
    print("| lambda | mode | seeds | " + " | ".join(titles) + " |")
    print("|---|---|---|" + "---|" * len(titles))
    for (lam, mode), runs in sorted(groups.items()):
        seeds = " ".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        cells = []
        for c in columns:
            values = [r[f"{split}.{task}.{c}"] for r in runs if f"{split}.{task}.{c}" in r]
            cells.append(interval(values) if values else "-")
        print(f"| {lam:g} | {mode} | {seeds} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
