#!/usr/bin/env python3
"""Time peer libraries on the CPU: value + gradient w.r.t. x of the debiased Sinkhorn
divergence (MATH.md convention: cost |x-y|^2/2, eps in cost units) or of the biased Gaussian
MMD^2, for the point clouds stored in two .npy files (uniform weights unless --a/--b given).

  python scripts/bench_peers.py --x X.npy --y Y.npy --eps 0.1 [--kind sinkhorn|mmd]
         [--bandwidth S] [--repeats R] [--threads T] [--tol TOL] [--max-iter N]
         [--scaling Q] [--dtype float64|float32] [--a A.npy --b B.npy] [--libs pot,geomloss,...]

Prints ONE JSON line per (library, kind) on stdout:
  {"lib", "kind", "n", "m", "d", "eps", "seconds_median", "value", "marginal_error", "threads",
   + "dtype", "repeats", "tol", "note" (+ "bandwidth" for mmd)}
Timings: one warm-up call, then the median of --repeats calls; imports, file loading and the
conversion to the library's tensors are outside the timed region (a timed call includes the
cost matrices, the solve and the gradient). "value" is in the MATH.md convention (S_eps, or
MMD2_b = 2 x GeomLoss "gaussian"). "marginal_error" = |P1 - a|_1 + |P'1 - b|_1 of the x-y plan,
the worst of the three plans for POT (null for MMD), computed outside the timed region.

Libraries (kind sinkhorn):
  pot        POT ot.solve_sample(debias=True, reg=2 eps, metric="sqeuclidean", numpy backend:
             log-domain Sinkhorn, stop when the L2 column-marginal error < tol/sqrt(max(n,m)),
             which bounds the L1 criterion) + the closed-form envelope gradient
             a_i (xbar_i - ybar_i) from its three plans. Its self terms use plain alternating
             updates, which can stall until --max-iter: the reported marginal_error shows it.
  pot-torch  the same solve on the torch backend with grad="envelope" + backward (torch only).
  geomloss   GeomLoss SamplesLoss("sinkhorn", p=2, blur=sqrt(eps), scaling=Q, debias=True,
             backend="tensorized") + backward. GeomLoss has no tolerance: it runs a fixed
             eps-scaling schedule (Q = --scaling), so marginal_error is what that schedule reached.
Libraries (kind mmd, biased V-statistic, bandwidth --bandwidth, default: median heuristic):
  numpy      numpy float reference: kernel matrices + closed-form gradient.
  geomloss   SamplesLoss("gaussian", blur=S, backend="tensorized") + backward (value x 2).
"""
import argparse
import json
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--x", required=True, help="(n, d) .npy")
    ap.add_argument("--y", required=True, help="(m, d) .npy")
    ap.add_argument("--a", default=None, help="optional (n,) weights .npy (normalised)")
    ap.add_argument("--b", default=None, help="optional (m,) weights .npy (normalised)")
    ap.add_argument("--eps", type=float, default=0.1, help="entropic temperature, cost units")
    ap.add_argument("--kind", choices=["sinkhorn", "mmd"], default="sinkhorn")
    ap.add_argument("--bandwidth", type=float, default=None, help="MMD Gaussian bandwidth s (default: median heuristic)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-5, help="L1 marginal-error tolerance (Sinkhorn)")
    ap.add_argument("--max-iter", type=int, default=10000, help="max Sinkhorn iterations per OT problem")
    ap.add_argument("--scaling", type=float, default=0.9, help="GeomLoss eps-scaling factor")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--libs", default=None, help="comma list among pot,pot-torch,geomloss,numpy (default: all available for the kind)")
    return ap.parse_args()


ARGS = parse()
# Thread count must be fixed before numpy / torch load their thread pools.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = str(ARGS.threads)

import math  # noqa: E402
import statistics  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore")

try:
    import torch  # noqa: E402
    torch.set_num_threads(ARGS.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    HAVE_TORCH = True
except Exception:  # torch is optional
    HAVE_TORCH = False
try:
    from geomloss import SamplesLoss  # noqa: E402
    HAVE_GEOMLOSS = HAVE_TORCH
except Exception:
    HAVE_GEOMLOSS = False
import ot  # noqa: E402


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def marginal_error(P, a, b):
    P = np.asarray(P, dtype=np.float64)
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def emit(lib, secs, value, merr, note=None, **extra):
    rec = {"lib": lib, "kind": ARGS.kind, "n": N, "m": M, "d": D, "eps": ARGS.eps,
           "seconds_median": secs, "value": value, "marginal_error": merr,
           "threads": ARGS.threads, "dtype": ARGS.dtype, "repeats": ARGS.repeats,
           "tol": ARGS.tol if ARGS.kind == "sinkhorn" else None, "note": note}
    rec.update(extra)
    print(json.dumps(rec), flush=True)


# ------------------------------------------------------------------ data
X64 = np.load(ARGS.x).astype(np.float64)
Y64 = np.load(ARGS.y).astype(np.float64)
if X64.ndim == 1:
    X64 = X64[:, None]
if Y64.ndim == 1:
    Y64 = Y64[:, None]
N, D = X64.shape
M = Y64.shape[0]
A64 = np.load(ARGS.a).astype(np.float64) if ARGS.a else np.full(N, 1.0 / N)
B64 = np.load(ARGS.b).astype(np.float64) if ARGS.b else np.full(M, 1.0 / M)
A64 /= A64.sum()
B64 /= B64.sum()
NPD = np.float64 if ARGS.dtype == "float64" else np.float32
X, Y, A, B = (v.astype(NPD) for v in (X64, Y64, A64, B64))
if ARGS.libs:
    LIBS = ARGS.libs.split(",")
elif ARGS.kind == "sinkhorn":
    LIBS = ["pot", "pot-torch", "geomloss"]
else:
    LIBS = ["numpy", "geomloss"]


# ------------------------------------------------------------------ Sinkhorn
def pot_stop_thr():
    # POT stops on the L2 norm of the column-marginal error (rows are exact after its last
    # update); |.|_1 <= sqrt(m)|.|_2, so this threshold guarantees the L1 criterion.
    return ARGS.tol / math.sqrt(max(N, M))


def pot_solve(Xb, Yb, Ab, Bb, grad):
    # sqeuclidean = |x-y|^2 = 2 C: same plans at reg = 2 eps, values doubled.
    return ot.solve_sample(Xb, Yb, Ab, Bb, metric="sqeuclidean", reg=2.0 * ARGS.eps,
                           debias=True, max_iter=ARGS.max_iter, tol=pot_stop_thr(), grad=grad)


def pot_numpy_grad(res, Xb, Yb):
    Pab = res.log["res_ab"].plan
    Paa = res.log["res_aa"].plan
    Ps = 0.5 * (Paa + Paa.T)
    return (Pab.sum(1)[:, None] * Xb - Pab @ Yb) - (Ps.sum(1)[:, None] * Xb - Ps @ Xb)


def pot_merr(res, a, b):
    return max(marginal_error(res.log["res_ab"].plan, a, b),
               marginal_error(res.log["res_aa"].plan, a, a),
               marginal_error(res.log["res_bb"].plan, b, b))


def bench_pot():
    def run():
        res = pot_solve(X, Y, A, B, "detach")
        g = pot_numpy_grad(res, X, Y)
        return res, g
    secs = timed(run, ARGS.repeats)
    res, _ = run()
    emit("pot", secs, 0.5 * float(res.value), pot_merr(res, A64, B64),
         note=f"POT {ot.__version__} solve_sample(debias=True) numpy backend, log-domain; "
              "gradient: closed-form envelope from the plans")


def bench_pot_torch():
    tdt = torch.float64 if ARGS.dtype == "float64" else torch.float32
    Xt = torch.tensor(X64, dtype=tdt)
    Yt = torch.tensor(Y64, dtype=tdt)
    At = torch.tensor(A64, dtype=tdt)
    Bt = torch.tensor(B64, dtype=tdt)

    def run():
        Xr = Xt.clone().requires_grad_(True)
        res = pot_solve(Xr, Yt, At, Bt, "envelope")
        v = 0.5 * res.value
        (g,) = torch.autograd.grad(v, [Xr])
        return res, v, g
    secs = timed(run, ARGS.repeats)
    res, v, _ = run()
    merr = max(marginal_error(res.log["res_ab"].plan.detach().numpy(), A64, B64),
               marginal_error(res.log["res_aa"].plan.detach().numpy(), A64, A64),
               marginal_error(res.log["res_bb"].plan.detach().numpy(), B64, B64))
    emit("pot-torch", secs, float(v.detach()), merr,
         note=f"POT {ot.__version__} solve_sample(debias=True, grad='envelope') torch {torch.__version__} backend")


def bench_geomloss_sinkhorn():
    tdt = torch.float64 if ARGS.dtype == "float64" else torch.float32
    Xt = torch.tensor(X64, dtype=tdt)
    Yt = torch.tensor(Y64, dtype=tdt)
    At = torch.tensor(A64, dtype=tdt)
    Bt = torch.tensor(B64, dtype=tdt)
    loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(ARGS.eps), scaling=ARGS.scaling,
                       debias=True, backend="tensorized")

    def run():
        Xr = Xt.clone().requires_grad_(True)
        v = loss(At, Xr, Bt, Yt)
        (g,) = torch.autograd.grad(v, [Xr])
        return v, g
    secs = timed(run, ARGS.repeats)
    v, _ = run()
    # marginal error of the x-y plan from GeomLoss's own potentials (outside the timing):
    # P_ij = a_i b_j exp((F_i + G_j - C_ij)/eps), C = |x-y|^2/2. With debias=True GeomLoss
    # returns the debiased potentials (f_ba - f_aa, ...), so ask for the x-y potentials with
    # debias=False: the same schedule computes the same x-y potentials.
    pl = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(ARGS.eps), scaling=ARGS.scaling,
                     debias=False, backend="tensorized", potentials=True)
    F, G = pl(At, Xt, Bt, Yt)
    F, G = F.detach().double().numpy().ravel(), G.detach().double().numpy().ravel()
    C = 0.5 * ((X64[:, None, :] - Y64[None, :, :]) ** 2).sum(-1)
    logP = np.log(A64)[:, None] + np.log(B64)[None, :] + (F[:, None] + G[None, :] - C) / ARGS.eps
    merr = marginal_error(np.exp(logP), A64, B64)
    emit("geomloss", secs, float(v.detach()), merr,
         note=f"GeomLoss {geomloss_version()} tensorized, scaling={ARGS.scaling} (fixed schedule, no tolerance)")


