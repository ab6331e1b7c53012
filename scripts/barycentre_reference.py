#!/usr/bin/env python3
"""Reference fixtures for crates/fairrep-postprocess (fair regression by Wasserstein barycentres).

Estimator (Chzhen, Denis, Hebiri, Oneto, Pontil, NeurIPS 2020), for groups s with calibration
predictions f_i and jitter draws e_i ~ U([-sigma, sigma]):

    y_i   = f_i + e_i                                  (jittered calibration values)
    p_g   = n_g / n
    F_s(t) = #{i in s : y_i <= t} / n_s                (right-continuous empirical CDF)
    Q_g(u) = inf {t : F_g(t) >= u}, clamped to min_g at u = 0 (generalised inverse)
    g(f, s) = sum_g' p_g' Q_g'(F_s(f + e))              (e: the prediction's own draw)
    output  = (1 - alpha) * f + alpha * g

This file implements it literally (F by counting, Q by scanning for the first value whose CDF
reaches u, with u an exact fraction), independently of the Rust code (which computes Q through
an integer ceiling). The sequential case (EquiPy's MultiWasserstein) fits attribute k on the
calibration predictions after steps 1..k-1 applied with alpha = 1 and the same calibration
draws that fitted those steps.

It also ports the authors' public demo map (lucaoneto/NIPS2020_Fairness, f_NIPS.m: two groups,
own-group term replaced by f, the other group's quantile searched on a 100-point grid over the
pooled calibration range, strict "<" CDF) and checks that, with its grid replaced by the
calibration values, its other-group term is the estimator's up to rounding the CDF level to the
nearest rather than up (demo_comparison); the comparison is recorded in the fixture.

Float conventions: every output is computed with the same IEEE-754 double operations in the
same order as the Rust code ((1 - alpha) * f + alpha * g, the sum over groups in declared order
starting from 0.0, p_g = n_g / n), so the Rust test compares outputs for exact equality. The
metrics (MSE by numpy's pairwise sum, KS by scipy.stats.ks_2samp, W1 by
scipy.stats.wasserstein_distance) are compared at 1e-12 because their summation orders differ.

Writes crates/fairrep-postprocess/tests/fixtures/barycentre.json.gz (gzip, mtime = 0, so
regenerating gives identical bytes). Pinned versions: scripts/requirements-fixtures.txt.

Usage:  .venv-fixtures/bin/python scripts/barycentre_reference.py [--out PATH]
"""
import argparse
import gzip
import io
import json
import os
import platform
import sys
from fractions import Fraction

import numpy as np
import scipy
from scipy import stats

GENERATOR = "scripts/barycentre_reference.py"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "fairrep-postprocess", "tests", "fixtures", "barycentre.json.gz")
ALPHAS = [i / 10 for i in range(11)]
DEMO_GRID = 100


# --------------------------------------------------------------------------------------
# estimator
# --------------------------------------------------------------------------------------
class Fit:
    """Sorted jittered calibration values and weights per group (declared order)."""

    def __init__(self, predictions, groups, draws, order):
        predictions = np.asarray(predictions, dtype=np.float64)
        draws = np.asarray(draws, dtype=np.float64)
        groups = np.asarray(groups)
        n = len(predictions)
        self.order = list(order)
        self.sorted = {}
        self.weights = {}
        for g in self.order:
            mask = groups == g
            vals = np.sort(predictions[mask] + draws[mask])
            assert len(vals) >= 2 and vals[0] != vals[-1], g
            self.sorted[g] = vals
            self.weights[g] = int(mask.sum()) / n

    def cdf(self, g, t):
        vals = self.sorted[g]
        return Fraction(int(np.count_nonzero(vals <= t)), len(vals))

    def quantile(self, g, u):
        vals = self.sorted[g]
        n = len(vals)
        for i, v in enumerate(vals):
            # F_g(v) counts every value <= v (ties included).
            if Fraction(int(np.count_nonzero(vals <= v)), n) >= u:
                return float(v)
        raise AssertionError("u > 1")

    def fair(self, f, group, e):
        u = self.cdf(group, f + e)
        total = 0.0
        for g in self.order:
            total += self.weights[g] * self.quantile(g, u)
        return total

    def apply(self, f, group, alpha, e):
        return (1.0 - alpha) * f + alpha * self.fair(f, group, e)


def ks_between(values, groups, order):
    values, groups = np.asarray(values), np.asarray(groups)
    return max(stats.ks_2samp(values[groups == a], values[groups == b]).statistic
               for i, a in enumerate(order) for b in order[i + 1:])


