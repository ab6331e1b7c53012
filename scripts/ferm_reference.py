#!/usr/bin/env python3
"""Reference values for crates/fairrep-ferm (FERM, Donini et al. NeurIPS 2018).

An independent implementation with the libraries the authors use (numpy, cvxopt,
scikit-learn), on small seeded synthetic problems (no real data rows):

  * the linear FERM projection: u = u_a - u_b (mean positive vectors of group 0 = a and
    group 1 = b), pivot j = argmax |u_j| (first on ties), x -> drop_j(x - (x_j / u_j) u);
  * the linear C-SVM (hinge loss, unpenalised bias) as a primal QP in (w, b, xi) with cvxopt,
    cross-checked against sklearn.svm.SVC(kernel="linear") (libsvm), on raw and projected data;
  * L2 logistic regression with sklearn (newton-cholesky), certified by the numpy gradient;
  * the kernel C-SVM dual and the kernel FERM dual (extra equality sum alpha y tau = 0), built
    as in the authors' ferm.py (cvxopt.solvers.qp with P = yy' o K, G = [-I; I], A = [y; y o tau]),
    RBF and linear kernels; the unconstrained RBF dual is cross-checked against sklearn SVC;
  * the bias b: the midpoint of the minimisers of the training hinge loss given w, found here
    by scanning the slope of the loss between consecutive breakpoints (explicit counting);
  * model selection: given stratified fold ids, mean CV accuracy and DEO per grid point, then
    the smallest DEO among the points within 0.9 x the best accuracy (and accuracy only).

The script exits non-zero (writing nothing) if cvxopt does not reach 'optimal', if cvxopt and
libsvm disagree beyond CROSS_TOL, if the logistic gradient is not ~0, or if a decision value
that a test compares by sign is closer to 0 than MARGIN_MIN.

Writes crates/fairrep-ferm/tests/fixtures/ferm.json.gz (gzip without timestamp).

Usage: python scripts/ferm_reference.py [--out crates/fairrep-ferm/tests/fixtures]
"""
import argparse
import gzip
import io
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import cvxopt  # noqa: E402
import cvxopt.solvers  # noqa: E402
import sklearn  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

GENERATOR = "scripts/ferm_reference.py"
CVXOPT_TOL = 1e-10      # cvxopt abstol = reltol = feastol (at 1e-11 it stalls on a 1e-9 dual residual)
CVXOPT_ACCEPT = 1e-9    # status 'unknown' is accepted when gap (abs or rel) and both residuals are below this
LIBSVM_TOL = 1e-10      # sklearn SVC tol (libsvm's KKT-violation stopping rule)
CROSS_TOL = 1e-5        # cvxopt vs libsvm: relative on objectives, absolute on w / alpha*y
MARGIN_MIN = 1e-4       # decision values compared by sign must be at least this far from 0
FREE_MARGIN = 1e-3      # alpha in [FREE_MARGIN C, (1 - FREE_MARGIN) C] counts as free (KKT checks)

cvxopt.solvers.options.update(
    {"show_progress": False, "abstol": CVXOPT_TOL, "reltol": CVXOPT_TOL, "feastol": CVXOPT_TOL,
     "maxiters": 200})

failures = []


def fail(msg):
    failures.append(msg)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def make_data(name, seed, n, n_test, d, binary_cols=0, shift=0.8):
    """Two groups (s=1 w.p. 0.4) whose features and labels both depend on s."""
    r = np.random.default_rng(seed)
    m = n + n_test
    s = (r.random(m) < 0.4).astype(np.int64)
    x = r.standard_normal((m, d))
    x[:, : min(2, d)] += shift * s[:, None]
    if binary_cols:
        b = (r.random((m, binary_cols)) < 0.3 + 0.3 * s[:, None]).astype(float)
        x = np.hstack([x, b])
    w = r.standard_normal(x.shape[1])
    logit = x @ w + 0.6 * s - 0.3 + 0.7 * r.standard_normal(m)
    y = (logit > 0).astype(np.int64)
    tr, te = slice(0, n), slice(n, m)
    for part, sl in (("train", tr), ("test", te)):
        for g in (0, 1):
            for lab in (0, 1):
                if not np.any((s[sl] == g) & (y[sl] == lab)):
                    raise SystemExit(f"{name}: {part} has no row with group {g}, label {lab}; change the seed")
    return {"name": name, "seed": seed, "rows": n, "cols": x.shape[1], "x": x[tr], "labels": y[tr],
            "groups": s[tr], "rows_test": n_test, "x_test": x[te], "labels_test": y[te],
            "groups_test": s[te]}