def geomloss_version():
    import geomloss
    return getattr(geomloss, "__version__", "?")


# ------------------------------------------------------------------ MMD
def median_bandwidth():
    Z = np.concatenate([X64, Y64], 0)
    D2 = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(Z.shape[0], k=1)
    return float(np.median(np.sqrt(D2[iu])))


def bench_mmd_numpy(s):
    def sq(P, Q):
        return ((P[:, None, :] - Q[None, :, :]) ** 2).sum(-1)

    def run():
        Kxx = np.exp(-sq(X, X) / (2 * s * s))
        Kyy = np.exp(-sq(Y, Y) / (2 * s * s))
        Kxy = np.exp(-sq(X, Y) / (2 * s * s))
        v = A @ Kxx @ A + B @ Kyy @ B - 2 * A @ Kxy @ B
        Wx = Kxx * A[None, :]
        Wy = Kxy * B[None, :]
        g = -(2 * A[:, None] / (s * s)) * ((Wx.sum(1)[:, None] * X - Wx @ X) - (Wy.sum(1)[:, None] * X - Wy @ Y))
        return v, g
    secs = timed(run, ARGS.repeats)
    v, _ = run()
    emit("numpy", secs, float(v), None, note=f"numpy {np.__version__} dense kernels + closed-form gradient", bandwidth=s)


