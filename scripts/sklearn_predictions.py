#!/usr/bin/env python3
"""Predictions of another tool for `fairrep postprocess --predictions`: a scikit-learn random
forest on UCI Communities and Crime (or on Law School, with two attributes), written as a
predictions CSV.

The base predictor of the public demo of "Fair Regression with Wasserstein Barycenters"
(Chzhen et al., NeurIPS 2020) is a random forest that sees every attribute, the race
percentages included. This script fits one with scikit-learn and writes its predictions in the
format `fairrep postprocess` reads (columns prediction, group, target, split):

- inputs: the 122 predictive attributes less the columns with more than one missing value (the
  22 police / LEMAS columns); the one row with a missing OtherPerCap is dropped (1,993 rows);
  the race percentages stay (as in the demo);
- target: ViolentCrimesPerPop; group: racepctblack > 0.06 (`black_gt_6pct`) or not
  (`black_le_6pct`), as `datasets/communities.toml`;
- split (seeded): by default 70% train / 20% valid / 10% test (`--fractions 0.7,0.2,0.1`, the
  demo's 90% / 10% with the 90% cut in two): the forest is fitted on the `train` rows (ignored
  by fairrep), and its predictions on the `valid` rows are the post-processing's calibration
  sample (held out from the forest's fit); fairrep reports on the `test` rows. The test and
  valid sizes are the fractions times the row count, rounded; train takes the rest. A larger
  calibration and test sample (e.g. `--fractions 0.4,0.3,0.3`) lowers the test KS's
  finite-sample noise floor.

The forest runs on one thread: with several, scikit-learn sums the trees' predictions in
thread order and the last bits of the output change from run to run.

With `--dataset law_school` (`--data` the Law School law_data.csv), the forest predicts ZFYA
from LSAT, UGPA, sex, race and region_first (one-hot; the one region_first = PO row dropped, as
datasets/law_school.toml), and the file has two attributes for the sequential
post-processing: `group:race` (White / non_White) and `group:sex` (the file's codes 1 / 2 as
sex_1 / sex_2), race first.

Run (versions pinned in scripts/requirements-fixtures.txt):

    .venv-fixtures/bin/python scripts/sklearn_predictions.py \
        --data ../shared/datasets/communities_crime/communities.data --seed 0 --out preds.csv
    .venv-fixtures/bin/python scripts/sklearn_predictions.py --fractions 0.4,0.3,0.3 \
        --data ../shared/datasets/communities_crime/communities.data --seed 0 --out preds.csv
"""

import argparse
import csv

import numpy as np
import sklearn
from sklearn.ensemble import RandomForestRegressor

NON_PREDICTIVE = 5  # state, county, community, communityname, fold
RACEPCTBLACK = 7  # column index in communities.data
THRESHOLD = 0.06
DEFAULT_FRACTIONS = "0.7,0.2,0.1"  # train, valid, test


def parse_fractions(text):
    """`--fractions` as (train, valid, test): three numbers in (0, 1) that sum to 1."""
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated fractions train,valid,test (e.g. 0.4,0.3,0.3), "
            f"found {len(parts)} value(s) in {text!r}"
        )
    values = []
    for name, part in zip(("train", "valid", "test"), parts):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} fraction: expected a number, found {part.strip()!r} in {text!r}"
            ) from None
        if not 0.0 < v < 1.0:
            raise argparse.ArgumentTypeError(
                f"{name} fraction: expected a number strictly between 0 and 1, found {v:g}"
            )
        values.append(v)
    total = sum(values)
    if abs(total - 1.0) > 1e-9:
        raise argparse.ArgumentTypeError(
            f"the fractions train,valid,test must sum to 1, found {text!r} (sum {total:.12g})"
        )
    return tuple(values)


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    cells = [r[NON_PREDICTIVE:] for r in rows]
    n_cols = len(cells[0])
    missing = [sum(1 for r in cells if r[j] == "?") for j in range(n_cols)]
    keep = [j for j in range(n_cols) if missing[j] <= 1]
    data = [[r[j] for j in keep] for r in cells if all(r[j] != "?" for j in keep)]
    data = np.array(data, dtype=float)
    black = np.array(
        [float(r[RACEPCTBLACK]) for r in rows if all(r[NON_PREDICTIVE + j] != "?" for j in keep)]
    )
    return data[:, :-1], data[:, -1], black


def load_law_school(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["region_first"] != "PO"]
    regions = sorted({r["region_first"] for r in rows})
    races = sorted({r["race"] for r in rows})
    x = np.array(
        [
            [float(r["LSAT"]), float(r["UGPA"]), float(r["sex"])]
            + [float(r["race"] == v) for v in races]
            + [float(r["region_first"] == v) for v in regions]
            for r in rows
        ]
    )
    y = np.array([float(r["ZFYA"]) for r in rows])
    race = np.array(["White" if r["race"] == "White" else "non_White" for r in rows])
    sex = np.array([f"sex_{r['sex']}" for r in rows])
    return x, y, [("race", race), ("sex", sex)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", choices=["communities", "law_school"], default="communities")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument(
        "--fractions",
        type=parse_fractions,
        default=DEFAULT_FRACTIONS,
        metavar="TRAIN,VALID,TEST",
        help=f"split fractions, each in (0, 1), summing to 1 (default {DEFAULT_FRACTIONS})",
    )
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.dataset == "communities":
        x, y, black = load(a.data)
        groups = [("group", np.where(black > THRESHOLD, "black_gt_6pct", "black_le_6pct"))]
    else:
        x, y, attrs = load_law_school(a.data)
        groups = [(f"group:{name}", g) for name, g in attrs]
    n = len(y)
    rng = np.random.default_rng(a.seed)
    order = rng.permutation(n)
    _, f_valid, f_test = a.fractions
    n_test = round(f_test * n)
    n_valid = round(f_valid * n)
    n_train = n - n_test - n_valid
    for name, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        if count < 1:
            ap.error(
                f"--fractions {','.join(f'{f:g}' for f in a.fractions)}: the {name} split of "
                f"{a.data} ({n} rows) would be empty; expected at least one row in each split"
            )
    split = np.empty(n, dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test : n_test + n_valid]] = "valid"
    split[order[n_test + n_valid :]] = "train"
    fit_rows = split == "train"
    forest = RandomForestRegressor(n_estimators=a.trees, random_state=a.seed, n_jobs=1)
    forest.fit(x[fit_rows], y[fit_rows])
    pred = forest.predict(x)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["prediction"] + [c for c, _ in groups] + ["target", "split"])
        for i in range(n):
            w.writerow(
                [repr(float(pred[i]))] + [g[i] for _, g in groups] + [repr(float(y[i])), split[i]]
            )
    print(
        f"{a.out}: {n} rows ({int(fit_rows.sum())} train, {n_valid} valid, {n_test} test), "
        f"{x.shape[1]} inputs, scikit-learn {sklearn.__version__}, numpy {np.__version__}"
    )


if __name__ == "__main__":
    main()