def w1_between(values, groups, order):
    values, groups = np.asarray(values), np.asarray(groups)
    return max(stats.wasserstein_distance(values[groups == a], values[groups == b])
               for i, a in enumerate(order) for b in order[i + 1:])


# --------------------------------------------------------------------------------------
# the authors' demo map (f_NIPS.m), ported for the comparison only
# --------------------------------------------------------------------------------------
def demo_map(yl, yt, sl, st, grid=None):
    """f_NIPS.m; `grid` replaces its 100-point linspace over the calibration range."""
    yl, yt, sl, st = map(np.asarray, (yl, yt, sl, st))
    u = sorted(set(sl.tolist()))
    counts = [int(np.sum(sl == v)) for v in u]
    i_major, i_minor = int(np.argmax(counts)), int(np.argmin(counts))
    n_major, n_minor = counts[i_major], counts[i_minor]
    p = n_minor / len(sl)
    if grid is None:
        grid = np.linspace(yl.min(), yl.max(), DEMO_GRID)
    out = np.zeros(len(yt))
    for i in range(len(yt)):
        if st[i] == u[i_minor]:
            own, other, n_own, n_other, w_own = u[i_minor], u[i_major], n_minor, n_major, p
        else:
            own, other, n_own, n_other, w_own = u[i_major], u[i_minor], n_major, n_minor, 1 - p
        level = np.sum(yl[sl == own] < yt[i]) / n_own
        best, ts = np.inf, None
        for t in grid:
            d = abs(np.sum(yl[sl == other] < t) / n_other - level)
            if d < best:
                best, ts = d, t
        out[i] = w_own * yt[i] + (1 - w_own) * ts
    return out


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def single_case(name, seed, spec, order, sigma, n_test, round_to):
    """spec: {group: (n_calibration, sampler(rng, n))}."""
    rng = np.random.default_rng(seed)
    cal_f, cal_g = [], []
    for g, (n, sampler) in spec.items():
        cal_f.extend(sampler(rng, n).tolist())
        cal_g.extend([g] * n)
    perm = rng.permutation(len(cal_f))
    cal_f = np.asarray(cal_f)[perm]
    cal_g = [cal_g[i] for i in perm]
    if round_to is not None:
        cal_f = np.round(cal_f, round_to)
    cal_draws = rng.uniform(-sigma, sigma, len(cal_f)) if sigma > 0 else np.zeros(len(cal_f))
    fit = Fit(cal_f, cal_g, cal_draws, order)

    # Test rows: fresh draws of each group, exact calibration values (ties) and values
    # outside the calibration range.
    test_f, test_g = [], []
    for g, (_, sampler) in spec.items():
        m = n_test // len(spec)
        vals = sampler(rng, m)
        if round_to is not None:
            vals = np.round(vals, round_to)
        test_f.extend(vals.tolist())
        test_g.extend([g] * m)
        own = cal_f[np.asarray(cal_g) == g]
        test_f.extend([float(own[0]), float(own.min()) - 1.0, float(own.max()) + 1.0])
        test_g.extend([g] * 3)
    test_f = np.asarray(test_f)
    test_draws = rng.uniform(-sigma, sigma, len(test_f)) if sigma > 0 else np.zeros(len(test_f))
    targets = test_f + rng.normal(0.0, 0.1, len(test_f))

    outputs = [[fit.apply(float(f), g, a, float(e)) for f, g, e in zip(test_f, test_g, test_draws)]
               for a in ALPHAS]
    curve = []
    for a, out in zip(ALPHAS, outputs):
        out = np.asarray(out)
        mse = float(np.mean((out - targets) ** 2))
        curve.append({"alpha": a, "mse": mse, "rmse": float(np.sqrt(mse)),
                      "ks": float(ks_between(out, test_g, order)),
                      "w1": float(w1_between(out, test_g, order))})
    cal_fair = [fit.apply(float(f), g, 1.0, float(e)) for f, g, e in zip(cal_f, cal_g, cal_draws)]
    case = {
        "name": name,
        "groups": order,
        "jitter_scale": sigma,
        "calibration": {"predictions": cal_f.tolist(), "groups": cal_g,
                        "draws": cal_draws.tolist()},
        "fit": {"weights": [fit.weights[g] for g in order],
                "sorted": [fit.sorted[g].tolist() for g in order]},
        "test": {"predictions": test_f.tolist(), "groups": test_g, "draws": test_draws.tolist(),
                 "targets": targets.tolist()},
        "alphas": ALPHAS,
        "outputs": outputs,
        "curve": curve,
        "calibration_fair": cal_fair,
        "calibration_fair_ks": float(ks_between(cal_fair, cal_g, order)),
    }
    return case, fit, (cal_f, cal_g, cal_draws, test_f, test_g, test_draws)


