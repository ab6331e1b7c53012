#!/usr/bin/env python3
"""Transfers every configuration of a `fairrep sweep` to the novel tasks and chooses on validation.

    scripts/transfer_sweep.py SWEEP_DIR TRANSFER_CONFIG [--axis penalty.lambda] [--task TASK]...
        [--dp-max 0.01,0.02,0.05,0.1] [--bin target/release/fairrep] [--data-dir DIR]
        [--device flex] [--values V1,V2,...] [--no-test]

SWEEP_DIR is a finished sweep directory (its `results.csv`), TRANSFER_CONFIG a transfer config
(e.g. configs/transfer/acs.toml). For each value of the swept key `--axis`, the runs of all
its seeds go through `fairrep transfer` twice, scored on the validation split (`--split
valid`) and on the test split, with `compare.raw = false`; the reports are written to
SWEEP_DIR/transfer/{valid,test}-AXIS=VALUE.json (existing reports are reused). Then, per head,
a Markdown table of mean ± 95% CI over seeds of each novel task's accuracy and DP gap on both
splits (`--no-test`: the validation split only; `--values`: only some values of the axis),
and for each k of `--dp-max` the value chosen by "highest mean validation accuracy
with mean validation DP gap <= k" (the rule of `fairrep sweep`, on the novel task; with
several tasks, `--task` repeated or by default all of them: the highest mean over the tasks
of the validation accuracy, among the values whose every task has a mean validation DP gap
<= k). The choice reads the validation columns only; the test columns are reported beside.
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


def cells(report, tasks):
    """{task: {head: summary}} of the first representation (the swept encoders)."""
    out = {task: {} for task in tasks}
    for cell in report["cells"]:
        heads = out.get(cell["task"])
        if heads is not None and cell["head"] not in heads:
            heads[cell["head"]] = cell["summary"]
    for task, heads in out.items():
        if not heads:
            sys.exit(f"the transfer reports have no task `{task}` (they have {report['tasks']})")
    return out


def summarise(by_split, tasks, head):
    """Over the tasks: the mean of the mean accuracies and the largest mean DP gap, per split."""
    out = {}
    for split, by_task in by_split.items():
        out[split] = {
            "accuracy": sum(by_task[t][head]["accuracy"]["mean"] for t in tasks) / len(tasks),
            "dp_gap": max(by_task[t][head]["dp_gap"]["mean"] for t in tasks),
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("config")
    parser.add_argument("--axis", default="penalty.lambda")
    parser.add_argument("--task", action="append",
                        help="a novel task to choose on (repeatable; default: all of them)")
    parser.add_argument("--dp-max", default="0.01,0.02,0.05,0.1")
    parser.add_argument("--bin", default="target/release/fairrep")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="flex")
    parser.add_argument("--values", help="only these values of the axis, comma-separated, as in "
                        "results.csv (e.g. 3.0,10.0)")
    parser.add_argument("--no-test", action="store_true",
                        help="score the validation split only (no test columns)")
    args = parser.parse_args()
    bounds = [float(k) for k in args.dp_max.split(",")]

    groups = values_and_runs(args.sweep_dir, args.axis)
    if args.values:
        wanted = args.values.split(",")
        missing = [v for v in wanted if v not in groups]
        if missing:
            sys.exit(f"--values: {missing} not in the sweep's `{args.axis}` ({list(groups)})")
        groups = {v: groups[v] for v in wanted}
    splits = ("valid",) if args.no_test else ("valid", "test")
    table = []  # (value, seeds, {split: {task: {head: summary}}})
    tasks = args.task
    for value, runs in groups.items():
        by_split = {}
        for split in splits:
            report = transfer(args, value, runs, split)
            tasks = tasks or report["tasks"]
            by_split[split] = cells(report, tasks)
        table.append((value, len(runs), by_split))

    heads = list(table[0][2]["valid"][tasks[0]])
    names = ", ".join(f"`{t}`" for t in tasks)
    print(f"`{args.sweep_dir}`, novel tasks {names}, `{args.axis}`; mean ± 95% CI over seeds\n")
    for head in heads:
        print(f"{head} head:\n")
        print(f"| {args.axis} | task | seeds | valid accuracy | valid DP gap | test accuracy | "
              "test DP gap |")
        print("|---|---|---|---|---|---|---|")
        for value, seeds, by_split in table:
            for task in tasks:
                cols = [show(by_split[s][task][head][c]) if s in by_split else "-"
                        for s in ("valid", "test") for c in ("accuracy", "dp_gap")]
                print(f"| {value} | {task} | {seeds} | " + " | ".join(cols) + " |")
        print()
        several = len(tasks) > 1
        if several:
            print("Over the tasks: the mean of the accuracies, the largest DP gap; a value "
                  "qualifies when every task's mean validation DP gap is <= k.\n")
        print("| k | chosen | valid accuracy | valid DP gap | test accuracy | test DP gap |")
        print("|---|---|---|---|---|---|")
        for k in bounds:
            feasible = []
            for i, (value, _, by_split) in enumerate(table):
                m = summarise(by_split, tasks, head)
                if m["valid"]["dp_gap"] <= k:
                    feasible.append((m["valid"]["accuracy"], -i, value, by_split, m))
            if not feasible:
                print(f"| {k} | none qualifies | | | | |")
                continue
            _, _, value, by_split, m = max(feasible, key=lambda x: (x[0], x[1]))
            if several:
                cols = [f"{m[s][c]:.4f}" if s in m else "-"
                        for s in ("valid", "test") for c in ("accuracy", "dp_gap")]
            else:
                cols = [show(by_split[s][tasks[0]][head][c]) if s in by_split else "-"
                        for s in ("valid", "test") for c in ("accuracy", "dp_gap")]
            print(f"| {k} | {value} | " + " | ".join(cols) + " |")
        print()


if __name__ == "__main__":
    main()
