#!/usr/bin/env python3
"""Formats the summaries written by scripts/adult_condition.sh as a Markdown table.

    python3 scripts/condition_table.py OUT SPLIT [TASK [FAMILIES]]

One row per run family (`TAG-lLAMBDA`), over the seeds found: `mean ± half-width` of the 95%
Student-t interval (the `fairrep transfer` convention; a single seed shows its value), of the
accuracy, DP gap, equal-opportunity gap (true-positive-rate gap) and equalised-odds gap of
TASK (default `income`) on SPLIT (`valid`: the best epoch's validation metrics; `test`).
FAMILIES (comma-separated `TAG-lLAMBDA`, e.g. `unset-l0,positive-l10`) keeps only those.
"""
import glob
import json
import os
import re
import sys

from intervals import interval

def main():
    out, split = sys.argv[1], sys.argv[2]
    task = sys.argv[3] if len(sys.argv) > 3 else "income"
    only = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else None
    families = {}
    for path in sorted(glob.glob(os.path.join(out, "*-s*.json"))):
        m = re.match(r"(.+)-l([0-9.]+)-s(\d+)\.json$", os.path.basename(path))
        if not m or (only is not None and f"{m.group(1)}-l{m.group(2)}" not in only):
            continue
        with open(path) as f:
            summary = json.load(f)
        metrics = summary[split]["tasks"][task]
        families.setdefault((m.group(1), float(m.group(2))), []).append((int(m.group(3)), metrics))
    keys = ["accuracy", "dp_gap", "eopp_gap", "eo_gap"]
    print(f"| run | lambda | seeds | {split} accuracy | DP gap | equal-opportunity gap | equalised-odds gap |")
    print("|---|---|---|---|---|---|---|")
    for (tag, lam), runs in sorted(families.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        seeds = " ".join(str(s) for s, _ in sorted(runs, key=lambda r: r[0]))
        cells = [interval([r[k] for _, r in runs]) for k in keys]
        print(f"| {tag} | {lam:g} | {seeds} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