def bench_mmd_geomloss(s):
    tdt = torch.float64 if ARGS.dtype == "float64" else torch.float32
    Xt = torch.tensor(X64, dtype=tdt)
    Yt = torch.tensor(Y64, dtype=tdt)
    At = torch.tensor(A64, dtype=tdt)
    Bt = torch.tensor(B64, dtype=tdt)
    loss = SamplesLoss("gaussian", blur=s, backend="tensorized")

    def run():
        Xr = Xt.clone().requires_grad_(True)
        v = 2.0 * loss(At, Xr, Bt, Yt)  # GeomLoss "gaussian" = MMD2_b / 2
        (g,) = torch.autograd.grad(v, [Xr])
        return v, g
    secs = timed(run, ARGS.repeats)
    v, _ = run()
    emit("geomloss", secs, float(v.detach()), None,
         note=f"GeomLoss {geomloss_version()} gaussian tensorized, value x2 = MMD2_b", bandwidth=s)


def main():
    if ARGS.kind == "sinkhorn":
        table = {"pot": (bench_pot, True), "pot-torch": (bench_pot_torch, HAVE_TORCH),
                 "geomloss": (bench_geomloss_sinkhorn, HAVE_GEOMLOSS)}
        for lib in LIBS:
            fn, ok = table.get(lib, (None, False))
            if not ok:
                print(f"bench_peers: skipping {lib} (not available for kind {ARGS.kind})", file=sys.stderr)
                continue
            fn()
    else:
        s = ARGS.bandwidth if ARGS.bandwidth is not None else median_bandwidth()
        table = {"numpy": (bench_mmd_numpy, True), "geomloss": (bench_mmd_geomloss, HAVE_GEOMLOSS)}
        for lib in LIBS:
            fn, ok = table.get(lib, (None, False))
            if not ok:
                print(f"bench_peers: skipping {lib} (not available for kind {ARGS.kind})", file=sys.stderr)
                continue
            fn(s)


if __name__ == "__main__":
    main()