def pm(labels):
    return 2.0 * labels - 1.0


# --------------------------------------------------------------------------------------
# metrics (score > 0 is a positive prediction)
# --------------------------------------------------------------------------------------
def accuracy(f, labels):
    return float(np.mean((f > 0) == (labels == 1)))


def deo(f, labels, groups):
    tpr = [np.mean(f[(labels == 1) & (groups == g)] > 0) for g in (0, 1)]
    return float(abs(tpr[0] - tpr[1]))


# --------------------------------------------------------------------------------------
# linear FERM projection
# --------------------------------------------------------------------------------------
def fit_projection(x, labels, groups):
    ua = x[(labels == 1) & (groups == 0)].mean(axis=0)
    ub = x[(labels == 1) & (groups == 1)].mean(axis=0)
    u = ua - ub
    j = int(np.argmax(np.abs(u)))  # first maximum on ties
    assert u[j] != 0.0
    return u, j


def project(x, u, j):
    z = x - np.outer(x[:, j] / u[j], u)
    return np.delete(z, j, axis=1)


def pull_back(v, u, j):
    w = np.insert(v, j, 0.0)
    w[j] = -np.dot(np.delete(u, j), v) / u[j]
    return w


# --------------------------------------------------------------------------------------
# linear C-SVM: primal QP with cvxopt, cross-checked with libsvm
# --------------------------------------------------------------------------------------
def check_cvxopt(sol, name):
    if sol["status"] == "optimal":
        return
    gap = min(sol["gap"] or np.inf, abs(sol["relative gap"] or np.inf))
    res = max(sol["primal infeasibility"] or np.inf, sol["dual infeasibility"] or np.inf)
    if not (gap <= CVXOPT_ACCEPT and res <= CVXOPT_ACCEPT):
        fail(f"{name}: cvxopt status {sol['status']} gap {sol['gap']} rel {sol['relative gap']} "
             f"pinf {sol['primal infeasibility']} dinf {sol['dual infeasibility']} it {sol['iterations']}")


def hinge(y, f):
    return np.maximum(0.0, 1.0 - y * f)


def linear_svm(x, labels, c, name, cross_check=True):
    n, d = x.shape
    y = pm(labels)
    nv = d + 1 + n
    P = np.zeros((nv, nv))
    P[:d, :d] = np.eye(d)
    q = np.concatenate([np.zeros(d + 1), c * np.ones(n)])
    G = np.zeros((2 * n, nv))
    G[:n, :d] = -y[:, None] * x
    G[:n, d] = -y
    G[:n, d + 1:] = -np.eye(n)
    G[n:, d + 1:] = -np.eye(n)
    h = np.concatenate([-np.ones(n), np.zeros(n)])
    sol = cvxopt.solvers.qp(cvxopt.matrix(P), cvxopt.matrix(q), cvxopt.matrix(G), cvxopt.matrix(h))
    check_cvxopt(sol, name)
    xs = np.ravel(sol["x"])
    w, b_solver = xs[:d], xs[d]
    # b: the midpoint of the optimal interval given w (unique even without free SVs).
    b = hinge_bias(y, x @ w)
    alpha = np.clip(np.ravel(sol["z"])[:n], 0.0, c)
    primal = 0.5 * w @ w + c * hinge(y, x @ w + b).sum()
    primal_solver = 0.5 * w @ w + c * hinge(y, x @ w + b_solver).sum()
    if primal_solver < primal - 1e-9 * max(1.0, primal):
        fail(f"{name}: the hinge-optimal b is worse than cvxopt's ({primal} > {primal_solver})")
    v = (alpha * y) @ x
    dual = alpha.sum() - 0.5 * v @ v
    free = np.sum((alpha > FREE_MARGIN * c) & (alpha < (1 - FREE_MARGIN) * c))
    if not cross_check:
        return {"w": w, "b": b, "primal": primal, "dual": dual, "alpha": alpha, "free_sv": int(free)}
    if free == 0:
        fail(f"{name}: no free support vector, libsvm's b is not comparable")
    # libsvm cross-check
    sk = SVC(kernel="linear", C=c, tol=LIBSVM_TOL, max_iter=-1).fit(x, labels)
    w_sk = sk.coef_.ravel()
    b_sk = float(sk.intercept_[0])
    primal_sk = 0.5 * w_sk @ w_sk + c * hinge(y, x @ w_sk + b_sk).sum()
    err = max(np.max(np.abs(w - w_sk)), abs(b - b_sk), abs(primal - primal_sk) / max(1.0, abs(primal)))
    if err > CROSS_TOL:
        fail(f"{name}: cvxopt vs libsvm linear SVM differ by {err:.3e}")
    return {"w": w, "b": b, "primal": primal, "dual": dual, "alpha": alpha, "libsvm_disagreement": err,
            "free_sv": int(free)}


