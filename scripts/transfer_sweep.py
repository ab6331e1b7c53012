#!/usr/bin/env python3
"""Transfers every configuration of a `fairrep sweep` to the novel tasks and chooses on validation.

    scripts/transfer_sweep.py SWEEP_DIR TRANSFER_CONFIG [--axis penalty.lambda] [--task TASK]
        [--dp-max 0.01,0.02,0.05,0.1] [--bin target/release/fairrep] [--data-dir DIR]
        [--device flex]

SWEEP_DIR is a finished sweep directory (its `results.csv`), TRANSFER_CONFIG a transfer config
(e.g. configs/transfer/acs.toml). For each value of the swept key `--axis`, the runs of all
its seeds go through `fairrep transfer` twice, scored on the validation split (`--split
valid`) and on the test split, with `compare.raw = false`; the reports are written to
SWEEP_DIR/transfer/{valid,test}-AXIS=VALUE.json (existing reports are reused). Then, per head,
a Markdown table of mean ± 95% CI over seeds of the novel task's accuracy and DP gap on both
splits, and for each k of `--dp-max` the value chosen by "highest mean validation accuracy
with mean validation DP gap <= k" (the rule of `fairrep sweep`, on the novel task): the choice
reads the validation columns only, the test columns are reported beside.
"""
import argparse
import csv
import json
import os
import subprocess
import sys


def show(interval):
    if interval["n"] < 2:
        return f"{interval['mean']:.4f}"
    return f"{interval['mean']:.4f} ± {interval['ci95']:.4f}"


def values_and_runs(sweep_dir, axis):
    path = os.path.join(sweep_dir, "results.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"cannot read {path}: {e.strerror} (run or collect the sweep first)")
    if not rows:
        sys.exit(f"{path}: no finished run")
    if axis not in rows[0]:
        sys.exit(f"{path}: no column `{axis}` (columns: {', '.join(rows[0])})")
    groups = {}
    for row in rows:
        groups.setdefault(row[axis], []).append(row["run_dir"])
    return groups


def transfer(args, value, runs, split):
    out_dir = os.path.join(args.sweep_dir, "transfer")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"{split}-{args.axis}={value}.json")
    if not os.path.exists(out):
        cmd = [args.bin, "-q", "transfer"]
        for run in runs:
            cmd += ["--from", run]
        cmd += [args.config, "--split", split, "--set", "compare.raw=false",
                "--device", args.device, "--out", out]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr}")
    with open(out) as f:
        return json.load(f)


def cells_by_head(report, task):
    cells = {}
    for cell in report["cells"]:
        if cell["task"] == task and cell["head"] not in cells:
            cells[cell["head"]] = cell["summary"]
    return cells


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("config")
    parser.add_argument("--axis", default="penalty.lambda")
    parser.add_argument("--task")
    parser.add_argument("--dp-max", default="0.01,0.02,0.05,0.1")
    parser.add_argument("--bin", default="target/release/fairrep")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="flex")
    args = parser.parse_args()
    bounds = [float(k) for k in args.dp_max.split(",")]

    groups = values_and_runs(args.sweep_dir, args.axis)
    table = []  # (value, seeds, {split: {head: summary}})
    for value, runs in groups.items():
        by_split = {}
        for split in ("valid", "test"):
            report = transfer(args, value, runs, split)
            task = args.task or report["tasks"][0]
            by_split[split] = cells_by_head(report, task)
        table.append((value, len(runs), by_split))

    heads = list(table[0][2]["valid"])
    print(f"`{args.sweep_dir}`, novel task `{task}`, `{args.axis}`; mean ± 95% CI over seeds\n")
    for head in heads:
        print(f"{head} head:\n")
        print(f"| {args.axis} | seeds | valid accuracy | valid DP gap | test accuracy | test DP gap |")
        print("|---|---|---|---|---|---|")
        for value, seeds, by_split in table:
            v, t = by_split["valid"][head], by_split["test"][head]
            print(f"| {value} | {seeds} | {show(v['accuracy'])} | {show(v['dp_gap'])} | "
                  f"{show(t['accuracy'])} | {show(t['dp_gap'])} |")
        print()
        print("| k | chosen | valid accuracy | valid DP gap | test accuracy | test DP gap |")
        print("|---|---|---|---|---|---|")
        for k in bounds:
            feasible = [(by_split["valid"][head]["accuracy"]["mean"], -i, value, by_split)
                        for i, (value, _, by_split) in enumerate(table)
                        if by_split["valid"][head]["dp_gap"]["mean"] <= k]
            if not feasible:
                print(f"| {k} | none qualifies | | | | |")
                continue
            _, _, value, by_split = max(feasible, key=lambda x: (x[0], x[1]))
            v, t = by_split["valid"][head], by_split["test"][head]
            print(f"| {k} | {value} | {show(v['accuracy'])} | {show(v['dp_gap'])} | "
                  f"{show(t['accuracy'])} | {show(t['dp_gap'])} |")
        print()


if __name__ == "__main__":
    main()
