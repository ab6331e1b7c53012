#!/usr/bin/env python3
"""Formats `fairrep transfer` reports (transfer.json) as Markdown tables.

    scripts/transfer_markdown.py runs/protocol-adult/transfer-mmd.json [...]

One table per report: for every novel task and head, each representation's accuracy, DP gap,
KS distance, score gap and L*W1 bound (mean ± 95% CI over seeds), then, per task and head,
whether the first representation's DP-gap interval lies below the comparison encoder's (the
second representation) and its accuracy difference in points.
"""
import json
import sys

COLUMNS = [("accuracy", "accuracy"), ("dp_gap", "DP gap"), ("ks", "KS"),
           ("score_gap", "score gap"), ("w1_bound", "L·W1 bound")]


def show(interval):
    if interval is None:
        return "-"
    if interval["n"] < 2:
        return f"{interval['mean']:.3f}"
    return f"{interval['mean']:.3f} ± {interval['ci95']:.3f}"


def main(paths):
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        seeds = len(report["encoders"])
        print(f"`{path}`: {report['dataset']}, test split, {seeds} seed(s), mean ± 95% CI\n")
        print("| task | head | representation | " + " | ".join(t for _, t in COLUMNS) + " |")
        print("|---|---|---|" + "---|" * len(COLUMNS))
        verdicts = []
        by_key = {}
        for cell in report["cells"]:
            s = cell["summary"]
            row = [cell["task"], cell["head"], cell["representation"]]
            row += [show(s.get(key)) for key, _ in COLUMNS]
            print("| " + " | ".join(row) + " |")
            by_key.setdefault((cell["task"], cell["head"]), []).append(cell)
        for (task, head), cells in by_key.items():
            if len(cells) < 2 or "raw" in cells[1]["representation"]:
                continue
            fair, base = cells[0]["summary"], cells[1]["summary"]
            disjoint = (fair["dp_gap"]["mean"] + fair["dp_gap"]["ci95"]
                        < base["dp_gap"]["mean"] - base["dp_gap"]["ci95"])
            change = 100 * (fair["accuracy"]["mean"] - base["accuracy"]["mean"])
            verdicts.append(
                f"- {task}, {head}: DP-gap interval {'below' if disjoint else 'overlaps'} "
                f"{cells[1]['representation']}'s; accuracy {change:+.1f} points")
        print()
        if verdicts:
            print(f"{cells[0]['representation']} against the comparison encoder:\n")
            print("\n".join(verdicts) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