def demo_comparison(fit, data, order):
    """Our alpha = 1 map vs the ported demo map on a two-group case.

    Per row, both are w_s * (own term) + (1 - w_s) * (other term). The own terms differ by
    construction (the demo uses y = f + e itself, the estimator Q_s(F_s(y))). The other term
    of the demo is the grid point whose strict CDF level #{o < t} / n_o is nearest to
    u = #{s < y} / n_s. With the grid replaced by the pooled calibration values, that point
    must lie in (w_(j-1), w_(j+1)], where w are the sorted values of group o and
    w_(j) = Q_o(u), j = max(ceil(n_o u), 1), is the estimator's other term: the two CDF levels
    nearest to u are those of the stretches on either side of w_(j). The search rounds the
    level to the nearest, the generalised inverse rounds it up; nothing else differs. Exits
    non-zero when a row breaks this. Also returns (for the record) the distance between the
    two maps with the demo's own 100-point grid.
    """
    cal_f, cal_g, cal_draws, test_f, test_g, test_draws = data
    assert len(order) == 2
    yl = cal_f + cal_draws
    lo, hi = yl.min(), yl.max()
    # Only rows inside the pooled calibration range (the demo's grid stops there).
    keep = [i for i in range(len(test_f)) if lo <= test_f[i] + test_draws[i] <= hi]
    yt = test_f[keep] + test_draws[keep]
    st = [test_g[i] for i in keep]
    exact = demo_map(yl, yt, cal_g, st, grid=np.sort(yl))
    coarse = demo_map(yl, yt, cal_g, st)
    ours = np.array([fit.fair(float(test_f[i]), test_g[i], float(test_draws[i])) for i in keep])
    rounded_up = 0
    for j, i in enumerate(keep):
        s = test_g[i]
        o = order[1] if s == order[0] else order[0]
        w = fit.weights[s]
        u = fit.cdf(s, yt[j])
        own = fit.sorted[s]
        if Fraction(int(np.count_nonzero(own < yt[j])), len(own)) != u:
            sys.exit(f"row {i}: the prediction ties a calibration value; the comparison needs none")
        vals = fit.sorted[o]
        n_o = len(vals)
        jj = max(-(-(u.numerator * n_o) // u.denominator), 1)
        v = vals[jj - 1]
        assert v == fit.quantile(o, u)
        below = vals[jj - 2] if jj >= 2 else -np.inf
        above = vals[jj] if jj < n_o else np.inf
        ts = (exact[j] - w * yt[j]) / (1 - w)
        # ts is a grid value recovered through (x - w y) / (1 - w): allow its rounding.
        tol = 1e-12 * max(1.0, abs(ts))
        if not (below - tol < ts <= above + tol):
            sys.exit(f"row {i}: demo search picked {ts}, outside ({below}, {above}] around Q_o(u) = {v}")
        rounded_up += int(abs(ts - v) <= tol)
    grid_step = (hi - lo) / (DEMO_GRID - 1)
    diff = np.abs(coarse - ours)
    return {
        "rows": len(keep),
        "exact_grid_rows_equal_to_estimator": rounded_up,
        "authors_grid_step": float(grid_step),
        "authors_grid_max_abs_diff": float(diff.max()),
        "authors_grid_mean_abs_diff": float(diff.mean()),
    }


def sequential_case(seed):
    rng = np.random.default_rng(seed)
    n = 300
    sex = rng.choice(["f", "m"], size=n, p=[0.45, 0.55])
    race = rng.choice(["x", "y", "z"], size=n, p=[0.5, 0.3, 0.2])
    shift = {"f": -0.1, "m": 0.1, "x": 0.0, "y": 0.15, "z": -0.2}

    def base(s, r, k):
        return np.round(0.5 + np.array([shift[a] + shift[b] for a, b in zip(s, r)])
                        + 0.1 * rng.standard_normal(k), 2)

    cal_f = base(sex, race, n)
    orders = [["f", "m"], ["x", "y", "z"]]
    sigmas = [1e-4, 1e-4]
    cal_groups = [sex.tolist(), race.tolist()]
    cal_draws = [rng.uniform(-s, s, n) for s in sigmas]
    fits, current = [], cal_f.copy()
    for k in range(2):
        fit = Fit(current, cal_groups[k], cal_draws[k], orders[k])
        fits.append(fit)
        current = np.array([fit.apply(float(v), g, 1.0, float(e))
                            for v, g, e in zip(current, cal_groups[k], cal_draws[k])])

    m = 60
    t_sex = rng.choice(["f", "m"], size=m)
    t_race = rng.choice(["x", "y", "z"], size=m)
    test_f = base(t_sex, t_race, m)
    test_groups = [t_sex.tolist(), t_race.tolist()]
    test_draws = [rng.uniform(-s, s, m) for s in sigmas]
    alpha_sets = [[1.0, 1.0], [0.5, 1.0], [1.0, 0.3], [0.0, 0.0], [0.2, 0.7]]
    outputs = []
    for alphas in alpha_sets:
        stages, cur = [], test_f.copy()
        for k in range(2):
            cur = np.array([fits[k].apply(float(v), g, alphas[k], float(e))
                            for v, g, e in zip(cur, test_groups[k], test_draws[k])])
            stages.append(cur.tolist())
        outputs.append({"alphas": alphas, "stages": stages})
    return {
        "name": "sex_then_race",
        "attributes": ["sex", "race"],
        "groups": orders,
        "jitter_scales": sigmas,
        "calibration": {"predictions": cal_f.tolist(), "groups": cal_groups,
                        "draws": [d.tolist() for d in cal_draws]},
        "fit": [{"weights": [f.weights[g] for g in o], "sorted": [f.sorted[g].tolist() for g in o]}
                for f, o in zip(fits, orders)],
        "test": {"predictions": test_f.tolist(), "groups": test_groups,
                 "draws": [d.tolist() for d in test_draws]},
        "outputs": outputs,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    def normal(mu, sd):
        return lambda rng, k: rng.normal(mu, sd, k)

    cases = []
    two, two_fit, two_data = single_case(
        "two_groups_ties", 20200,
        {"b": (120, normal(0.30, 0.10)), "a": (80, normal(0.55, 0.15))},
        order=["b", "a"], sigma=1e-4, n_test=40, round_to=2)
    cases.append(two)
    three, _, _ = single_case(
        "three_groups_ties", 20201,
        {"g0": (50, normal(0.0, 1.0)),
         "g1": (90, lambda rng, k: rng.choice([0.1, 0.2, 0.3], size=k)),
         "g2": (30, normal(2.0, 0.5))},
        order=["g0", "g1", "g2"], sigma=1e-3, n_test=45, round_to=1)
    cases.append(three)
    const, _, _ = single_case(
        "constant_group_with_jitter", 20202,
        {"c": (40, lambda rng, k: np.full(k, 0.5)), "d": (60, normal(0.8, 0.2))},
        order=["c", "d"], sigma=1e-3, n_test=30, round_to=None)
    cases.append(const)
    nojit, _, _ = single_case(
        "ties_without_jitter", 20203,
        {"u": (30, lambda rng, k: rng.choice([1.0, 2.0, 3.0, 4.0], size=k)),
         "v": (45, normal(3.0, 1.0))},
        order=["u", "v"], sigma=0.0, n_test=30, round_to=1)
    cases.append(nojit)

    # The estimator and the authors' demo map agree up to the demo's discretisation.
    demo = demo_comparison(two_fit, two_data, two["groups"])

    out = {
        "generator": GENERATOR,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__},
        "alphas": ALPHAS,
        "cases": cases,
        "sequential": [sequential_case(20204)],
        "demo_comparison": {"case": "two_groups_ties", **demo},
    }
    text = json.dumps(out, indent=None, separators=(",", ":"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # gzip without a timestamp (mtime=0) so regenerating gives identical bytes.
    with gzip.GzipFile(args.out, "wb", compresslevel=9, mtime=0) as raw, \
            io.TextIOWrapper(raw, "utf-8") as fh:
        fh.write(text)
    print(f"wrote {args.out}: {len(cases)} cases + 1 sequential; demo comparison {demo}")
    for c in cases:
        print(f"  {c['name']}: calibration KS at alpha=1 {c['calibration_fair_ks']:.4f}, "
              f"test KS alpha=0 {c['curve'][0]['ks']:.3f} -> alpha=1 {c['curve'][-1]['ks']:.3f}")


if __name__ == "__main__":
    main()