# --------------------------------------------------------------------------------------
# logistic regression (sklearn), certified by the gradient
# --------------------------------------------------------------------------------------
def logistic(x, labels, c, name):
    y = pm(labels)
    lr = LogisticRegression(C=c, solver="newton-cholesky", tol=1e-14, max_iter=1000).fit(x, labels)
    w = lr.coef_.ravel()
    b = float(lr.intercept_[0])
    m = y * (x @ w + b)
    obj = 0.5 * w @ w + c * np.sum(np.logaddexp(0.0, -m))
    p = 1.0 / (1.0 + np.exp(m))  # sigmoid(-m)
    gw = w - c * (y * p) @ x
    gb = -c * np.sum(y * p)
    gnorm = float(np.sqrt(gw @ gw + gb * gb))
    if gnorm > 1e-8:
        fail(f"{name}: sklearn logistic gradient norm {gnorm:.3e}")
    # Smallest Hessian eigenvalue at the solution: |theta - theta*| <= |grad| / lambda_min.
    xt = np.hstack([x, np.ones((len(y), 1))])
    hess = c * (xt.T * (p * (1 - p))) @ xt
    hess[: x.shape[1], : x.shape[1]] += np.eye(x.shape[1])
    lam = float(np.linalg.eigvalsh(hess)[0])
    return {"w": w, "b": b, "objective": obj, "gradient_norm": gnorm, "hessian_lambda_min": lam}


# --------------------------------------------------------------------------------------
# kernel SVM / kernel FERM dual with cvxopt (the authors' formulation)
# --------------------------------------------------------------------------------------
def gram(kind, gamma, a, b):
    if kind == "linear":
        return a @ b.T
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    return np.exp(-gamma * d2)


def hinge_bias(y, g):
    """Midpoint of the set of b minimising sum_i max(0, 1 - y_i (g_i + b)), by scanning the
    slope between consecutive breakpoints r = y - g (explicit counts)."""
    r = np.sort(y - g)
    pos_r = (y - g)[y > 0]
    neg_r = (y - g)[y < 0]
    lo = hi = None
    cand = np.concatenate([[r[0] - 1.0], (r[:-1] + r[1:]) / 2.0, [r[-1] + 1.0]])
    for k, t in enumerate(cand):
        slope = -np.sum(pos_r > t) + np.sum(neg_r < t)
        if slope == 0:
            # flat piece between breakpoints k-1 and k (0-based in r)
            lo, hi = r[k - 1], r[k]
            break
        if slope > 0:
            # the minimiser is the breakpoint where the slope changes sign
            lo = hi = r[k - 1]
            break
    assert lo is not None
    return 0.5 * (lo + hi)


