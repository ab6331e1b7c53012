#!/usr/bin/env python3
"""Training throughput: fairrep against the PyTorch loop a user would write, same data.

For each case, in one invocation:

1. ``fairrep train CONFIG --dump-data DIR`` writes the preprocessed splits the config trains
   on, so both sides see identical rows;
2. ``fairrep train CONFIG`` runs on the CPU (``--device flex``); its per-epoch times come
   from ``metrics.jsonl`` (``seconds``: the minibatch steps and the validation pass;
   ``timing``: the phases of the step);
3. a PyTorch loop (``--torch-worker``, a child process like fairrep) trains the same
   architecture (PyTorch's default Linear initialisation, which is burn's), with Adam / AdamW
   of the same lr, betas, epsilon (burn's 1e-5) and weight decay, the same batch size and
   cosine schedule, the same penalty (MMD with the median-heuristic bandwidth of each group
   against the batch, biased; or GeomLoss's debiased Sinkhorn with the same blur and scaling)
   and lambda, and validates after each epoch as fairrep does (task loss, accuracy, DP gap, the
   penalty on a group-stratified subsample of ``eval_max_points`` rows); the best epoch's
   weights are evaluated on the test split.

Both sides are timed the same way: per epoch, the training steps and the validation pass
apart, wall time and the process's CPU seconds (fairrep's ``timing`` record; PyTorch's
``time.perf_counter`` and ``time.process_time``); the table gives the median over the epochs
after the first. Each process also reports its peak resident memory (``wait4``). On a shared
machine wall times depend on the load (PyTorch's threads wait at barriers when a core is taken
from them); CPU seconds much less.

    python3 -m venv /path/venv && /path/venv/bin/pip install torch==2.15.0 geomloss==0.3.1 \\
        numpy==2.4.6
    /path/venv/bin/python scripts/bench_train.py --fairrep $CARGO_TARGET_DIR/release/fairrep \\
        --data-dir ../shared/datasets --cases adult-none,adult-mmd,adult-sinkhorn,celeba-mmd,\\
        adult-mmd-b4096 --out bench_train.json

``--epochs N`` runs N epochs of every case instead of the config's (the cosine schedule is
then over N epochs, on both sides); ``--device cuda`` runs the PyTorch side on CUDA and fairrep
on ``--fairrep-device`` (for scripts/gpu_check.sh).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

# name -> (config, overrides)
CASES = {
    "adult-none": ("configs/adult-mmd.toml", ["penalty.lambda=0"]),
    "adult-mmd": ("configs/adult-mmd.toml", []),
    "adult-sinkhorn": ("configs/adult-sinkhorn.toml", []),
    "celeba-mmd": ("configs/celeba-transfer-mmd.toml", []),
    "adult-mmd-b4096": ("configs/adult-mmd.toml", ["data.batch_size=4096"]),
}


def timed_child(cmd, env=None):
    """Runs `cmd` and returns dict(rc, wall, cpu, peak_mib, stdout, stderr) for that child."""
    start = time.perf_counter()
    out = tempfile.TemporaryFile(mode="w+")
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    out.seek(0)
    err.seek(0)
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mib": usage.ru_maxrss / 1024.0,
        "stdout": out.read(),
        "stderr": err.read(),
    }


def set_args(overrides):
    return [a for o in overrides for a in ("--set", o)]


# ----------------------------------------------------------------------------------------
# The PyTorch side (a child process: `--torch-worker DUMP_DIR OUT_JSON`)
# ----------------------------------------------------------------------------------------


def torch_worker(dump_dir, out_path, epochs_override, threads, device_name, seed):
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device_name)
    with open(os.path.join(dump_dir, "data.json")) as f:
        meta = json.load(f)
    with open(os.path.join(dump_dir, meta["config"]), "rb") as f:
        cfg = tomllib.load(f)
    data = {}
    for s in meta["splits"]:
        data[s["name"]] = tuple(
            torch.from_numpy(np.load(os.path.join(dump_dir, s[k]))).to(device)
            for k in ("x", "s", "y")
        )
    if any(k != "binary" for k in meta["task_kinds"]):
        raise SystemExit("bench_train.py: only binary tasks are benchmarked")
    n_groups = len(meta["groups"])
    model_cfg, pen, opt_cfg = cfg["model"], cfg["penalty"], cfg["optim"]
    batch_size = cfg["data"]["batch_size"]
    epochs = epochs_override or opt_cfg["epochs"]
    n_tasks = len(meta["tasks"])

    # The model: encoder (Linear -> ReLU -> Dropout)* -> Linear, one linear head per task.
    widths = [meta["n_features"], *model_cfg["encoder_widths"]]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(model_cfg.get("dropout", 0.0))]
    layers.append(nn.Linear(widths[-1], model_cfg["latent"]))
    encoder = nn.Sequential(*layers).to(device)
    heads = nn.ModuleList(nn.Linear(model_cfg["latent"], 1) for _ in range(n_tasks)).to(device)
    params = list(encoder.parameters()) + list(heads.parameters())
    lr = opt_cfg["lr"]
    if opt_cfg.get("kind", "adam") == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=opt_cfg.get("weight_decay", 1e-4))
    else:
        opt = torch.optim.Adam(params, lr=lr, eps=1e-5, weight_decay=opt_cfg.get("weight_decay", 0.0))
    min_lr = opt_cfg.get("min_lr", 0.0)

    def lr_at(e):
        if opt_cfg.get("schedule", "constant") == "cosine":
            return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * e / epochs))
        return lr

    kind = pen.get("kind", "none")
    lam = pen.get("lambda", 0.0)

    def median_bandwidth(p):
        # Median pairwise distance of the pooled points; above 2048 points a sample of 2^20
        # pairs, as fairrep does.
        p = p.detach()
        n = p.shape[0]
        if n <= 2048:
            d = torch.pdist(p)
        else:
            i = torch.randint(0, n, (1 << 20,), device=p.device)
            j = torch.randint(0, n - 1, (1 << 20,), device=p.device)
            j = j + (j >= i).long()
            d = (p[i] - p[j]).pow(2).sum(1).sqrt()
        pos = d[d > 0]
        m = d.median() if (d > 0).float().mean() > 0.5 else pos.median()
        return m.clamp_min(1e-12)

    def mmd2(x, y):
        s = median_bandwidth(torch.cat([x, y]))
        k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / (2 * s * s))
        return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()

    if kind == "sinkhorn":
        from geomloss import SamplesLoss

        sk = pen.get("sinkhorn", {})
        sinkhorn = SamplesLoss("sinkhorn", p=2, blur=sk.get("blur", 0.1), scaling=sk.get("scaling", 0.9), debias=True, backend="tensorized")
        divergence = lambda x, y: sinkhorn(x, y)
    elif kind == "mmd":
        if pen.get("mmd", {}).get("bandwidths", "median") != "median":
            raise SystemExit("bench_train.py: only the median bandwidth is benchmarked")
        divergence = mmd2
    else:
        divergence = None

    def penalty(z, s):
        total = z.new_zeros(())
        n = z.shape[0]
        for g in range(n_groups):
            zg = z[s == g]
            if zg.shape[0] > 0:
                total = total + zg.shape[0] / n * divergence(zg, z)
        return total

    bce = nn.BCEWithLogitsLoss()
    x_tr, s_tr, y_tr = data["train"]
    n = x_tr.shape[0]
    eval_max = pen.get("eval_max_points", 2000)

    def subsample(s, m, gen):
        # Group-stratified: each group's share of m, at least one row of each present group.
        idx = []
        n_s = s.shape[0]
        if n_s <= m:
            return torch.arange(n_s, device=s.device)
        for g in range(n_groups):
            rows = torch.nonzero(s == g).flatten()
            k = max(1, round(m * rows.shape[0] / n_s)) if rows.shape[0] else 0
            idx.append(rows[torch.randperm(rows.shape[0], generator=gen)[:k].to(s.device)])
        return torch.cat(idx)

    def evaluate(split, sub_idx):
        x, s, y = data[split]
        encoder.eval()
        with torch.no_grad():
            z = encoder(x)
            logits = torch.cat([h(z) for h in heads], 1)
            losses = [bce(logits[:, t], y[:, t]).item() for t in range(n_tasks)]
            pred = logits > 0
            tasks = {}
            for t, name in enumerate(meta["tasks"]):
                acc = (pred[:, t] == (y[:, t] > 0.5)).float().mean().item()
                rates = [pred[s == g, t].float().mean().item() for g in range(n_groups) if (s == g).any()]
                tasks[name] = {"loss": losses[t], "accuracy": acc, "dp_gap": max(rates) - min(rates)}
            pen_value = None
            if divergence is not None:
                pen_value = penalty(z[sub_idx], s[sub_idx]).item()
        encoder.train()
        return {"task_loss": sum(losses) / n_tasks, "tasks": tasks, "penalty": pen_value}

    gen = torch.Generator().manual_seed(0xE7A1)
    valid_sub = subsample(data["valid"][1], eval_max, gen)
    test_sub = subsample(data["test"][1], eval_max, gen)
    history = []
    best = None
    for e in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(e)
        t0 = time.perf_counter()
        c0 = time.process_time()
        perm = torch.randperm(n, device=device)
        loss_sum = 0.0
        steps = 0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, sb, yb = x_tr[idx], s_tr[idx], y_tr[idx]
            z = encoder(xb)
            logits = torch.cat([h(z) for h in heads], 1)
            loss = bce(logits, yb)
            if divergence is not None and lam > 0:
                loss = loss + lam * penalty(z, sb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        c1 = time.process_time()
        valid = evaluate("valid", valid_sub)
        t2 = time.perf_counter()
        objective = valid["task_loss"] + lam * (valid["penalty"] or 0.0)
        if best is None or objective < best[0]:
            best = (objective, e + 1, {k: v.detach().clone() for k, v in {**{f"e.{a}": b for a, b in encoder.state_dict().items()}, **{f"h.{a}": b for a, b in heads.state_dict().items()}}.items()})
        history.append({"epoch": e + 1, "train_s": t1 - t0, "valid_s": t2 - t1, "cpu_s": time.process_time() - c0, "train_cpu_s": c1 - c0, "loss": loss_sum / steps, "valid": valid})
    state = best[2]
    encoder.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("e.")})
    heads.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("h.")})
    test = evaluate("test", test_sub)
    with open(out_path, "w") as f:
        json.dump({"epochs": epochs, "best_epoch": best[1], "history": history, "test": test, "rows": n, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}, f)


# ----------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------


def median_after_first(values):
    rest = values[1:] or values
    return statistics.median(rest)


def summarise_test(test):
    """Mean accuracy and largest DP gap over the tasks of a split's metrics."""
    tasks = test["tasks"].values()
    return (
        statistics.mean(t["accuracy"] for t in tasks),
        max(t["dp_gap"] for t in tasks),
    )


