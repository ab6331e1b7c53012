#!/usr/bin/env python3
"""Summarises `fairrep postprocess` reports over seeds as markdown tables.

Each argument is a `report.json` written by `fairrep postprocess` (one per seed). Prints the
test MSE, KS and W1 (first attribute) at alpha = 0 (the base) and alpha = 1 (fully fair), and
the curve over alpha: mean and 95% Student-t interval over the reports (half-width
t_{0.975, n-1} s / sqrt(n), as fairrep's own `Interval`). Standard library only.

    python3 scripts/postprocess_summary.py runs/pp/*/postprocess/violent_crimes/report.json
"""

import json
import math
import statistics
import sys

from intervals import interval

def main(paths):
    reports = [json.load(open(p)) for p in paths]
    n = len(reports)
    alphas = [p["alpha"] for p in reports[0]["curve"]]
    for r in reports:
        assert [p["alpha"] for p in r["curve"]] == alphas, "reports with different alphas"

    def at(r, alpha):
        return next(p for p in r["curve"] if p["alpha"] == alpha)

    def col(alpha, key):
        out = []
        for r in reports:
            p = at(r, alpha)
            out.append(p[key] if key in ("mse", "rmse") else p["attributes"][0][key])
        return out

    print(f"{n} report(s); calibration rows {reports[0]['calibration']['n']}, "
          f"test rows {reports[0]['test']['n']}; mean ± 95% CI over the reports\n")
    # Noise floors of the test KS (asymptotic, from the Kolmogorov distribution: mean 0.8687,
    # 95% quantile 1.358, times the scale): a predictor whose law is the same in both groups
    # shows a test KS of scale sqrt(1/n_t + 1/m_t) (test group sizes); the post-processed
    # outputs also carry the calibration sample's noise, scale
    # sqrt(1/n_t + 1/m_t + 1/n_c + 1/m_c) (the ranks come from the calibration ECDFs).
    tsz = [r["test"].get("group_sizes") for r in reports]
    csz = [r["calibration"].get("group_sizes") for r in reports]
    if all(tsz) and all(csz):
        test_only = statistics.fmean(math.sqrt(sum(1.0 / k for k in t[0][:2])) for t in tsz)
        both = statistics.fmean(
            math.sqrt(sum(1.0 / k for k in t[0][:2]) + sum(1.0 / k for k in c[0][:2]))
            for t, c in zip(tsz, csz)
        )
        print(f"Test KS noise floor: a predictor fair in law, mean {0.8687 * test_only:.3f} "
              f"(95%: {1.358 * test_only:.3f}); post-processed outputs with calibration noise, "
              f"mean about {0.8687 * both:.3f} (95%: {1.358 * both:.3f}).\n")
    print("| | test MSE | test KS | test W1 |")
    print("|---|---|---|---|")
    for alpha, name in ((0.0, "base (alpha = 0)"), (1.0, "post-processed (alpha = 1)")):
        if alpha in alphas:
            print(f"| {name} | {interval(col(alpha, 'mse'), 4)} | {interval(col(alpha, 'ks'), 4)} | "
                  f"{interval(col(alpha, 'w1'), 4)} |")
    if 0.0 in alphas and 1.0 in alphas:
        dm = [b - a for a, b in zip(col(0.0, "mse"), col(1.0, "mse"))]
        print(f"| MSE cost (1 minus 0) | {interval(dm, 4)} | | |")
        below = sum(1 for k in col(1.0, "ks") if k < 0.1)
        print(f"\nKS < 0.1 at alpha = 1 in {below} of {n} reports; "
              f"KS > 0.4 at alpha = 0 in {sum(1 for k in col(0.0, 'ks') if k > 0.4)} of {n}.")
    print("\n| alpha | test MSE | test KS | test W1 |")
    print("|---|---|---|---|")
    for a in alphas:
        print(f"| {a:g} | {interval(col(a, 'mse'), 4)} | {interval(col(a, 'ks'), 4)} | "
              f"{interval(col(a, 'w1'), 4)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