def kernel_svm(data, kind, gamma, c, fair, name, cross_check=True):
    x, labels, groups = data["x"], data["labels"], data["groups"]
    y = pm(labels)
    n = len(y)
    K = gram(kind, gamma, x, x)
    P = np.outer(y, y) * K
    q = -np.ones(n)
    G = np.vstack([-np.eye(n), np.eye(n)])
    h = np.concatenate([np.zeros(n), c * np.ones(n)])
    A = y[None, :].copy()
    bvec = np.zeros(1)
    pa = (labels == 1) & (groups == 0)
    pb = (labels == 1) & (groups == 1)
    tau = K[pa].mean(axis=0) - K[pb].mean(axis=0)
    if fair:
        A = np.vstack([A, y * tau])
        bvec = np.zeros(2)
    sol = cvxopt.solvers.qp(cvxopt.matrix(P), cvxopt.matrix(q), cvxopt.matrix(G), cvxopt.matrix(h),
                            cvxopt.matrix(A), cvxopt.matrix(bvec))
    check_cvxopt(sol, name)
    alpha = np.clip(np.ravel(sol["x"]), 0.0, c)
    nu = np.ravel(sol["y"])
    coef = alpha * y
    g = K @ coef
    dual = alpha.sum() - 0.5 * coef @ g
    b = hinge_bias(y, g)
    f = g + b
    primal = 0.5 * coef @ g + c * hinge(y, f).sum()
    lam_min = float(np.linalg.eigvalsh(P)[0])
    free = (alpha > FREE_MARGIN * c) & (alpha < (1 - FREE_MARGIN) * c)
    kkt = y[free] - g[free] - nu[0] - (nu[1] * tau[free] if fair else 0.0)
    kkt_max = float(np.max(np.abs(kkt))) if np.any(free) else float("nan")
    if cross_check and not np.any(free):
        fail(f"{name}: no free support vector")
    elif np.any(free) and kkt_max > 1e-6:
        fail(f"{name}: cvxopt KKT residual on free SVs {kkt_max:.3e}")
    out = {"K": K, "alpha": alpha, "nu": nu, "tau": tau, "dual": dual, "primal": primal, "b": b,
           "coef": coef, "lambda_min": lam_min, "kkt_free_max": kkt_max, "free_sv": int(free.sum()),
           "fairness_residual": float(coef @ tau)}
    if kind == "rbf" and not fair and cross_check:
        sk = SVC(kernel="rbf", gamma=gamma, C=c, tol=LIBSVM_TOL, max_iter=-1).fit(x, labels)
        coef_sk = np.zeros(n)
        coef_sk[sk.support_] = sk.dual_coef_.ravel()
        err = max(np.max(np.abs(coef_sk - coef)), abs(float(sk.intercept_[0]) - b))
        if err > CROSS_TOL:
            fail(f"{name}: cvxopt vs libsvm RBF dual differ by {err:.3e}")
        out["libsvm_disagreement"] = err
    return out


def kernel_decision(data, kind, gamma, coef, b, x_new):
    return gram(kind, gamma, x_new, data["x"]) @ coef + b


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------
def stratified_folds(labels, groups, k, seed):
    r = np.random.default_rng(seed)
    folds = np.zeros(len(labels), dtype=np.int64)
    nxt = 0
    for g in (0, 1):
        for lab in (0, 1):
            idx = np.flatnonzero((groups == g) & (labels == lab))
            r.shuffle(idx)
            for i in idx:
                folds[i] = nxt
                nxt = (nxt + 1) % k
    return folds


def fit_predict(estimator, tr, x_val, point, name):
    c, gamma = point["c"], point.get("gamma")
    if estimator in ("linear_svm", "linear_ferm"):
        x = tr["x"]
        if estimator == "linear_ferm":
            u, j = fit_projection(tr["x"], tr["labels"], tr["groups"])
            x, x_val = project(x, u, j), project(x_val, u, j)
        fit = linear_svm(x, tr["labels"], c, name, cross_check=False)
        return x_val @ fit["w"] + fit["b"]
    kind = "rbf" if gamma is not None else "linear"
    fair = estimator.startswith("kernel_ferm")
    fit = kernel_svm(tr, kind, gamma, c, fair, name, cross_check=False)
    return kernel_decision(tr, kind, gamma, fit["coef"], fit["b"], x_val)