def run_case(name, args, work):
    config, overrides = CASES[name]
    config = os.path.join(args.repo, config)
    overrides = list(overrides)
    if args.epochs:
        overrides.append(f"optim.epochs={args.epochs}")
    common = set_args(overrides) + ["--data-dir", args.data_dir]
    dump = os.path.join(work, name, "data")
    r = timed_child([args.fairrep, "-q", "train", config, *common, "--dump-data", dump])
    if r["rc"] != 0:
        raise SystemExit(f"{name}: fairrep --dump-data failed:\n{r['stderr']}")
    meta = json.loads(r["stdout"])
    rows = next(s["rows"] for s in meta["splits"] if s["name"] == "train")

    runs = os.path.join(work, name, "runs")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    r = timed_child([args.fairrep, "-q", "train", config, *common, "--device", args.fairrep_device, "--out", runs], env=env)
    if r["rc"] != 0:
        raise SystemExit(f"{name}: fairrep train failed:\n{r['stderr']}")
    summary = json.loads(r["stdout"])
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    ours = {
        "epochs": len(records),
        "epoch_s": median_after_first([rec["seconds"] for rec in records]),
        "train_s": median_after_first([rec["timing"]["train"] for rec in records]),
        "valid_s": median_after_first([rec["timing"]["valid"] for rec in records]),
        "cpu_epoch_s": median_after_first([rec["timing"].get("cpu") or float("nan") for rec in records]),
        "train_cpu_s": median_after_first([(rec["timing"].get("cpu") or float("nan")) - (rec["timing"].get("cpu_valid") or float("nan")) for rec in records]),
        "phases": {k: median_after_first([rec["timing"][k] for rec in records]) for k in records[0]["timing"]},
        "wall_s": r["wall_s"],
        "cpu_s": r["cpu_s"],
        "peak_mib": r["peak_mib"],
        "best_epoch": summary["best_epoch"],
        "test": {"tasks": summary["test"]["tasks"], "penalty": summary["test"]["penalty"]},
    }

    out_json = os.path.join(work, name, "torch.json")
    if args.no_torch:
        theirs = None
    else:
        r = timed_child([sys.executable, __file__, "--torch-worker", dump, out_json, "--threads", str(args.torch_threads or args.threads), "--device", args.device, "--epochs", str(args.epochs or 0)])
        if r["rc"] != 0:
            raise SystemExit(f"{name}: the PyTorch loop failed:\n{r['stderr']}")
        with open(out_json) as f:
            t = json.load(f)
        hist = t["history"]
        theirs = {
            "epochs": t["epochs"],
            "epoch_s": median_after_first([h["train_s"] + h["valid_s"] for h in hist]),
            "train_s": median_after_first([h["train_s"] for h in hist]),
            "valid_s": median_after_first([h["valid_s"] for h in hist]),
            "cpu_epoch_s": median_after_first([h["cpu_s"] for h in hist]),
            "train_cpu_s": median_after_first([h["train_cpu_s"] for h in hist]),
            "threads": t["threads"],
            "wall_s": r["wall_s"],
            "cpu_s": r["cpu_s"],
            "peak_mib": r["peak_mib"],
            "best_epoch": t["best_epoch"],
            "test": t["test"],
            "torch": t["torch"],
            "device": t["device"],
        }
    return {"case": name, "config": CASES[name][0], "overrides": overrides, "rows": rows, "fairrep": ours, "torch": theirs}


