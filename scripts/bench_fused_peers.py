#!/usr/bin/env python3
"""Time peer libraries on the GPU for the two map-reductions of the fused kernels, on the very
clouds that `bench_fused` (crates/fairrep-train/examples/bench_fused.rs) builds, value +
gradient w.r.t. x:

  softmin     f_i = -eps LSE_j(h_j - |x_i - y_j|^2 / (2 eps)), h_j = -log m, eps = 0.1;
              grad of sum_i f_i
  kernel_sum  r_i = sum_j b_j mean_s exp(-|x_i - y_j|^2 / (2 s^2)), b_j = 1/m, s in 0.5, 1, 2;
              grad of sum_i r_i

  python3 scripts/bench_fused_peers.py --sizes 1024,4096 --dims 8,32 [--repeats 5]
          [--max-tensor-n 16384] [--libs keops,tensorized] [--device cuda|cpu]

Libraries:
  keops       softmin: GeomLoss's online backend (geomloss._legacy.sinkhorn_samples.softmin_online
              with its KeOps generic_logsumexp formula, the routine SamplesLoss(backend="online")
              calls); kernel_sum: a pykeops LazyTensor reduction (GeomLoss's "gaussian" loss
              takes one bandwidth). Gradients by KeOps' own backward reductions.
  tensorized  softmin: GeomLoss's softmin_tensorized on its dense cost matrix
              (geomloss._legacy.utils.squared_distances / 2); kernel_sum: dense torch kernel matrix
              times b. Gradients by torch autograd. Skipped above --max-tensor-n.

Prints one JSON line per (op, n, d, lib) on stdout:
  {"op", "n", "d", "lib", "seconds", "sum_grad", "device"}
Timing: one warm-up call (which also compiles KeOps formulas), then the median of --repeats
calls, each ending with a read-back of sum(grad) to the host (as bench_fused does).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

EPS = 0.1
BANDWIDTHS = (0.5, 1.0, 2.0)


def cloud(n, d, shift, seed):
    """bench_fused's deterministic cloud: a 64-bit LCG, top 24 bits scaled to [-1, 1) + shift."""
    mask = (1 << 64) - 1
    a, c = 6364136223846793005, 1442695040888963407
    state = (seed * a + c) & mask
    values = []
    for _ in range(n * d):
        state = (state * a + c) & mask
        # (k / 2^24) * 2 - 1 + shift, exact in float32 as in bench_fused for shift in {0, 0.5}.
        values.append((state >> 40) / 8388608.0 - 1.0 + shift)
    return np.asarray(values, dtype=np.float32).reshape(n, d)


def softmin_keops(d):
    from geomloss._legacy.sinkhorn_samples import cost_formulas, lse_genred, softmin_online

    log_conv = lse_genred(cost_formulas[2], d)

    def step(x, y, h):
        return softmin_online(EPS, (x, y), h, log_conv)

    return step


def softmin_dense(d):
    from geomloss._legacy.sinkhorn_samples import softmin_tensorized
    from geomloss._legacy.utils import squared_distances

    def step(x, y, h):
        cost = squared_distances(x[None], y[None]) / 2
        return softmin_tensorized(EPS, cost, h[None])

    return step


def kernel_sum_keops(d):
    from pykeops.torch import LazyTensor

    def step(x, y, b):
        x_i = LazyTensor(x[:, None, :])
        y_j = LazyTensor(y[None, :, :])
        b_j = LazyTensor(b[None, :, None])
        d2 = x_i.sqdist(y_j)
        k = None
        for s in BANDWIDTHS:
            ks = (d2 * (-0.5 / s**2)).exp()
            k = ks if k is None else k + ks
        return ((k / len(BANDWIDTHS)) * b_j).sum(dim=1)

    return step


def kernel_sum_dense(d):
    from geomloss._legacy.utils import squared_distances

    def step(x, y, b):
        d2 = squared_distances(x, y)
        k = sum((d2 * (-0.5 / s**2)).exp() for s in BANDWIDTHS) / len(BANDWIDTHS)
        return k @ b

    return step


def run(step, x, y, w):
    x = x.detach().requires_grad_(True)
    step(x, y, w).sum().backward()
    return x.grad.sum().item()


def timed(repeats, f):
    last = f()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        last = f()
        times.append(time.perf_counter() - start)
    return statistics.median(times), last


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--dims", default="8,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tensor-n", type=int, default=16384)
    ap.add_argument("--libs", default="keops,tensorized")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    dims = [int(v) for v in args.dims.split(",")]
    libs = args.libs.split(",")
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    makers = {
        ("softmin", "keops"): softmin_keops,
        ("softmin", "tensorized"): softmin_dense,
        ("kernel_sum", "keops"): kernel_sum_keops,
        ("kernel_sum", "tensorized"): kernel_sum_dense,
    }
    for n in sizes:
        for d in dims:
            x = torch.from_numpy(cloud(n, d, 0.0, 1)).to(dev)
            y = torch.from_numpy(cloud(n, d, 0.5, 2)).to(dev)
            h = torch.full((n,), -np.log(n), dtype=torch.float32, device=dev)
            b = torch.full((n,), 1.0 / n, dtype=torch.float32, device=dev)
            for op, w in (("softmin", h), ("kernel_sum", b)):
                for lib in libs:
                    if lib == "tensorized" and n > args.max_tensor_n:
                        continue
                    record = {"op": op, "n": n, "d": d, "lib": lib, "device": name}
                    try:
                        step = makers[(op, lib)](d)
                        seconds, sum_grad = timed(args.repeats, lambda: run(step, x, y, w))
                        record.update(seconds=seconds, sum_grad=sum_grad)
                    except Exception as err:  # a peer that fails is reported, not fatal
                        record.update(error=f"{type(err).__name__}: {err}"[:300])
                    print(json.dumps(record), flush=True)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