def selection_case(data, estimator, grid_c, grid_gamma, k, seed, name):
    folds = stratified_folds(data["labels"], data["groups"], k, seed)
    points = [{"c": c, "gamma": gm} for c in grid_c for gm in (grid_gamma or [None])]
    reports = []
    for p in points:
        accs, deos, margins = [], [], []
        for f in range(k):
            trm, vam = folds != f, folds == f
            tr = {"x": data["x"][trm], "labels": data["labels"][trm], "groups": data["groups"][trm]}
            score = fit_predict(estimator, tr, data["x"][vam], p, f"{name} C={p['c']} gamma={p['gamma']} fold {f}")
            margins.append(float(np.min(np.abs(score))))
            accs.append(accuracy(score, data["labels"][vam]))
            deos.append(deo(score, data["labels"][vam], data["groups"][vam]))
        margin = min(margins)
        if margin < MARGIN_MIN:
            fail(f"{name}: a validation decision value is {margin:.2e} from 0 (< {MARGIN_MIN})")
        reports.append({"c": p["c"], "gamma": p["gamma"], "fold_accuracy": accs, "fold_deo": deos,
                        "mean_accuracy": float(np.mean(accs)), "mean_deo": float(np.mean(deos)),
                        "min_abs_score": margin})
    best_acc = max(r["mean_accuracy"] for r in reports)
    chosen_acc = next(i for i, r in enumerate(reports) if r["mean_accuracy"] == best_acc)
    ok = [i for i, r in enumerate(reports) if r["mean_accuracy"] >= 0.9 * best_acc]
    chosen_fair = min(ok, key=lambda i: (reports[i]["mean_deo"], -reports[i]["mean_accuracy"], i))
    return {"name": name, "data": data["name"], "estimator": estimator, "grid_c": grid_c,
            "grid_gamma": grid_gamma, "fold_ids": folds, "points": reports,
            "chosen_accuracy": chosen_acc, "chosen_ferm": chosen_fair}


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------
def tolist(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {k: tolist(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [tolist(x) for x in v]
    return v


def check_margin(name, f):
    m = float(np.min(np.abs(f)))
    if m < MARGIN_MIN:
        fail(f"{name}: a test decision value is {m:.2e} from 0 (< {MARGIN_MIN})")
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="crates/fairrep-ferm/tests/fixtures")
    args = ap.parse_args()

    datasets = [
        make_data("small", seed=11, n=60, n_test=40, d=4),
        make_data("mixed", seed=23, n=90, n_test=50, d=5, binary_cols=3),
        make_data("cv", seed=37, n=120, n_test=10, d=4, shift=1.0),
    ]
    by_name = {d["name"]: d for d in datasets}

    projections, linear_cases, logistic_cases, kernel_cases, selections = [], [], [], [], []
    for d in datasets[:2]:
        u, j = fit_projection(d["x"], d["labels"], d["groups"])
        z, zt = project(d["x"], u, j), project(d["x_test"], u, j)
        projections.append({"data": d["name"], "u": u, "pivot": j, "z": z.ravel(), "z_test": zt.ravel()})
        for projected in (False, True):
            x, xt = (z, zt) if projected else (d["x"], d["x_test"])
            for c in (0.1, 1.0):
                name = f"linear_svm/{d['name']}/{'projected' if projected else 'raw'}/C={c}"
                fit = linear_svm(x, d["labels"], c, name)
                ft = xt @ fit["w"] + fit["b"]
                case = {"name": name, "data": d["name"], "projected": projected, "c": c, "w": fit["w"],
                        "b": fit["b"], "primal_objective": fit["primal"], "dual_objective": fit["dual"],
                        "libsvm_disagreement": fit["libsvm_disagreement"], "free_sv": fit["free_sv"],
                        "test_decision": ft, "test_deo": deo(ft, d["labels_test"], d["groups_test"]),
                        "test_accuracy": accuracy(ft, d["labels_test"]),
                        "min_abs_test_decision": check_margin(name, ft)}
                if projected:
                    w_full = pull_back(fit["w"], u, j)
                    case["w_original_space"] = w_full
                    case["w_dot_u"] = float(w_full @ u)
                linear_cases.append(case)
            name = f"logistic/{d['name']}/{'projected' if projected else 'raw'}/C=1"
            lg = logistic(x, d["labels"], 1.0, name)
            ft = xt @ lg["w"] + lg["b"]
            logistic_cases.append({"name": name, "data": d["name"], "projected": projected, "c": 1.0,
                                   "w": lg["w"], "b": lg["b"], "objective": lg["objective"],
                                   "gradient_norm": lg["gradient_norm"],
                                   "hessian_lambda_min": lg["hessian_lambda_min"], "test_decision": ft})
        for kind, gamma in (("rbf", 0.5), ("linear", None)):
            for fair in (False, True):
                for c in (0.5, 5.0):
                    name = f"kernel/{d['name']}/{kind}/{'ferm' if fair else 'svm'}/C={c}"
                    fit = kernel_svm(d, kind, gamma, c, fair, name)
                    ft = kernel_decision(d, kind, gamma, fit["coef"], fit["b"], d["x_test"])
                    kernel_cases.append({
                        "name": name, "data": d["name"], "kernel": kind, "gamma": gamma, "fair": fair,
                        "c": c, "alpha": fit["alpha"], "alpha_unique": kind == "rbf",
                        "tau": fit["tau"], "equality_duals": fit["nu"],
                        "dual_objective": fit["dual"], "primal_objective": fit["primal"], "b": fit["b"],
                        "lambda_min": fit["lambda_min"], "free_sv": fit["free_sv"],
                        "kkt_free_max": fit["kkt_free_max"], "fairness_residual": fit["fairness_residual"],
                        "kmax": float(np.max(np.abs(fit["K"]))),
                        "libsvm_disagreement": fit.get("libsvm_disagreement"),
                        "train_decision": fit["K"] @ fit["coef"] + fit["b"],
                        "test_decision": ft, "test_deo": deo(ft, d["labels_test"], d["groups_test"]),
                        "test_accuracy": accuracy(ft, d["labels_test"]),
                        "min_abs_test_decision": check_margin(name, ft)})

    cv = by_name["cv"]
    selections.append(selection_case(cv, "linear_svm", [0.01, 0.1, 1.0], None, 5, 5, "select/linear_svm"))
    selections.append(selection_case(cv, "linear_ferm", [0.01, 0.1, 1.0], None, 5, 5, "select/linear_ferm"))
    selections.append(selection_case(cv, "kernel_svm_rbf", [0.1, 1.0, 10.0], [0.1, 0.5], 5, 5, "select/kernel_svm_rbf"))
    selections.append(selection_case(cv, "kernel_ferm_rbf", [0.1, 1.0, 10.0], [0.1, 0.5], 5, 5, "select/kernel_ferm_rbf"))

    worst_cross = max(c["libsvm_disagreement"] for c in linear_cases + kernel_cases
                      if c.get("libsvm_disagreement") is not None)
    print(f"max cvxopt vs libsvm disagreement: {worst_cross:.3e}")
    for s in selections:
        print(s["name"], "chosen (accuracy, ferm):", s["chosen_accuracy"], s["chosen_ferm"],
              [(p["c"], p["gamma"], round(p["mean_accuracy"], 3), round(p["mean_deo"], 3)) for p in s["points"]])
    if failures:
        print("FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)

    data_out = []
    for d in datasets:
        data_out.append({"name": d["name"], "seed": d["seed"], "rows": d["rows"], "cols": d["cols"],
                         "x": d["x"].ravel(), "labels": d["labels"], "groups": d["groups"],
                         "rows_test": d["rows_test"], "x_test": d["x_test"].ravel(),
                         "labels_test": d["labels_test"], "groups_test": d["groups_test"]})
    doc = {"generator": GENERATOR,
           "versions": {"python": sys.version.split()[0], "numpy": np.__version__,
                        "cvxopt": cvxopt.__version__, "scikit-learn": sklearn.__version__},
           "cvxopt_tolerance": CVXOPT_TOL, "cvxopt_accept": CVXOPT_ACCEPT, "libsvm_tolerance": LIBSVM_TOL,
           "max_libsvm_disagreement": worst_cross, "margin_min": MARGIN_MIN,
           "datasets": data_out, "projection": projections, "linear_svm": linear_cases,
           "logistic": logistic_cases, "kernel": kernel_cases, "selection": selections}
    doc = tolist(doc)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ferm.json.gz")
    # gzip without a timestamp (mtime=0) so regenerating gives identical bytes.
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as raw, io.TextIOWrapper(raw, "utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"), allow_nan=False)
        fh.write("\n")
    print(f"wrote {path} ({os.path.getsize(path) / 1e3:.1f} kB)")


if __name__ == "__main__":
    main()