def table(results):
    head = (
        "| case | rows | epochs | training s/epoch, wall (CPU): fairrep | PyTorch | PyTorch / fairrep, wall (CPU) "
        "| train rows/s: fairrep / PyTorch | validation s/epoch, wall: fairrep / PyTorch | epoch incl. validation, CPU s: fairrep / PyTorch "
        "| peak MiB | test acc / DP gap: fairrep | PyTorch |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        o, t = r["fairrep"], r["torch"]
        acc, dp = summarise_test(o["test"])
        cells = [r["case"], f"{r['rows']:,}", str(o["epochs"]), f"{o['train_s']:.3f} ({o['train_cpu_s']:.3f})"]
        if t:
            tacc, tdp = summarise_test(t["test"])
            cells += [
                f"{t['train_s']:.3f} ({t['train_cpu_s']:.3f})",
                f"{t['train_s'] / o['train_s']:.2f} ({t['train_cpu_s'] / o['train_cpu_s']:.2f})",
                f"{r['rows'] / o['train_s']:,.0f} / {r['rows'] / t['train_s']:,.0f}",
                f"{o['valid_s']:.3f} / {t['valid_s']:.3f}",
                f"{o['cpu_epoch_s']:.3f} / {t['cpu_epoch_s']:.3f}",
                f"{o['peak_mib']:.0f} / {t['peak_mib']:.0f}",
                f"{acc:.4f} / {dp:.4f}",
                f"{tacc:.4f} / {tdp:.4f}",
            ]
        else:
            cells += ["-", "-", f"{r['rows'] / o['train_s']:,.0f}", f"{o['valid_s']:.3f}", f"{o['cpu_epoch_s']:.3f}", f"{o['peak_mib']:.0f}", f"{acc:.4f} / {dp:.4f}", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("fairrep's epoch by phase, median seconds (wall; cpu = the process's CPU seconds):")
    for r in results:
        lines.append(f"- {r['case']}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["fairrep"]["phases"].items()))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-worker", nargs=2, metavar=("DUMP_DIR", "OUT_JSON"), help=argparse.SUPPRESS)
    p.add_argument("--fairrep", help="the fairrep binary")
    p.add_argument("--data-dir", help="the datasets folder")
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--cases", default="adult-none,adult-mmd,adult-sinkhorn,celeba-mmd,adult-mmd-b4096")
    p.add_argument("--epochs", type=int, default=0, help="epochs per case (default: the config's)")
    p.add_argument("--threads", type=int, default=2, help="threads on both sides")
    p.add_argument("--torch-threads", type=int, default=0, help="PyTorch's threads (default: --threads)")
    p.add_argument("--device", default="cpu", help="the PyTorch device (cpu, cuda)")
    p.add_argument("--fairrep-device", default="flex", help="fairrep's --device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="time fairrep only")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.torch_worker:
        torch_worker(*args.torch_worker, args.epochs, args.threads, args.device, args.seed)
        return
    if not (args.fairrep and args.data_dir):
        p.error("--fairrep and --data-dir are required")
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    work = args.work or tempfile.mkdtemp(prefix="fairrep-bench-train-")
    results = []
    for name in cases:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results.append(run_case(name, args, work))
    print(table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": os.uname().nodename, "cpus": os.cpu_count(), "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
