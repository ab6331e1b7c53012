#!/usr/bin/env python3
"""A rerunnable campaign of hostile and careless-user cases against the `fairrep` binary.

    python3 scripts/abuse/campaign.py --bin target/release/fairrep [--only SUBSTR] [--jobs N]
                                      [--out DIR] [--list]

Every case is data: a name, a category, the files it writes (configs, tiny CSV datasets and
their specs, `.npy` point clouds written with the standard library), the command, its limits
(wall time, address space, file size) and the outcome a careful user expects:

- `ok`: exit status 0 and the checks on the outputs hold (values within a stated tolerance
  of an exact reference computed here, files that agree with each other);
- `refused`: exit status 1 (2 for a command-line usage error reported by the parser), no
  panic, no signal, stderr names the key / file / row (and the
  value found), and no cause is printed twice;
- `ok_or_refused`: either of the above (for inputs a program may reasonably accept or
  refuse), never a panic, a hang or a silent NaN;
- `refused_or_warned`: exit 1 naming the key, or exit 0 with a warning naming it (keys that
  would otherwise be silently ignored);
- custom cases (kills, resumes, pairs of runs) judge themselves.

Each result is classified as one of: handled well, wrong result, panic, hang, data loss,
unclear message (or skipped, with the reason, when a tool such as strace is missing). The
totals per class and per category are printed, and `OUT/results.jsonl` holds every case.
Python 3.11 standard library only.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fractions
import gzip
import json
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

# ---------------------------------------------------------------------------------------------
# Classes and verdicts
# ---------------------------------------------------------------------------------------------

# Defects named by more than one family.
NO_ADAPTER = "--device wgpu without an adapter panics instead of saying so"
DIVERGE = "training that diverges to NaN must stop with an error naming the epoch and step"
LEFTOVERS = "kills leave .NAME.tmp-PID files behind, even after a successful resume"
HUGE = "a huge size aborts on allocation instead of being refused"

HANDLED = "handled well"
WRONG = "wrong result"
PANIC = "panic"
HANG = "hang"
LOSS = "data loss"
UNCLEAR = "unclear message"
SKIPPED = "skipped"
SETUP = "setup error"
CLASSES = [HANDLED, WRONG, PANIC, HANG, LOSS, UNCLEAR, SKIPPED, SETUP]
SEVERITY = {HANDLED: 0, SKIPPED: 0, UNCLEAR: 1, WRONG: 2, LOSS: 3, HANG: 4, PANIC: 4, SETUP: 5}


@dataclass
class Verdict:
    cls: str
    evidence: list[str] = field(default_factory=list)
    # When set, the defect this outcome shows, in place of the one the case guards.
    defect: Optional[str] = None

    @staticmethod
    def worst(verdicts: list["Verdict"]) -> "Verdict":
        """The most severe verdict, carrying the evidence of every failing one."""
        bad = [v for v in verdicts if v.cls != HANDLED]
        if not bad:
            return Verdict(HANDLED, [e for v in verdicts for e in v.evidence][:6])
        top = max(bad, key=lambda v: SEVERITY[v.cls])
        evidence = list(top.evidence)
        for v in bad:
            if v is not top:
                evidence += [f"[{v.cls}] {e}" for e in v.evidence]
        return Verdict(top.cls, evidence, top.defect)


class SkipCase(Exception):
    """Raised by a case that cannot run here; the message is the reason."""


class FixtureError(Exception):
    """A shared fixture could not be built (the binary failed on a plain run)."""


# ---------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def f32(v: float) -> float:
    """`v` rounded to the nearest float32 (so both precisions see the same points)."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def fmt(v: float) -> str:
    return repr(float(v))


def rel_close(got: float, want: float, rtol: float, atol: float = 0.0) -> bool:
    return (
        isinstance(got, (int, float))
        and math.isfinite(got)
        and abs(got - want) <= rtol * abs(want) + atol
    )


def csv_points(points: list[list[float]]) -> str:
    return "".join(",".join(fmt(v) for v in p) + "\n" for p in points)


def npy_bytes(
    data: bytes,
    descr: str = "<f4",
    shape_text: str = "(0,)",
    fortran: bool = False,
    version: int = 1,
    header: Optional[bytes] = None,
) -> bytes:
    """A `.npy` file (format 1.0 or 2.0) with an arbitrary header, for malformed files too."""
    if header is None:
        text = (
            f"{{'descr': '{descr}', 'fortran_order': {'True' if fortran else 'False'}, "
            f"'shape': {shape_text}, }}"
        )
        pre = 10 if version == 1 else 12
        pad = (64 - (pre + len(text) + 1) % 64) % 64
        header = (text + " " * pad + "\n").encode()
    if version == 1:
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header))
    else:
        head = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(header))
    return head + header + data


def npy_matrix(points: list[list[float]], dtype: str = "<f4") -> bytes:
    n, d = len(points), len(points[0])
    code = "f" if dtype == "<f4" else "d"
    data = struct.pack("<" + code * (n * d), *[v for p in points for v in p])
    return npy_bytes(data, dtype, f"({n}, {d})")


def read_npy(path: Path) -> tuple[str, tuple, list]:
    """Reads a C-order little-endian `.npy` (f4, f8, i8): (descr, shape, flat values)."""
    raw = path.read_bytes()
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: no npy magic")
    if raw[6] == 1:
        hlen, start = struct.unpack("<H", raw[8:10])[0], 10
    else:
        hlen, start = struct.unpack("<I", raw[8:12])[0], 12
    header = raw[start : start + hlen].decode()
    descr = re.search(r"'descr':\s*'([^']+)'", header).group(1)
    shape = tuple(int(s) for s in re.search(r"'shape':\s*\(([^)]*)\)", header).group(1).split(",") if s.strip())
    code = {"<f4": "f", "<f8": "d", "<i8": "q"}[descr]
    count = math.prod(shape)
    values = list(struct.unpack("<" + code * count, raw[start + hlen : start + hlen + count * struct.calcsize(code)]))
    return descr, shape, values


def gauss_cloud(rng: random.Random, n: int, d: int, mean: float = 0.0, scale: float = 1.0) -> list[list[float]]:
    return [[f32(mean + scale * rng.gauss(0.0, 1.0)) for _ in range(d)] for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Exact references (float64, compensated sums) for the divergences: MATH.md's conventions
# ---------------------------------------------------------------------------------------------


def sqd(p: list[float], q: list[float]) -> float:
    return math.fsum((u - v) * (u - v) for u, v in zip(p, q))


def uniform(n: int) -> list[float]:
    return [1.0 / n] * n


def median_heuristic(x: list[list[float]], y: list[list[float]]) -> float:
    """Median pairwise Euclidean distance of the pooled sample (pairs i < j)."""
    pooled = x + y
    dists = sorted(
        math.sqrt(sqd(pooled[i], pooled[j])) for i in range(len(pooled)) for j in range(i + 1, len(pooled))
    )
    k = len(dists)
    med = dists[k // 2] if k % 2 else 0.5 * (dists[k // 2 - 1] + dists[k // 2])
    return med if med > 0 else 1.0


def gaussian_k(p, q, bws: list[float]) -> float:
    d2 = sqd(p, q)
    return math.fsum(math.exp(-d2 / (2.0 * s * s)) for s in bws) / len(bws)


def mmd2_ref(x, y, bws, a=None, b=None, unbiased=False) -> float:
    """MMD² with the mean of Gaussian kernels `exp(-|x-y|²/(2 s²))` (biased, or U-statistic)."""
    n, m = len(x), len(y)
    a = a or uniform(n)
    b = b or uniform(m)
    if unbiased:
        kxx = math.fsum(gaussian_k(x[i], x[j], bws) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        kyy = math.fsum(gaussian_k(y[i], y[j], bws) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        kxy = math.fsum(gaussian_k(x[i], y[j], bws) for i in range(n) for j in range(m)) / (n * m)
        return kxx + kyy - 2.0 * kxy
    kxx = math.fsum(a[i] * a[j] * gaussian_k(x[i], x[j], bws) for i in range(n) for j in range(n))
    kyy = math.fsum(b[i] * b[j] * gaussian_k(y[i], y[j], bws) for i in range(m) for j in range(m))
    kxy = math.fsum(a[i] * b[j] * gaussian_k(x[i], y[j], bws) for i in range(n) for j in range(m))
    return kxx + kyy - 2.0 * kxy


def mmd2_grad_ref(x, y, bws) -> list[list[float]]:
    """d MMD²_b / d x (MATH.md), uniform weights, mean over the bandwidths."""
    n, m, d = len(x), len(y), len(x[0])
    a, b = uniform(n), uniform(m)
    out = []
    for i in range(n):
        g = [0.0] * d
        for s in bws:
            for c in range(d):
                sx = math.fsum(a[j] * math.exp(-sqd(x[i], x[j]) / (2 * s * s)) * (x[i][c] - x[j][c]) for j in range(n))
                sy = math.fsum(b[j] * math.exp(-sqd(x[i], y[j]) / (2 * s * s)) * (x[i][c] - y[j][c]) for j in range(m))
                g[c] += -(2.0 * a[i] / (s * s)) * (sx - sy) / len(bws)
        out.append(g)
    return out


def lse(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def ot_eps_ref(x, y, a, b, eps, tol=1e-13, max_iter=200_000) -> float:
    """Entropic OT with cost |x-y|²/2 and KL(P | a x b): the dual value <a,f> + <b,g>."""
    keep_x = [i for i in range(len(x)) if a[i] > 0]
    keep_y = [j for j in range(len(y)) if b[j] > 0]
    x, a = [x[i] for i in keep_x], [a[i] for i in keep_x]
    y, b = [y[j] for j in keep_y], [b[j] for j in keep_y]
    n, m = len(x), len(y)
    cost = [[sqd(p, q) / 2.0 for q in y] for p in x]
    la, lb = [math.log(v) for v in a], [math.log(v) for v in b]
    f, g = [0.0] * n, [0.0] * m
    for it in range(max_iter):
        f = [-eps * lse([lb[j] + (g[j] - cost[i][j]) / eps for j in range(m)]) for i in range(n)]
        g = [-eps * lse([la[i] + (f[i] - cost[i][j]) / eps for i in range(n)]) for j in range(m)]
        if it % 5 == 0:
            err = math.fsum(
                abs(math.fsum(math.exp(la[i] + lb[j] + (f[i] + g[j] - cost[i][j]) / eps) for j in range(m)) - a[i])
                for i in range(n)
            )
            if err < tol:
                break
    return math.fsum(ai * fi for ai, fi in zip(a, f)) + math.fsum(bj * gj for bj, gj in zip(b, g))


def sinkhorn_ref(x, y, eps, a=None, b=None) -> float:
    """The debiased Sinkhorn divergence S = OT(a,b) - OT(a,a)/2 - OT(b,b)/2."""
    a = a or uniform(len(x))
    b = b or uniform(len(y))
    return ot_eps_ref(x, y, a, b, eps) - 0.5 * ot_eps_ref(x, x, a, a, eps) - 0.5 * ot_eps_ref(y, y, b, b, eps)


# ---------------------------------------------------------------------------------------------
# Running the binary
# ---------------------------------------------------------------------------------------------

# Runs in a fresh interpreter between fork and exec of the real command, so that limits are
# set without a preexec_fn in this threaded process.
SHIM = (
    "import os, resource, signal, sys\n"
    "mem, fsize = int(sys.argv[1]), int(sys.argv[2])\n"
    "if mem > 0: resource.setrlimit(resource.RLIMIT_AS, (mem, mem))\n"
    "if fsize > 0:\n"
    "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)
GIB = 1 << 30


@dataclass
class Result:
    argv: list[str]
    rc: Optional[int]
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    timeout: float

    def error_lines(self) -> list[str]:
        return [l for l in self.stderr.splitlines() if l.startswith("error:")]

    def error_line(self) -> str:
        lines = self.error_lines()
        if lines:
            return lines[-1][:400]
        tail = [l for l in self.stderr.splitlines() if l.strip()]
        return (tail[-1] if tail else "(no stderr)")[:400]

    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


class Proc:
    """A started command, to be finished (or killed) later."""

    def __init__(self, argv, cwd, env, timeout, mem_gib, fsize):
        self.argv = [str(a) for a in argv]
        self.timeout = timeout
        full_env = dict(os.environ)
        for k in ("RUST_LOG", "FAIRREP_DATA_DIR", "FAIRREP_SPECS_DIR", "BURN_DEVICE", "RUST_BACKTRACE"):
            full_env.pop(k, None)
        full_env["NO_COLOR"] = "1"
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        mem = int(mem_gib * GIB) if mem_gib else 0
        self.start = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-c", SHIM, str(mem), str(int(fsize or 0)), *self.argv],
            cwd=str(cwd),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def kill(self):
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self) -> Result:
        timed_out = False
        remaining = max(0.1, self.timeout - (time.monotonic() - self.start))
        try:
            out, err = self.popen.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            out, err = self.popen.communicate()
        # Nothing of the command may outlive it (strace children, helpers).
        self.kill()
        return Result(
            self.argv,
            self.popen.returncode,
            strip_ansi(out.decode("utf-8", "replace")),
            strip_ansi(err.decode("utf-8", "replace")),
            timed_out,
            time.monotonic() - self.start,
            self.timeout,
        )


def run_cmd(argv, cwd, env=None, timeout=60.0, mem_gib=3.0, fsize=0) -> Result:
    return Proc(argv, cwd, env, timeout, mem_gib, fsize).finish()


# ---------------------------------------------------------------------------------------------
# Judging outcomes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyWord:
    """A config key is named when its last component appears as a word (or the dotted key)."""

    dotted: str

    def found(self, text: str) -> bool:
        leaf = self.dotted.rsplit(".", 1)[-1]
        return bool(re.search(r"(?<![A-Za-z0-9_])" + re.escape(leaf) + r"(?![A-Za-z0-9_])", text, re.I))

    def __str__(self) -> str:
        return f"the key `{self.dotted}`"


def kw_key(dotted: str) -> KeyWord:
    return KeyWord(dotted)


def keyword_missing(text: str, keywords) -> list[str]:
    """Keywords: each item is a string (case-insensitive), a KeyWord, or a tuple of
    alternatives; every item must be found."""
    missing = []
    low = text.lower()
    for item in keywords:
        alts = item if isinstance(item, tuple) else (item,)
        if not any(alt.found(text) if isinstance(alt, KeyWord) else alt.lower() in low for alt in alts):
            missing.append(" or ".join(str(a) if isinstance(a, KeyWord) else repr(a) for a in alts))
    return missing


def duplicated_cause(stderr: str) -> Optional[str]:
    """A cause printed twice in one error line ("X: Y: Y", "X: Y: X: Y")."""
    for line in stderr.splitlines():
        if not line.startswith("error:"):
            continue
        segs = [s.strip() for s in line[len("error:") :].split(": ")]
        seen = {}
        for s in segs:
            if len(s) >= 12:
                if s in seen:
                    return s[:120]
                seen[s] = True
        for k in range(1, len(segs) // 2 + 1):
            for i in range(0, len(segs) - 2 * k + 1):
                if segs[i : i + k] == segs[i + k : i + 2 * k] and len(": ".join(segs[i : i + k])) >= 8:
                    return ": ".join(segs[i : i + k])[:120]
    return None


SIGNAL_NAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")}


def crash_verdict(res: Result, expect_killed: bool = False) -> Optional[Verdict]:
    """Hang, panic, abort or death by signal."""
    if res.timed_out:
        return Verdict(HANG, [f"no exit within {res.timeout:.0f} s: {' '.join(res.argv[:3])} ..."])
    panic = re.search(r"panicked at[^\n]*\n?[^\n]*", res.stderr)
    if panic:
        return Verdict(PANIC, [panic.group(0).replace("\n", " ")[:300]])
    alloc = re.search(r"memory allocation of \d+ bytes failed", res.stderr)
    if alloc:
        return Verdict(PANIC, [alloc.group(0) + f" (exit {res.rc})"])
    if res.rc is not None and res.rc < 0 and not expect_killed:
        name = SIGNAL_NAMES.get(-res.rc, str(-res.rc))
        return Verdict(PANIC, [f"killed by {name}; last stderr: {res.error_line()}"])
    if res.rc == 101:
        return Verdict(PANIC, [f"exit 101: {res.error_line()}"])
    return None


def judge_refused(res: Result, keywords=(), forbid=()) -> Verdict:
    crash = crash_verdict(res)
    if crash:
        return crash
    if res.rc == 0:
        out = res.stdout.strip().replace("\n", " ")
        return Verdict(WRONG, [f"exit 0: accepted; stdout {out[:160]!r}"])
    problems = []
    usage_error = res.rc == 2 and ("--help" in res.stderr or "Usage:" in res.stderr)
    if res.rc != 1 and not usage_error:
        problems.append(f"exit status {res.rc} (the README promises 1 on an error, 2 on a usage error)")
    missing = keyword_missing(res.stderr, keywords)
    if missing:
        problems.append("stderr does not name: " + ", ".join(missing))
    dup = duplicated_cause(res.stderr)
    if dup:
        problems.append(f"cause printed twice: {dup!r}")
    for word in forbid:
        if word.lower() in res.stderr.lower():
            problems.append(f"stderr says {word!r}, which tells the user nothing")
    if problems:
        return Verdict(UNCLEAR, problems + [res.error_line()])
    return Verdict(HANDLED, [res.error_line()])


def judge_ok(res: Result, problems_fn=None, fail_class=WRONG) -> Verdict:
    crash = crash_verdict(res)
    if crash:
        return crash
    if res.rc != 0:
        return Verdict(fail_class, [f"exit {res.rc} on valid input: {res.error_line()}"])
    problems = problems_fn(res) if problems_fn else []
    if problems:
        return Verdict(fail_class, problems)
    return Verdict(HANDLED, ["exit 0, checks hold"])


def judge_ok_or_refused(res: Result, problems_fn=None, keywords=(), fail_class=WRONG) -> Verdict:
    crash = crash_verdict(res)
    if crash:
        return crash
    if res.rc == 0:
        return judge_ok(res, problems_fn, fail_class)
    return judge_refused(res, keywords)


def judge_refused_or_warned(res: Result, keywords=()) -> Verdict:
    crash = crash_verdict(res)
    if crash:
        return crash
    if res.rc == 0:
        warn_lines = "\n".join(l for l in res.stderr.splitlines() if re.search(r"\bWARN", l))
        missing = keyword_missing(warn_lines, keywords)
        if missing:
            return Verdict(WRONG, ["exit 0 with no warning naming " + ", ".join(missing) + " (silently ignored)"])
        return Verdict(HANDLED, ["accepted with a warning"])
    return judge_refused(res, keywords)


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    category: str
    expect: str = "refused"  # ok | refused | ok_or_refused | refused_or_warned | custom
    argv: Optional[list] = None  # "{bin}" and "{d}" are substituted
    files: dict = field(default_factory=dict)  # relative path -> str | bytes
    env: dict = field(default_factory=dict)
    timeout: float = 60.0
    mem_gib: float = 3.0
    fsize: int = 0
    keywords: tuple = ()
    checks: list = field(default_factory=list)  # fn(ctx, res) -> list[str] of problems
    fail_class: str = WRONG
    custom: Optional[Callable] = None  # fn(ctx) -> Verdict
    needs: tuple = ()  # "strace", "unshare", "readonly", "wgpu"
    defect: str = ""  # the finding or standard this case guards
    forbid: tuple = ()  # words a good error message does not contain (serde internals)
    heavy: bool = False  # minutes of CPU or GiB of memory; --skip-heavy leaves it out
    sticky: bool = False  # kept by --only (stands for cases that could not be generated)


class Ctx:
    """What a case sees: its directory, the binary, the fixtures and a runner."""

    def __init__(self, case: Case, d: Path, binary: Path, fixtures: "Fixtures", env_caps: dict):
        self.case = case
        self.d = d
        self.bin = binary
        self.fx = fixtures
        self.caps = env_caps
        self.commands: list[str] = []
        self.outputs: list[dict] = []

    def sub(self, tok) -> str:
        return str(tok).replace("{bin}", str(self.bin)).replace("{d}", str(self.d))

    def write(self, rel: str, content) -> Path:
        path = self.d / self.sub(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(self.sub(content) if "{d}" in content else content)
        return path

    def run(self, argv, env=None, timeout=None, mem_gib=None, fsize=None, cwd=None) -> Result:
        argv = [self.sub(a) for a in argv]
        self.commands.append(" ".join(argv))
        env = {k: self.sub(v) for k, v in {**self.case.env, **(env or {})}.items()}
        res = run_cmd(
            argv,
            cwd or self.d,
            env,
            timeout or self.case.timeout,
            self.case.mem_gib if mem_gib is None else mem_gib,
            self.case.fsize if fsize is None else fsize,
        )
        return self.scrub(res)

    def scrub(self, res: Result) -> Result:
        """The case directory's path is not part of any message: keyword checks must not find
        a key's name in it."""
        res.stderr = res.stderr.replace(str(self.d), "$CASE")
        self.outputs.append({"rc": res.rc, "timed_out": res.timed_out, "stderr_tail": res.stderr[-1500:],
                             "stdout_head": res.stdout[:300]})
        return res

    def spawn(self, argv, env=None, timeout=None) -> Proc:
        argv = [self.sub(a) for a in argv]
        self.commands.append(" ".join(argv))
        env = {k: self.sub(v) for k, v in {**self.case.env, **(env or {})}.items()}
        return Proc(argv, self.d, env, timeout or self.case.timeout, self.case.mem_gib, 0)


def run_case(case: Case, ctx: Ctx) -> Verdict:
    for need in case.needs:
        if not ctx.caps.get(need):
            raise SkipCase(ctx.caps.get(need + "_why", f"{need} unavailable"))
    for rel, content in case.files.items():
        ctx.write(rel, content)
    if case.custom:
        return case.custom(ctx)
    res = ctx.run(case.argv)

    def problems(r):
        out = []
        for check in case.checks:
            out += check(ctx, r)
        return out

    if case.expect == "ok":
        return judge_ok(res, problems, case.fail_class)
    if case.expect == "refused":
        return judge_refused(res, case.keywords, case.forbid)
    if case.expect == "ok_or_refused":
        return judge_ok_or_refused(res, problems, case.keywords, case.fail_class)
    if case.expect == "refused_or_warned":
        return judge_refused_or_warned(res, case.keywords)
    raise ValueError(f"{case.name}: unknown expectation {case.expect}")


# ---------------------------------------------------------------------------------------------
# Training configs
# ---------------------------------------------------------------------------------------------

# A tiny synthetic run: 200 training rows, 4 features, 2 tasks (a whole run takes well under a
# second on one core).
BASE = {
    "data.batch_size": "64",
    "data.synthetic.n_train": "200",
    "data.synthetic.n_valid": "100",
    "data.synthetic.n_test": "100",
    "data.synthetic.n_features": "4",
    "data.synthetic.n_tasks": "2",
    "model.encoder_widths": "[8]",
    "model.latent": "4",
    "penalty.kind": '"mmd"',
    "penalty.lambda": "1.0",
    "optim.epochs": "2",
    "optim.lr": "0.01",
    "run.device": '"flex"',
    "run.out_dir": '"{d}/runs"',
}
SYNTH_KEYS = [k for k in BASE if k.startswith("data.synthetic.")]


def config_text(over: Optional[dict] = None, drop=(), base: Optional[dict] = None) -> str:
    """TOML text from dotted keys with raw TOML values; `None` removes a key."""
    kv = dict(BASE if base is None else base)
    kv.update(over or {})
    for k in drop:
        kv.pop(k, None)
    tables: dict[str, list] = {}
    for k, v in kv.items():
        if v is None:
            continue
        table, _, leaf = k.rpartition(".")
        tables.setdefault(table, []).append((leaf, v))
    lines = []
    for t in sorted(tables):
        if t:
            lines.append(f"[{t}]")
        for leaf, v in tables[t]:
            lines.append(f"{leaf} = {v}")
        lines.append("")
    return "\n".join(lines)


# The run directory goes where the config's run.out_dir says ({d}/runs): no --out, so that
# file errors are reported as the file has them (--out is an override like --set).
TRAIN = ["{bin}", "train", "{d}/cfg.toml"]


def run_dirs(ctx: Ctx, parent: str = "runs") -> list[Path]:
    root = ctx.d / parent
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def check_summary_finite(ctx: Ctx, res: Result) -> list[str]:
    """The summary is JSON and its test losses / accuracies are finite numbers."""
    s = res.json()
    if not isinstance(s, dict) or "test" not in s:
        return [f"stdout is not the summary JSON: {res.stdout[:120]!r}"]
    problems = []
    t = s["test"]
    if not isinstance(t.get("task_loss"), (int, float)) or not math.isfinite(t["task_loss"]):
        problems.append(f"test task_loss {t.get('task_loss')!r} is not a finite number")
    for name, m in (t.get("tasks") or {}).items():
        for key in ("loss", "accuracy"):
            v = m.get(key)
            if key in m and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                problems.append(f"test {name}.{key} = {v!r}")
    return problems


def check_nothing_outside(allowed: tuple) -> Callable:
    """Only `allowed` names may exist at the top of the case directory afterwards."""

    def check(ctx: Ctx, res: Result) -> list[str]:
        extra = sorted(p.name for p in ctx.d.iterdir() if p.name not in allowed)
        return [f"wrote outside --out: {extra}"] if extra else []

    return check


# ---------------------------------------------------------------------------------------------
# Fixtures: runs shared by many cases (built once, copied by each case)
# ---------------------------------------------------------------------------------------------

# Kill cases: 8 epochs whose validation objective goes up and down (best epoch 6 of 8), and
# 4 epochs that each improve on the last (every checkpoint moves both pointers).
KILL_OVER = {"optim.epochs": "8", "optim.lr": "0.03"}
KILL2_OVER = {"optim.epochs": "4", "optim.lr": "0.01"}
FLEX_ENV = {"BURN_DEVICE": "flex"}


class Fixtures:
    def __init__(self, root: Path, binary: Path, caps: dict):
        self.root = root
        self.bin = binary
        self.caps = caps
        self.cache: dict = {}
        self.locks: dict = {}
        self.lock = threading.Lock()

    def get(self, name: str):
        with self.lock:
            lock = self.locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self.cache:
                try:
                    self.cache[name] = ("ok", getattr(self, "_" + name)())
                except FixtureError as e:
                    self.cache[name] = ("error", str(e))
            status, value = self.cache[name]
            if status == "error":
                raise FixtureError(value)
            return value

    def _train(self, name: str, over: dict, extra=(), env=None, timeout=180) -> tuple[Path, Result]:
        d = self.root / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        (d / "cfg.toml").write_text(config_text(over).replace("{d}", str(d)))
        res = run_cmd(
            [self.bin, "train", d / "cfg.toml", "--out", d / "runs", *extra], d, env or FLEX_ENV, timeout, 3.0
        )
        runs = sorted((d / "runs").iterdir()) if (d / "runs").is_dir() else []
        if res.timed_out or len(runs) != 1:
            raise FixtureError(f"fixture {name}: {res.error_line()} (exit {res.rc})")
        return runs[0], res

    def _stopped4(self) -> Path:
        run, res = self._train("stopped4", {"optim.epochs": "4", "run.stop_after_epoch": "2"})
        if res.rc != 0:
            raise FixtureError(f"stopped4: exit {res.rc}: {res.error_line()}")
        return run

    def _stopped6(self) -> Path:
        # Bigger, so that two resumes of it surely overlap (about a second per epoch).
        run, res = self._train("stopped6", {"optim.epochs": "6", "run.stop_after_epoch": "2",
                                            "data.synthetic.n_train": "20000", "data.batch_size": "32"})
        if res.rc != 0:
            raise FixtureError(f"stopped6: exit {res.rc}: {res.error_line()}")
        return run

    def _finished3(self) -> Path:
        run, res = self._train("finished3", {"optim.epochs": "3"})
        if res.rc != 0:
            raise FixtureError(f"finished3: exit {res.rc}: {res.error_line()}")
        return run

    def _finished3b(self) -> Path:
        run, res = self._train("finished3b", {"optim.epochs": "3", "run.seed": "1"})
        if res.rc != 0:
            raise FixtureError(f"finished3b: exit {res.rc}: {res.error_line()}")
        return run

    def _heldout(self) -> Path:
        run, res = self._train(
            "heldout", {"optim.epochs": "3", "data.synthetic.n_tasks": "3", "data.held_out_tasks": '["task2"]'}
        )
        if res.rc != 0:
            raise FixtureError(f"heldout: exit {res.rc}: {res.error_line()}")
        return run

    def _killref(self) -> dict:
        return self._kill_reference("killref", KILL_OVER)

    def _killref2(self) -> dict:
        return self._kill_reference("killref2", KILL2_OVER)

    def _kill_reference(self, name: str, over: dict) -> dict:
        """The uninterrupted run the kill cases must reproduce, and its syscall counts."""
        run, res = self._train(name, over)
        if res.rc != 0:
            raise FixtureError(f"{name}: exit {res.rc}: {res.error_line()}")
        ref = {
            "run": run,
            "metrics": read_metrics(run),
            "summary": json.loads((run / "summary.json").read_text()),
            "wall": res.seconds,
            "counts": {},
        }
        if self.caps.get("strace"):
            d = self.root / f"{name}-strace"
            d.mkdir(exist_ok=True)
            (d / "cfg.toml").write_text(config_text(over).replace("{d}", str(d)))
            trace = d / "trace.txt"
            r = run_cmd(
                ["strace", "-f", "-qq", "-o", trace, "-e", "trace=" + ",".join(KILL_SYSCALLS),
                 self.bin, "train", d / "cfg.toml", "--out", d / "runs"],
                d, FLEX_ENV, 300, 3.0,
            )
            if r.rc != 0:
                raise FixtureError(f"{name} under strace: exit {r.rc}: {r.error_line()}")
            counts = {}
            for line in trace.read_text().splitlines():
                m = re.match(r"\s*\d+\s+(\w+)\(", line)
                if m:
                    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
            ref["counts"] = counts
        return ref


def read_metrics(run: Path) -> list:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unparsable": line[:80]})
    return out


def copy_run(template: Path, dest_parent: Path) -> Path:
    dest_parent.mkdir(parents=True, exist_ok=True)
    dest = dest_parent / template.name
    shutil.copytree(template, dest, symlinks=True)
    return dest


KILL_SYSCALLS = ("rename", "renameat", "renameat2", "fsync", "fdatasync")


# ---------------------------------------------------------------------------------------------
# Family: config values (every numeric key x {negative, zero, NaN, inf, huge, wrong type})
# ---------------------------------------------------------------------------------------------

SINK = {"penalty.kind": '"sinkhorn"', "penalty.sinkhorn.eps": "0.5"}
SINK_BLUR = {"penalty.kind": '"sinkhorn"'}
COSINE = {"optim.schedule": '"cosine"'}
STEP = {"optim.schedule": '"step"'}
MLP = {"model.head": '"mlp"'}

VALUES = {
    "f": {"neg": "-1.0", "zero": "0.0", "one": "1.0", "nan": "nan", "inf": "inf", "huge": "1e30",
          "str": '"abc"', "bool": "true"},
    "u": {"neg": "-1", "zero": "0", "one": "1", "nan": "nan", "inf": "inf", "huge": "1000000000000",
          "str": '"abc"', "float": "2.5"},
}
FOUND = {
    "neg": ("-1",), "zero": ("0",), "one": ("1",), "nan": ("nan",), "inf": ("inf",),
    "huge": ("1e30", "1e+30", "1000000000000", "1e12", "memory"), "str": ("abc", "string"),
    "bool": ("true", "bool"), "float": ("2.5", "float"),
}

# (key, f = float / u = unsigned integer, context keys, {label: R refused | E ok | X either}).
# Labels not listed: the type errors (nan, inf, str, bool, float for integers, negative
# integers) must be refused; the others are not generated.
NUMERIC_KEYS = [
    ("data.synthetic.n_train", "u", {}, dict(zero="R", huge="R")),
    ("data.synthetic.n_valid", "u", {}, dict(zero="R", huge="R")),
    ("data.synthetic.n_test", "u", {}, dict(zero="R", huge="R")),
    ("data.synthetic.n_features", "u", {}, dict(zero="R", one="R", huge="R")),
    ("data.synthetic.n_tasks", "u", {}, dict(zero="R", huge="R")),
    ("data.synthetic.n_groups", "u", {}, dict(zero="R", one="R", huge="R")),
    ("data.synthetic.group_shift", "f", {}, dict(neg="E", zero="E", huge="E")),
    ("data.synthetic.label_bias", "f", {}, dict(neg="E", zero="E", huge="E")),
    ("data.synthetic.noise", "f", {}, dict(neg="R", zero="E", huge="E")),
    ("data.split_seed", "u", {}, dict(zero="E", huge="E")),
    ("data.batch_size", "u", {}, dict(zero="R", one="R", huge="E")),
    ("model.latent", "u", {}, dict(zero="R", huge="R")),
    ("model.dropout", "f", {}, dict(neg="R", zero="E", one="R", huge="R")),
    ("penalty.lambda", "f", {}, dict(neg="R", zero="E", huge="X")),
    ("penalty.eval_max_points", "u", {}, dict(zero="R", one="R", huge="E")),
    ("penalty.sinkhorn.eps", "f", SINK, dict(neg="R", zero="R", huge="X")),
    ("penalty.sinkhorn.blur", "f", SINK_BLUR, dict(neg="R", zero="R", huge="X")),
    ("penalty.sinkhorn.scaling", "f", SINK, dict(neg="R", zero="R", one="R", huge="R")),
    ("penalty.sinkhorn.tolerance", "f", SINK, dict(neg="R", zero="R", huge="X")),
    ("penalty.sinkhorn.max_iters", "u", SINK, dict(zero="R", huge="E")),
    ("penalty.sinkhorn.check_every", "u", SINK, dict(zero="R", huge="X")),
    ("optim.lr", "f", {}, dict(neg="R", zero="R", huge="X")),
    ("optim.weight_decay", "f", {}, dict(neg="R", zero="E", huge="X")),
    ("optim.epochs", "u", {}, dict(zero="R")),
    ("optim.min_lr", "f", COSINE, dict(neg="R", zero="E", huge="R")),
    ("optim.gamma", "f", STEP, dict(neg="R", zero="R", one="E", huge="R")),
    ("optim.step_size", "u", STEP, dict(zero="R", huge="E")),
    ("optim.grad_clip", "f", {}, dict(neg="R", zero="R", huge="E")),
    ("run.seed", "u", {}, dict(zero="E", huge="E")),
    ("run.checkpoint_every", "u", {}, dict(zero="E", huge="E")),
    ("run.stop_after_epoch", "u", {}, dict(zero="R", huge="R")),
]
TYPE_LABELS = {"f": ("nan", "inf", "str", "bool"), "u": ("neg", "nan", "inf", "str", "float")}
# A sinkhorn blur = -1 squares to eps = 1 but is no length.
SIZE_KEYS = {"data.synthetic.n_train", "data.synthetic.n_valid", "data.synthetic.n_test",
             "data.synthetic.n_features", "data.synthetic.n_tasks", "data.synthetic.n_groups",
             "model.latent"}


def config_value_cases() -> list[Case]:
    cases = []
    for key, kind, ctx_over, expect in NUMERIC_KEYS:
        labels = dict(expect)
        for t in TYPE_LABELS[kind]:
            labels.setdefault(t, "R")
        for label, outcome in labels.items():
            value = VALUES[kind][label]
            over = {**ctx_over, key: value}
            if key == "penalty.sinkhorn.blur":
                over.pop("penalty.sinkhorn.eps", None)
            name = f"config-{key}-{label}"
            defect = "config validation"
            if label in ("str", "bool", "float", "nan", "inf") and kind == "u" or label in ("str", "bool"):
                defect = "type errors in config files do not name the key"
            if key == "data.synthetic.n_groups" and label == "one":
                defect = "a dataset with one group is accepted"
            if key == "penalty.sinkhorn.scaling":
                defect = "one Sinkhorn scaling range everywhere"
            if label == "huge" and key in SIZE_KEYS:
                defect = HUGE
            key_kw = (kw_key(key), "memory") if (label == "huge" and key in SIZE_KEYS) else kw_key(key)
            if outcome == "R":
                cases.append(Case(name, "config", "refused", TRAIN, {"cfg.toml": config_text(over)},
                                  keywords=(key_kw, FOUND[label]), defect=defect,
                                  timeout=120, mem_gib=3))
            elif outcome == "E":
                cases.append(Case(name, "config", "ok", TRAIN, {"cfg.toml": config_text(over)},
                                  checks=[check_summary_finite], defect="valid input must work",
                                  timeout=180))
            else:
                # Refused naming the key, or stopped as a divergence naming the step.
                kws = ((kw_key(key), "step", "batch"),)
                if key == "optim.lr":
                    kws = ("epoch", ("step", "batch"))
                    defect = DIVERGE
                cases.append(Case(name, "config", "ok_or_refused", TRAIN, {"cfg.toml": config_text(over)},
                                  keywords=kws, checks=[check_summary_finite], defect=defect, timeout=180))
        # The same through --set, for the type errors and a negative value.
        for label in ("neg", "nan", "str"):
            outcome = labels.get(label)
            if outcome is None:
                continue
            raw = VALUES[kind][label]
            over = dict(ctx_over)
            if key == "penalty.sinkhorn.blur":
                over.pop("penalty.sinkhorn.eps", None)
            argv = TRAIN + ["--set", f"{key}={raw}"]
            files = {"cfg.toml": config_text(over, drop=(key,))}
            name = f"config-set-{key}-{label}"
            if outcome == "R":
                cases.append(Case(name, "config", "refused", argv, files,
                                  keywords=(kw_key(key), FOUND[label]), defect="config validation (--set)"))
            elif outcome == "E":
                cases.append(Case(name, "config", "ok", argv, files, checks=[check_summary_finite],
                                  defect="valid input must work", timeout=180))
    return cases


# Keys whose value is a name, a list or a path: one bad value each, and what the message must
# name besides the key (a valid choice, when the key has a fixed set of them).
SHAPE_CASES = [
    ("model.activation", '"sigmoid"', {}, "R", ("relu",)),
    ("model.head", '"cnn"', {}, "R", ("mlp",)),
    ("penalty.kind", '"wasserstein"', {}, "R", ("sinkhorn",)),
    ("penalty.mmd.estimator", '"mid"', {}, "R", ("unbiased",)),
    ("optim.kind", '"sgd"', {}, "R", ("adamw",)),
    ("optim.schedule", '"linear"', {}, "R", ("cosine",)),
    ("run.device", '"tpu"', {}, "R", ("flex",)),
    ("data.aware", '"yes"', {}, "R", ()),
    ("data.tasks", '"task0"', {}, "R", ()),
    ("run.out_dir", "5", {}, "R", ()),
    ("run.name", "5", {}, "R", ()),
    ("model.encoder_widths", "8", {}, "R", ()),
    ("model.encoder_widths", "[0]", {}, "R", ()),
    ("model.encoder_widths", "[-1]", {}, "R", ()),
    ("model.encoder_widths", '["a"]', {}, "R", ()),
    ("model.encoder_widths", "[1000000000000]", {}, "R", ()),
    ("model.encoder_widths", "[]", {}, "X", ()),
    ("model.head_hidden", "[]", MLP, "R", ()),
    ("model.head_hidden", "[0]", MLP, "R", ()),
    ("penalty.mmd.bandwidths", "1.0", {}, "R", ()),
    ("penalty.mmd.bandwidths", '"mean"', {}, "R", ("median",)),
    ("penalty.mmd.bandwidths", "[]", {}, "R", ()),
    ("penalty.mmd.bandwidths", "[-1.0]", {}, "R", ()),
    ("penalty.mmd.bandwidths", "[0.0]", {}, "R", ()),
    ("penalty.mmd.bandwidths", "[nan]", {}, "R", ()),
    ("penalty.mmd.bandwidths", "[inf]", {}, "R", ()),
    ("penalty.mmd.bandwidths", "[0.5, 1.0, 2.0]", {}, "E", ()),
    ("data.dataset", '"nosuch"', {}, "R", ("nosuch",)),
    ("data.dataset", '""', {}, "R", ()),
    ("data.split", "{ train = 0.5, valid = 0.5, test = 0.5 }", {}, "R", ()),
    ("data.split", "{ train = -0.2, valid = 0.6, test = 0.6 }", {}, "R", ()),
    ("data.split", "{ train = nan, valid = 0.5, test = 0.5 }", {}, "R", ()),
    ("data.split", "{ train = 0.7, valid = 0.3 }", {}, "R", ()),
]


def config_shape_cases() -> list[Case]:
    cases = []
    for i, (key, value, ctx_over, outcome, extra) in enumerate(SHAPE_CASES):
        over = {**ctx_over, key: value}
        drop = SYNTH_KEYS if key == "data.dataset" else ()
        slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_") or "empty"
        name = f"config-{key}-{slug}"
        files = {"cfg.toml": config_text(over, drop=drop)}
        defect = "type errors in config files do not name the key"
        forbid = ()
        if key == "penalty.mmd.bandwidths" and value == "1.0":
            defect, forbid = "a scalar MMD bandwidth gets an untagged-enum message", ("untagged",)
        if value == "[1000000000000]":
            defect = HUGE
        if key == "data.dataset":
            defect = "missing files"
        kws = (kw_key(key),) + tuple(extra)
        if key == "data.dataset":
            kws = tuple(extra) or (kw_key(key),)
        if outcome == "R":
            cases.append(Case(name, "config", "refused", TRAIN, files, keywords=kws, defect=defect,
                              forbid=forbid, timeout=60))
        elif outcome == "E":
            cases.append(Case(name, "config", "ok", TRAIN, files, checks=[check_summary_finite],
                              defect="valid input must work", timeout=180))
        else:
            cases.append(Case(name, "config", "ok_or_refused", TRAIN, files, keywords=kws,
                              checks=[check_summary_finite], defect=defect, timeout=180))
    return cases


# ---------------------------------------------------------------------------------------------
# Family: config files (malformed TOML, unknown keys, ignored keys, contradictions)
# ---------------------------------------------------------------------------------------------


def config_file_cases() -> list[Case]:
    cases = []

    def refused(name, text, keywords, defect="config validation", argv=TRAIN, **kw):
        files = {"cfg.toml": text} if isinstance(text, (str, bytes)) else text
        cases.append(Case(name, "config", "refused", argv, files, keywords=keywords, defect=defect, **kw))

    base = config_text()
    refused("config-toml-unclosed-table", "[data\nbatch_size = 3\n", ("cfg.toml", "line 1"))
    refused("config-unknown-section", base + "[trainer]\nx = 1\n", ("cfg.toml", "trainer"))
    refused("config-toml-equals-equals", "[optim]\nepochs = 2\nlr = = 3\n", ("cfg.toml", "line 3"))
    refused("config-toml-duplicate-key", "[optim]\nlr = 0.1\nlr = 0.2\n", ("cfg.toml", kw_key("lr")))
    refused("config-toml-duplicate-table", "[optim]\nlr = 0.1\n[optim]\nepochs = 2\n", ("cfg.toml", "optim"))
    refused("config-toml-invalid-utf8", b"[optim]\nlr = 0.1 # \xff\xfe\n", ("cfg.toml",))
    refused("config-toml-unterminated-string", '[run]\nname = "abc\n', ("cfg.toml", "line 2"))
    refused("config-toml-binary-garbage", bytes(range(256)) * 4, ("cfg.toml",))
    for key, good in [
        ("data.batchsize", "batch_size"), ("data.synthetic.n_rows", "n_train"), ("model.latent_dim", "latent"),
        ("penalty.lamda", "lambda"), ("penalty.mmd.bandwidth", "bandwidths"), ("penalty.sinkhorn.epsilon", "eps"),
        ("optim.learning_rate", "lr"), ("run.seeds", "seed"), ("model.heads.task0.widths", "hidden"),
    ]:
        text = config_text({key: "1"})
        refused(f"config-unknown-key-{key}", text, (key, good), defect="unknown keys are errors listing valid keys")
        refused(f"config-set-unknown-key-{key}", config_text(), (key, good),
                defect="unknown keys are errors listing valid keys", argv=TRAIN + ["--set", f"{key}=1"])
    cases.append(Case("config-empty-file", "config", "ok", TRAIN + ["--set", "optim.epochs=1"],
                      {"cfg.toml": ""}, checks=[check_summary_finite], timeout=240,
                      defect="valid input must work"))
    cases.append(Case("config-crlf", "config", "ok", TRAIN, {"cfg.toml": base.replace("\n", "\r\n")},
                      checks=[check_summary_finite], timeout=180, defect="valid input must work"))
    cases.append(Case("config-bom", "config", "ok_or_refused", TRAIN, {"cfg.toml": "\ufeff" + base},
                      keywords=("cfg.toml",), checks=[check_summary_finite], timeout=180,
                      defect="config validation"))
    refused("config-missing-file", {}, ("nosuch.toml",), argv=["{bin}", "train", "{d}/nosuch.toml"],
            defect="missing files")
    refused("config-is-directory", {"cfg.toml/x": "x"}, ("cfg.toml",), defect="missing files")
    cases.append(Case("config-unreadable", "config", "custom", None, {"cfg.toml": base}, needs=("readonly",),
                      custom=lambda ctx: unreadable_config(ctx), defect="missing files"))
    refused("config-sinkhorn-blur-and-eps", config_text({**SINK, "penalty.sinkhorn.blur": "0.5"}),
            ("blur", "eps"))
    refused("config-sinkhorn-neither", config_text(SINK_BLUR), ("blur", "eps"))
    refused("config-stop-after-last-epoch", config_text({"run.stop_after_epoch": "2"}), ("stop_after_epoch",))
    refused("config-tasks-empty", config_text({"data.tasks": "[]"}), (kw_key("tasks"),))
    refused("config-tasks-unknown", config_text({"data.tasks": '["task9"]'}), ("task9", "task0"))
    refused("config-tasks-duplicate", config_text({"data.tasks": '["task0", "task0"]'}), ("task0",),
            defect="duplicate task names are accepted")
    refused("config-held-out-unknown", config_text({"data.held_out_tasks": '["task9"]'}), ("task9", "held_out"))
    refused("config-held-out-all", config_text({"data.held_out_tasks": '["task0", "task1"]'}), ("held",))
    refused("config-held-out-and-trained", config_text({"data.tasks": '["task0"]', "data.held_out_tasks": '["task0"]'}),
            ("task0",))
    refused("config-head-for-unknown-task", config_text({"model.heads.nosuch.kind": '"mlp"'}), ("nosuch",),
            defect="[model.heads.NAME] for a task that does not exist is ignored")
    refused("config-synthetic-with-spec", config_text({"data.dataset": '"adult"'}), ("synthetic",))
    for name, over, kw in [
        ("config-ignored-sensitive-on-synthetic",
         {"data.sensitive": '{ column = "sex", groups = [{ name = "a", values = ["a"] }] }'}, "sensitive"),
        ("config-ignored-split-on-synthetic", {"data.split": "{ train = 0.5, valid = 0.25, test = 0.25 }"}, "split"),
        ("config-ignored-sinkhorn-eps-with-mmd", {"penalty.sinkhorn.eps": "0.3"}, "sinkhorn"),
        ("config-ignored-min-lr-with-constant", {"optim.min_lr": "0.005"}, "min_lr"),
        ("config-ignored-step-size-with-cosine", {**COSINE, "optim.step_size": "3"}, "step_size"),
    ]:
        cases.append(Case(name, "config", "refused_or_warned", TRAIN, {"cfg.toml": config_text(over)},
                          keywords=(kw,), timeout=180, defect="no silently ignored key"))
    # --set syntax.
    for name, arg, kws in [
        ("set-no-equals", "optim.lr", ("optim.lr",)),
        ("set-empty-key", "=1", ("=1",)),
        ("set-empty-component", "optim..lr=1", ("optim..lr",)),
        ("set-empty-value", "optim.lr=", ("optim.lr",)),
        ("set-table-to-scalar", "optim=3", ("optim",)),
        ("set-scalar-as-table", "optim.lr.x=1", ("optim.lr",)),
        ("set-unknown-section", "nosuch.key=1", ("nosuch",)),
        ("set-float-for-int", "optim.epochs=1e3", ("optim.epochs",)),
        ("set-list-for-scalar", "optim.lr=[1, 2]", ("optim.lr",)),
    ]:
        refused(f"config-{name}", config_text(), kws, argv=TRAIN + ["--set", arg], defect="config validation (--set)")
    cases.append(Case("config-set-head-kind", "config", "ok", TRAIN + ["--set", "model.heads.task0.kind=mlp"],
                      {"cfg.toml": config_text()}, checks=[check_summary_finite], timeout=180,
                      defect="valid input must work"))
    return cases


def unreadable_config(ctx: Ctx) -> Verdict:
    path = ctx.d / "cfg.toml"
    path.chmod(0)
    try:
        res = ctx.run(ctx.caps["ro_prefix"] + TRAIN)
    finally:
        path.chmod(0o644)
    return judge_refused(res, ("cfg.toml", ("permission", "denied")))


# ---------------------------------------------------------------------------------------------
# Family: command-line flags
# ---------------------------------------------------------------------------------------------

DIV = ["{bin}", "divergence", "--x", "{d}/x.csv", "--y", "{d}/y.csv"]


def small_clouds(seed=1, n=8, m=7, d=2, shift=0.5):
    rng = random.Random(seed)
    return gauss_cloud(rng, n, d), gauss_cloud(rng, m, d, mean=shift)


def cli_cases() -> list[Case]:
    cases = []
    cfg = {"cfg.toml": config_text()}

    def refused(name, argv, keywords, files=None, defect="command-line validation", **kw):
        cases.append(Case(name, "cli", "refused", argv, {**cfg, **(files or {})}, keywords=keywords,
                          defect=defect, **kw))

    neg = "negative CLI numbers exit 2 (the README says 1)"
    refused("cli-train-seed-negative", TRAIN + ["--seed", "-1"], ("seed",), defect=neg)
    refused("cli-train-seed-text", TRAIN + ["--seed", "abc"], ("seed", "abc"), defect=neg)
    refused("cli-train-seed-float", TRAIN + ["--seed", "1.5"], ("seed", "1.5"), defect=neg)
    refused("cli-train-device-tpu", TRAIN + ["--device", "tpu"], ("tpu", "flex"), defect=neg)
    refused("cli-train-unknown-flag", TRAIN + ["--epochs", "3"], ("--epochs",), defect=neg)
    refused("cli-train-no-config", ["{bin}", "train"], ("config",), defect=neg)
    refused("cli-train-verbose-and-quiet", TRAIN + ["-v", "-q"], ("quiet",), defect=neg)
    refused("cli-no-subcommand", ["{bin}"], ("train",), defect=neg)
    refused("cli-unknown-subcommand", ["{bin}", "trian"], ("trian",), defect=neg)
    refused("cli-train-out-is-file", TRAIN + ["--out", "{d}/outfile"], ("outfile",),
            files={"outfile": "not a directory\n"}, defect="missing files")
    refused("cli-train-resume-missing", ["{bin}", "train", "--resume", "{d}/nosuch"], ("nosuch",),
            defect="missing files")
    refused("cli-train-resume-not-a-run", ["{bin}", "train", "--resume", "{d}/notarun"], ("notarun",),
            files={"notarun/README": "x"}, defect="missing files")
    refused("cli-train-data-dir-for-spec-missing",
            ["{bin}", "train", "{d}/cfg2.toml", "--out", "{d}/runs", "--data-dir", "{d}/nosuch"],
            ("nosuch",), files={"cfg2.toml": config_text({"data.dataset": '"german_credit"'}, drop=SYNTH_KEYS)},
            defect="missing files")

    x, y = small_clouds()
    pts = {"x.csv": csv_points(x), "y.csv": csv_points(y)}
    sink = DIV + ["--kind", "sinkhorn", "--eps", "0.5"]
    mmd = DIV + ["--kind", "mmd"]

    def drefused(name, argv, keywords, defect="command-line validation", files=None):
        cases.append(Case(name, "cli", "refused", argv, {**pts, **(files or {})}, keywords=keywords, defect=defect))

    zero_ok = "--tolerance 0, --max-iters 0, --check-every 0 are accepted"
    for v in ("0", "-1", "nan", "inf"):
        drefused(f"cli-div-tolerance-{v}", sink + ["--tolerance", v], ("tolerance",),
                 zero_ok if v == "0" else (neg if v == "-1" else "command-line validation"))
    for flag in ("--max-iters", "--check-every"):
        drefused(f"cli-div{flag}-0", sink + [flag, "0"], (flag.lstrip("-"),), zero_ok)
        drefused(f"cli-div{flag}--1", sink + [flag, "-1"], (flag.lstrip("-"),), neg)
    for v in ("0.3", "1.0", "1.2", "nan", "-0.5"):
        drefused(f"cli-div-scaling-{v}", sink + ["--scaling", v], ("scaling",),
                 "Sinkhorn scaling >= 1 or eps <= 0 must be refused everywhere")
    for v in ("0", "-1", "nan", "inf"):
        drefused(f"cli-div-eps-{v}", DIV + ["--kind", "sinkhorn", "--eps", v], ("eps",),
                 "Sinkhorn scaling >= 1 or eps <= 0 must be refused everywhere")
    for v in ("0", "-1", "nan"):
        drefused(f"cli-div-blur-{v}", DIV + ["--kind", "sinkhorn", "--blur", v], ("blur",),
                 "Sinkhorn scaling >= 1 or eps <= 0 must be refused everywhere")
    drefused("cli-div-eps-and-blur", DIV + ["--kind", "sinkhorn", "--eps", "0.5", "--blur", "0.7"], ("blur",))
    drefused("cli-div-sinkhorn-without-eps", DIV + ["--kind", "sinkhorn"], ("eps",))
    for v in ("0", "-1", "nan", "inf", "abc", "1,,2", "", "median,1", "1;2"):
        slug = {"": "empty"}.get(v, v.replace(",", "_").replace(";", "_"))
        drefused(f"cli-div-bandwidth-{slug}", mmd + ["--bandwidth", v], ("bandwidth",))
    drefused("cli-div-bandwidth-with-sinkhorn", sink + ["--bandwidth", "1.0"], ("bandwidth",),
             "--bandwidth with --kind sinkhorn is accepted")
    cases.append(Case("cli-div-estimator-with-sinkhorn", "cli", "refused_or_warned", sink + ["--estimator", "unbiased"],
                      pts, keywords=("estimator",), defect="no silently ignored key"))
    drefused("cli-div-eps-with-mmd", mmd + ["--eps", "0.5"], ("eps",))
    drefused("cli-div-kind-unknown", DIV + ["--kind", "wasserstein"], ("wasserstein",))
    drefused("cli-div-no-kind", DIV, ("kind",), neg)
    drefused("cli-div-device-tpu", mmd + ["--device", "tpu"], ("tpu",))
    drefused("cli-div-x-missing", ["{bin}", "divergence", "--x", "{d}/nosuch.csv", "--y", "{d}/y.csv", "--kind", "mmd"],
             ("nosuch.csv",), "missing files")
    drefused("cli-div-x-is-directory", ["{bin}", "divergence", "--x", "{d}/dir.csv", "--y", "{d}/y.csv", "--kind", "mmd"],
             ("dir.csv",), "missing files", files={"dir.csv/a": "1\n"})
    cases.append(Case("cli-div-max-iters-huge", "cli", "ok", sink + ["--max-iters", "1000000000000"], pts,
                      checks=[check_json_finite], defect="valid input must work"))
    return cases


def check_json_finite(ctx: Ctx, res: Result) -> list[str]:
    out = res.json()
    if not isinstance(out, dict):
        return [f"stdout is not one JSON object: {res.stdout[:120]!r}"]
    v = out.get("value")
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return [f"value {v!r} is not a finite number"]
    return []


# ---------------------------------------------------------------------------------------------
# Family: point-cloud files of `fairrep divergence` (.npy and .csv)
# ---------------------------------------------------------------------------------------------


def points_cases() -> list[Case]:
    cases = []
    x, y = small_clouds(seed=2)
    ycsv = {"y.csv": csv_points(y)}
    good = npy_matrix(x)

    def bad_x(name, data: bytes, keywords, defect="bad input files", ext="npy"):
        cases.append(Case(
            name, "points", "refused",
            ["{bin}", "divergence", "--x", f"{{d}}/x.{ext}", "--y", "{d}/y.csv", "--kind", "mmd"],
            {f"x.{ext}": data, **ycsv}, keywords=(f"x.{ext}",) + tuple(keywords), defect=defect))

    f4 = struct.pack("<" + "f" * 16, *([0.5] * 16))
    bad_x("npy-bad-magic", b"NUMPY\x01\x00" + good[8:], ())
    bad_x("npy-version-9", good[:6] + b"\x09\x00" + good[8:], ("version",))
    bad_x("npy-truncated-header", good[:30], ("header",))
    bad_x("npy-header-not-utf8", npy_bytes(f4, header=b"{'descr': '\xff\xfe', }" + b" " * 40 + b"\n"), ())
    bad_x("npy-int32", npy_bytes(struct.pack("<16i", *range(16)), "<i4", "(8, 2)"), ("<i4",))
    bad_x("npy-big-endian", npy_bytes(struct.pack(">16d", *([0.5] * 16)), ">f8", "(8, 2)"), (">f8",))
    bad_x("npy-float16", npy_bytes(b"\x00" * 32, "<f2", "(8, 2)"), ("<f2",))
    bad_x("npy-fortran", npy_bytes(f4, "<f4", "(8, 2)", fortran=True), ("fortran",))
    bad_x("npy-rank3", npy_bytes(f4, "<f4", "(2, 4, 2)"), ("rank",))
    bad_x("npy-shape-zero-rows", npy_bytes(b"", "<f4", "(0, 2)"), ())
    bad_x("npy-shape-text", npy_bytes(f4, "<f4", "(8, two)"), ("shape",))
    bad_x("npy-nan-value", npy_matrix([[0.0, 1.0], [float("nan"), 2.0]] + x[2:]), ("row 2", "column 1"))
    bad_x("npy-inf-value", npy_matrix(x[:3] + [[1.0, float("inf")]] + x[4:]), ("row 4", "column 2"))
    bad_x("npy-data-short", good[:-4], ("bytes",))
    bad_x("npy-data-long", good + b"\x00" * 4, ("bytes",))
    # rows * cols * width wraps around in 64 bits to the data's length (0 or 8 bytes); the
    # dimension (2) matches y's, so only the shape is wrong.
    shape_kw = (("shape", "bytes", "size", "large"),)
    bad_x("npy-shape-overflow-2^62", npy_bytes(b"", "<f4", "(4611686018427387904, 2)"), shape_kw,
          defect="a .npy whose header shape overflows the size check panics")
    bad_x("npy-shape-overflow-2^61-f8", npy_bytes(b"", "<f8", "(2305843009213693952, 2)"), shape_kw,
          defect="a .npy whose header shape overflows the size check panics")
    bad_x("npy-shape-overflow-product", npy_bytes(b"\x00" * 8, "<f4", "(4611686018427387905, 2)"), shape_kw,
          defect="a .npy whose header shape overflows the size check panics")
    bad_x("npy-shape-beyond-usize", npy_bytes(b"", "<f4", "(18446744073709551616, 1)"), ("shape",))
    bad_x("npy-v2-truncated", b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{'descr'", ("header",))
    # CSV point clouds.
    bad_x("csv-ragged", b"1,2\n3,4\n5\n", ("row 3",), ext="csv")
    bad_x("csv-not-a-number", b"1,2\n3,abc\n", ("row 2", "column 2", "abc"), ext="csv")
    bad_x("csv-nan", b"1,2\nNaN,4\n", ("row 2", "column 1"), ext="csv")
    bad_x("csv-inf", b"1,2\n3,inf\n", ("row 2", "column 2"), ext="csv")
    bad_x("csv-overflow", b"1,2\n3,1e400\n", ("row 2", "column 2"), ext="csv")
    bad_x("csv-empty", b"", (), ext="csv")
    bad_x("csv-only-blank-lines", b"\n\n  \n", (), ext="csv")
    bad_x("csv-trailing-comma", b"1,2,\n3,4,\n", ("row 1", "column 3"), ext="csv")
    bad_x("csv-header-row", b"a,b\n1,2\n3,4\n", ("row 1", "a"), ext="csv")
    bad_x("csv-not-utf8", b"1,2\n3,\xff\n", (), ext="csv")
    bad_x("points-extension-dat", b"1,2\n", ("extension",), ext="dat")
    cases.append(Case("points-dimension-mismatch", "points", "refused",
                      ["{bin}", "divergence", "--x", "{d}/x.csv", "--y", "{d}/y3.csv", "--kind", "mmd"],
                      {"x.csv": csv_points(x), "y3.csv": "1,2,3\n4,5,6\n"}, keywords=("x.csv", "y3.csv", "dimension")))
    # Weights.
    base_files = {"x.csv": csv_points(x), **ycsv}
    for name, text, kws in [
        ("weights-negative", "0.5\n-0.1\n" + "0.1\n" * 6, ("a.csv", "negative")),
        ("weights-all-zero", "0\n" * 8, ("a.csv", "zero")),
        ("weights-count", "1\n" * 5, ("a.csv", "5")),
        ("weights-2d", "1,1\n" * 8, ("a.csv",)),
        ("weights-nan", "1\n" * 7 + "nan\n", ("a.csv", "row 8")),
    ]:
        cases.append(Case(name, "points", "refused", DIV + ["--kind", "mmd", "--a", "{d}/a.csv"],
                          {**base_files, "a.csv": text}, keywords=kws, defect="bad input files"))
    cases.append(Case("weights-unbiased-mmd", "points", "ok_or_refused",
                      DIV + ["--kind", "mmd", "--estimator", "unbiased", "--bandwidth", "1", "--a", "{d}/a.csv"],
                      {**base_files, "a.csv": "1\n" * 8}, keywords=("weights",),
                      checks=[check_value(lambda: mmd2_ref(x, y, [1.0], unbiased=True), 1e-4, 1e-6)],
                      defect="bad input files"))
    cases.append(Case("points-unbiased-one-point", "points", "refused",
                      DIV + ["--kind", "mmd", "--estimator", "unbiased"],
                      {"x.csv": "1,2\n", **ycsv}, keywords=("x.csv", "two")))
    # Accepted variants, checked against the exact value.
    cases.append(Case("npy-1d-arrays", "points", "ok",
                      ["{bin}", "divergence", "--x", "{d}/x.npy", "--y", "{d}/y.npy", "--kind", "mmd", "--bandwidth", "1"],
                      {"x.npy": npy_bytes(struct.pack("<4f", 0, 1, 2, 3), "<f4", "(4,)"),
                       "y.npy": npy_bytes(struct.pack("<3f", 0.5, 1.5, 4), "<f4", "(3,)")},
                      checks=[check_value(lambda: mmd2_ref([[0.0], [1.0], [2.0], [3.0]], [[0.5], [1.5], [4.0]], [1.0]), 1e-5)]))
    cases.append(Case("npy-f64-input", "points", "ok",
                      ["{bin}", "divergence", "--x", "{d}/x.npy", "--y", "{d}/y.csv", "--kind", "mmd", "--bandwidth", "1"],
                      {"x.npy": npy_matrix(x, "<f8"), **ycsv},
                      checks=[check_value(lambda: mmd2_ref(x, y, [1.0]), 1e-5)]))
    cases.append(Case("csv-blank-lines-and-spaces", "points", "ok",
                      DIV + ["--kind", "mmd", "--bandwidth", "1"],
                      {"x.csv": "\n" + csv_points(x).replace(",", " , ") + "\n\n", **ycsv},
                      checks=[check_value(lambda: mmd2_ref(x, y, [1.0]), 1e-5)]))
    cases.append(Case("weights-with-zeros", "points", "ok",
                      DIV + ["--kind", "sinkhorn", "--eps", "0.5", "--a", "{d}/a.csv", "--f64", "--device", "flex",
                             "--tolerance", "1e-12"],
                      {**base_files, "a.csv": "0\n2\n1\n0\n1\n1\n0\n3\n"},
                      checks=[check_value(lambda: sinkhorn_ref(x, y, 0.5, a=[w / 8 for w in [0, 2, 1, 0, 1, 1, 0, 3]]),
                                          1e-7, 1e-10)]))
    return cases


def check_value(ref_fn: Callable[[], float], rtol: float, atol: float = 0.0, flag_ok: bool = False,
                key: str = "value") -> Callable:
    """The printed value is within rtol of the exact one (or, with flag_ok, the output says it
    is not to be trusted: `converged: false` or a warning about precision)."""

    def check(ctx: Ctx, res: Result) -> list[str]:
        out = res.json()
        if not isinstance(out, dict):
            return [f"stdout is not one JSON object: {res.stdout[:120]!r}"]
        got = out.get(key)
        if isinstance(got, list) and got:
            got = got[0]
        want = ref_fn()
        if rel_close(got, want, rtol, atol):
            return []
        if flag_ok and (out.get("converged") is False or re.search(
                r"WARN.*(precision|float64|--f64|accura|cancel|overflow)", res.stderr, re.I)):
            return []
        if not isinstance(got, (int, float)):
            return [f"{key} is {json.dumps(got)} (not a number), exact {want:.6g}"]
        rel = abs(got - want) / abs(want) if want else float("inf")
        return [f"{key} {got!r}, exact {want:.6g} (relative error {rel:.2g} > {rtol:g}); "
                f"converged = {out.get('converged')}"]

    return check


def check_grad(ref_fn: Callable[[], list], rtol: float) -> Callable:
    def check(ctx: Ctx, res: Result) -> list[str]:
        out = res.json()
        if not isinstance(out, dict) or not isinstance(out.get("grad_x"), list):
            return [f"no grad_x in {res.stdout[:120]!r}"]
        want = ref_fn()
        got = out["grad_x"]
        scale = max(abs(v) for row in want for v in row)
        worst = max(abs(g - w) for grow, wrow in zip(got, want) for g, w in zip(grow, wrow))
        if len(got) != len(want) or worst > rtol * scale:
            return [f"gradient off by {worst:.3g} (max |grad| {scale:.3g}, tolerance {rtol:g} relative)"]
        return []

    return check


# ---------------------------------------------------------------------------------------------
# Family: divergence values against exact references
# ---------------------------------------------------------------------------------------------

# Hides every Vulkan driver (lavapipe included) and the EGL vendors wgpu's GL backend would use.
NO_GPU_ENV = {"VK_ICD_FILENAMES": "/nonexistent/none.json", "VK_DRIVER_FILES": "/nonexistent/none.json",
              "__EGL_VENDOR_LIBRARY_FILENAMES": "/nonexistent/none.json"}
REFERENCES: dict = {}
REF_LOCK = threading.Lock()


def cached(name: str, fn: Callable[[], float]) -> Callable[[], float]:
    """A reference computed once per campaign (some take seconds in pure Python)."""

    def get() -> float:
        with REF_LOCK:
            if name not in REFERENCES:
                REFERENCES[name] = fn()
            return REFERENCES[name]

    return get


def div_case(name, x, y, args, checks, expect="ok", defect="divergence accuracy", keywords=(), **kw) -> Case:
    return Case(name, "divergence", expect, DIV + list(args), {"x.csv": csv_points(x), "y.csv": csv_points(y)},
                checks=checks, keywords=keywords, defect=defect, **kw)


def divergence_cases() -> list[Case]:
    cases = []
    rng = random.Random(11)
    x = gauss_cloud(rng, 12, 3)
    y = gauss_cloud(rng, 10, 3, mean=0.6)
    f64 = ["--f64", "--device", "flex", "--tolerance", "1e-12", "--max-iters", "100000"]
    f64_mmd = ["--f64", "--device", "flex"]  # MMD has no solver: the Sinkhorn flags are refused
    # Sinkhorn.
    cases.append(div_case("div-sinkhorn-exact-f64", x, y, ["--kind", "sinkhorn", "--eps", "0.3", *f64],
                          [check_value(lambda: sinkhorn_ref(x, y, 0.3), 1e-8, 1e-12)]))
    cases.append(div_case("div-sinkhorn-exact-f32", x, y, ["--kind", "sinkhorn", "--eps", "0.3", "--device", "flex"],
                          [check_value(lambda: sinkhorn_ref(x, y, 0.3), 1e-4, 1e-7)]))
    cases.append(div_case("div-sinkhorn-exact-ndarray", x, y, ["--kind", "sinkhorn", "--eps", "0.3", "--device", "ndarray"],
                          [check_value(lambda: sinkhorn_ref(x, y, 0.3), 1e-4, 1e-7)]))
    t = [0.75, -0.5, 0.25]
    xt = [[p[0] + t[0], p[1] + t[1], p[2] + t[2]] for p in x]  # exact in float32 (small dyadic shifts)
    want_t = math.fsum(v * v for v in t) / 2
    cases.append(div_case("div-sinkhorn-translated-f32", x, xt, ["--kind", "sinkhorn", "--eps", "0.1", "--device", "flex"],
                          [check_value(lambda: want_t, 1e-4)]))
    cases.append(div_case("div-sinkhorn-translated-f64", x, xt, ["--kind", "sinkhorn", "--eps", "0.1", *f64],
                          [check_value(lambda: want_t, 1e-8)]))
    cases.append(div_case("div-sinkhorn-single-points", [[0.0, 0.0]], [[3.0, 4.0]],
                          ["--kind", "sinkhorn", "--eps", "0.5", "--device", "flex"], [check_value(lambda: 12.5, 1e-5)]))
    cases.append(div_case("div-sinkhorn-identical", x, x, ["--kind", "sinkhorn", "--eps", "0.2", "--device", "flex"],
                          [check_value(lambda: 0.0, 0.0, 1e-6)]))
    cases.append(Case("div-sinkhorn-symmetry", "divergence", "custom", None,
                      {"x.csv": csv_points(x), "y.csv": csv_points(y)}, custom=symmetry_case,
                      defect="divergence accuracy"))
    rng2 = random.Random(12)
    xs, ys = gauss_cloud(rng2, 5, 2), gauss_cloud(rng2, 4, 2, mean=0.5)
    cases.append(div_case("div-sinkhorn-grad-f64", xs, ys, ["--kind", "sinkhorn", "--eps", "0.5", "--grad", *f64],
                          [check_grad(lambda: sinkhorn_fd_grad(xs, ys, 0.5), 1e-5)]))
    cases.append(div_case("div-sinkhorn-never-converges", x, y,
                          ["--kind", "sinkhorn", "--eps", "0.001", "--max-iters", "1", "--check-every", "1",
                           "--tolerance", "1e-9", "--device", "flex"],
                          [check_reports_not_converged], defect="never fail silently"))
    # Precision traps (the user is owed the right value, or a flag that it is not one).
    rng3 = random.Random(13)
    xa, ya = gauss_cloud(rng3, 30, 2), gauss_cloud(rng3, 30, 2, mean=0.7)
    cases.append(div_case("div-sinkhorn-eps-1e6", xa, ya, ["--kind", "sinkhorn", "--eps", "1e6", "--device", "flex"],
                          [check_value(lambda: sinkhorn_ref(xa, ya, 1e6), 1e-2, flag_ok=True)],
                          defect="float32 divergences lose accuracy yet say converged: true"))
    off = 1e4
    xo = [[f32(v + off) for v in p] for p in xa]
    yo = [[f32(v + off) for v in p] for p in ya]
    cases.append(div_case("div-sinkhorn-offset-1e4", xo, yo, ["--kind", "sinkhorn", "--eps", "0.25", "--device", "flex"],
                          [check_value(lambda: sinkhorn_ref(xo, yo, 0.25), 1e-3, flag_ok=True)],
                          defect="float32 divergences lose accuracy yet say converged: true"))
    cases.append(div_case("div-mmd-offset-1e4", xo, yo, ["--kind", "mmd", "--bandwidth", "1", "--device", "flex"],
                          [check_value(lambda: mmd2_ref(xo, yo, [1.0]), 1e-3, flag_ok=True)],
                          defect="float32 divergences lose accuracy yet say converged: true"))
    # 1,024 points around 1e4 (the fused GPU path starts at n m = 2^20 on a software Vulkan):
    # grid coordinates and a dyadic shift keep y = x + t exact in float32, so S = |t|^2 / 2.
    rng4 = random.Random(14)
    xg = [[f32(1e4 + rng4.randrange(-4096, 4096) / 2048) for _ in range(2)] for _ in range(1024)]
    tg = (0.5, -0.25)
    yg = [[p[0] + tg[0], p[1] + tg[1]] for p in xg]
    mmd_g = cached("mmd-1e4-1024", lambda: mmd2_ref(xg, yg, [1.0]))
    for dev in ("flex", "wgpu"):
        cases.append(div_case(f"div-sinkhorn-offset-1e4-1024-{dev}", xg, yg,
                              ["--kind", "sinkhorn", "--eps", "0.25", "--device", dev],
                              [check_value(lambda: (tg[0] ** 2 + tg[1] ** 2) / 2, 1e-3, flag_ok=True)],
                              defect="float32 divergences lose accuracy yet say converged: true", timeout=180))
        cases.append(div_case(f"div-mmd-offset-1e4-1024-{dev}", xg, yg,
                              ["--kind", "mmd", "--bandwidth", "1", "--device", dev],
                              [check_value(mmd_g, 1e-3, flag_ok=True)],
                              defect="float32 divergences lose accuracy yet say converged: true", timeout=180))
    far = [[f32(v + 1e20) for v in p] for p in ya[:20]]
    near = xa[:20]
    cases.append(div_case("div-mmd-median-apart-1e20", near, far, ["--kind", "mmd", "--device", "flex"],
                          [check_value(lambda: median_heuristic(near, far), 1e-3, key="bandwidths"),
                           check_value(lambda: mmd2_ref(near, far, [median_heuristic(near, far)]), 1e-3)],
                          expect="ok_or_refused", keywords=(("range", "overflow", "float64", "f64", "large"),),
                          defect="clouds 1e20 apart: the median bandwidth silently becomes 1.0"))
    cases.append(div_case("div-mmd-bandwidth-1e-30", xa, ya, ["--kind", "mmd", "--bandwidth", "1e-30", "--device", "flex"],
                          [check_value(lambda: 1 / 30 + 1 / 30, 1e-4)], expect="ok_or_refused",
                          keywords=("bandwidth",), defect="--bandwidth 1e-30 gives 0"))
    huge = [[v * 1e30 for v in p] for p in xa[:10]]
    huge_y = [[v * 1e30 for v in p] for p in ya[:10]]
    cases.append(div_case("div-sinkhorn-coordinates-1e30", huge, huge_y,
                          ["--kind", "sinkhorn", "--eps", "1", "--device", "flex"],
                          [check_value(lambda: sinkhorn_ref(huge, huge_y, 1.0), 1e-2)], expect="ok_or_refused",
                          keywords=(("range", "overflow", "float64", "f64", "large", "finite"),),
                          defect="Sinkhorn loops with memory growing when squared distances overflow", timeout=60))
    cases.append(div_case("div-mmd-coordinates-1e30", huge, huge_y,
                          ["--kind", "mmd", "--bandwidth", "1e30", "--device", "flex"],
                          [check_value(lambda: mmd2_ref(huge, huge_y, [1e30]), 1e-3)], expect="ok_or_refused",
                          keywords=(("range", "overflow", "float64", "f64", "large", "finite"),),
                          defect="float32 divergences lose accuracy yet say converged: true"))
    # MMD.
    cases.append(div_case("div-mmd-median-f32", x, y, ["--kind", "mmd", "--device", "flex"],
                          [check_value(lambda: median_heuristic(x, y), 1e-5, key="bandwidths"),
                           check_value(lambda: mmd2_ref(x, y, [median_heuristic(x, y)]), 1e-4, 1e-7)]))
    cases.append(div_case("div-mmd-median-f64", x, y, ["--kind", "mmd", *f64_mmd],
                          [check_value(lambda: mmd2_ref(x, y, [median_heuristic(x, y)]), 1e-10, 1e-14)]))
    cases.append(div_case("div-mmd-multi-bandwidth", x, y, ["--kind", "mmd", "--bandwidth", "0.5,1,2", "--device", "flex"],
                          [check_value(lambda: mmd2_ref(x, y, [0.5, 1.0, 2.0]), 1e-4, 1e-7)]))
    cases.append(div_case("div-mmd-unbiased", x, y, ["--kind", "mmd", "--bandwidth", "1", "--estimator", "unbiased",
                                                     "--device", "flex"],
                          [check_value(lambda: mmd2_ref(x, y, [1.0], unbiased=True), 1e-4, 1e-7)]))
    cases.append(div_case("div-mmd-single-points", [[0.0, 0.0]], [[3.0, 4.0]],
                          ["--kind", "mmd", "--bandwidth", "1", "--device", "flex"],
                          [check_value(lambda: 2 - 2 * math.exp(-12.5), 1e-6)]))
    cases.append(div_case("div-mmd-identical", x, x, ["--kind", "mmd", "--device", "flex"],
                          [check_value(lambda: 0.0, 0.0, 1e-6)]))
    cases.append(div_case("div-mmd-grad-f64", xs, ys, ["--kind", "mmd", "--bandwidth", "0.7,1.3", "--grad", *f64_mmd],
                          [check_grad(lambda: mmd2_grad_ref(xs, ys, [0.7, 1.3]), 1e-9)]))
    # Devices and precision.
    cases.append(div_case("div-sinkhorn-f64-wgpu", x, y, ["--kind", "sinkhorn", "--eps", "0.3", "--f64", "--device", "wgpu",
                                                          "--tolerance", "1e-9", "--max-iters", "3000"],
                          [check_value(lambda: sinkhorn_ref(x, y, 0.3), 1e-6, 1e-10)], expect="ok_or_refused",
                          keywords=(("f64", "float64"),), defect="--f64 --device wgpu returns garbage", timeout=240))
    cases.append(div_case("div-mmd-f64-wgpu", x, y, ["--kind", "mmd", "--bandwidth", "1", "--f64", "--device", "wgpu"],
                          [check_value(lambda: mmd2_ref(x, y, [1.0]), 1e-10, 1e-14)], expect="ok_or_refused",
                          keywords=(("f64", "float64"),), defect="--f64 --device wgpu returns garbage", timeout=240))
    cases.append(div_case("div-wgpu-no-adapter", x, y, ["--kind", "mmd", "--bandwidth", "1", "--device", "wgpu"],
                          [check_value(lambda: mmd2_ref(x, y, [1.0]), 1e-4)], expect="ok_or_refused",
                          keywords=(("adapter", "gpu", "vulkan"),), env=NO_GPU_ENV,
                          defect=NO_ADAPTER, timeout=120))
    cases.append(div_case("div-sinkhorn-wgpu-no-adapter", x, y, ["--kind", "sinkhorn", "--eps", "0.3", "--device", "wgpu"],
                          [check_value(lambda: sinkhorn_ref(x, y, 0.3), 1e-4)], expect="ok_or_refused",
                          keywords=(("adapter", "gpu", "vulkan"),), env=NO_GPU_ENV,
                          defect=NO_ADAPTER, timeout=120))
    cases.append(div_case("div-auto-no-adapter", x, y, ["--kind", "mmd", "--bandwidth", "1"],
                          [check_value(lambda: mmd2_ref(x, y, [1.0]), 1e-4)], env=NO_GPU_ENV, timeout=120,
                          defect="--device auto falls back to the CPU"))
    cases.append(Case("div-scaling-range-consistency", "divergence", "custom", None,
                      {"x.csv": csv_points(x), "y.csv": csv_points(y)}, custom=scaling_consistency_case,
                      defect="one Sinkhorn scaling range everywhere", timeout=180))
    # Large clouds: memory must stay linear (limit 4 GiB) and the value exact.
    cases.append(Case("div-sinkhorn-20000-flex", "resources", "custom", None, {}, custom=sinkhorn_20000_case,
                      timeout=420, mem_gib=4, heavy=True,
                      defect="Sinkhorn at n = m = 20,000 on flex aborts on allocation"))
    cases.append(Case("div-mmd-median-20000-flex", "resources", "custom", None, {}, custom=mmd_median_20000_case,
                      timeout=300, mem_gib=4, heavy=True,
                      defect="the median bandwidth builds the full distance matrix"))
    return cases


def sinkhorn_fd_grad(x, y, eps, h=1e-5) -> list[list[float]]:
    grad = []
    for i in range(len(x)):
        row = []
        for c in range(len(x[0])):
            xp = [list(p) for p in x]
            xm = [list(p) for p in x]
            xp[i][c] += h
            xm[i][c] -= h
            row.append((sinkhorn_ref(xp, y, eps) - sinkhorn_ref(xm, y, eps)) / (2 * h))
        grad.append(row)
    return grad


def check_reports_not_converged(ctx: Ctx, res: Result) -> list[str]:
    out = res.json()
    if not isinstance(out, dict):
        return [f"stdout is not JSON: {res.stdout[:100]!r}"]
    if out.get("converged") is not False:
        return [f"one iteration at eps 1e-3 reported converged = {out.get('converged')}"]
    return []


def symmetry_case(ctx: Ctx) -> Verdict:
    args = ["--kind", "sinkhorn", "--eps", "0.3", "--device", "flex"]
    a = ctx.run(DIV + args)
    b = ctx.run(["{bin}", "divergence", "--x", "{d}/y.csv", "--y", "{d}/x.csv", *args])
    verdicts = [judge_ok(a), judge_ok(b)]
    if all(v.cls == HANDLED for v in verdicts):
        va, vb = a.json().get("value"), b.json().get("value")
        if not rel_close(va, vb, 1e-4, 1e-7):
            verdicts.append(Verdict(WRONG, [f"S(x, y) = {va} but S(y, x) = {vb}"]))
    return Verdict.worst(verdicts)


def scaling_consistency_case(ctx: Ctx) -> Verdict:
    """The same scaling factor is accepted or refused alike by `divergence` and by training."""
    verdicts = []
    for s in ("0.97", "0.99"):
        d = ctx.run(DIV + ["--kind", "sinkhorn", "--eps", "0.5", "--scaling", s, "--device", "flex"])
        ctx.write(f"cfg-{s}.toml", config_text({**SINK, "penalty.sinkhorn.scaling": s, "optim.epochs": "1"}))
        t = ctx.run(["{bin}", "train", f"{{d}}/cfg-{s}.toml", "--out", "{d}/runs"])
        for r in (d, t):
            c = crash_verdict(r)
            if c:
                verdicts.append(c)
        if (d.rc == 0) != (t.rc == 0):
            verdicts.append(Verdict(WRONG, [
                f"scaling {s}: `fairrep divergence` exit {d.rc}, `fairrep train` exit {t.rc} "
                f"({(d if d.rc else t).error_line()})"]))
    return Verdict.worst(verdicts) if verdicts else Verdict(HANDLED, ["one range in both commands"])


def sinkhorn_20000_case(ctx: Ctx) -> Verdict:
    n = 20000
    rng = random.Random(20)
    # Grid coordinates (multiples of 2^-12) and a dyadic shift: y = x + t exactly in float32,
    # so S = |t|^2 / 2 exactly.
    xs = [[rng.randrange(4096) / 4096, rng.randrange(4096) / 4096] for _ in range(n)]
    t = (0.25, -0.125)
    ys = [[p[0] + t[0], p[1] + t[1]] for p in xs]
    ctx.write("x.csv", csv_points(xs))
    ctx.write("y.csv", csv_points(ys))
    res = ctx.run(DIV + ["--kind", "sinkhorn", "--eps", "0.5", "--tolerance", "1e-3", "--device", "flex"])
    want = (t[0] ** 2 + t[1] ** 2) / 2
    return judge_ok_or_refused(res, lambda r: check_value(lambda: want, 1e-2)(ctx, r),
                               keywords=(("memory", "too large", "points"),))


def mmd_median_20000_case(ctx: Ctx) -> Verdict:
    """20,000 points per cloud on four distinct sites, so the median and MMD² are exact."""
    h = 10000
    p0, p1, p2 = [0.0, 0.0], [1.5, 0.0], [0.0, 2.0]
    ctx.write("x.csv", csv_points([p0] * h + [p1] * h))
    ctx.write("y.csv", csv_points([p0] * h + [p2] * h))
    # Pooled pairs: 299,980,000 at distance 0, 2e8 at 1.5 (p0-p1), 2e8 at 2 (p0-p2), 1e8 at 2.5:
    # the two middle pairs (399,990,000th and next) are at 1.5.
    s = 1.5
    k = lambda d: math.exp(-d * d / (2 * s * s))
    kxx = (2 + 2 * k(1.5)) / 4
    kyy = (2 + 2 * k(2.0)) / 4
    kxy = (1 + k(2.0) + k(1.5) + k(2.5)) / 4
    want = kxx + kyy - 2 * kxy
    res = ctx.run(DIV + ["--kind", "mmd", "--device", "flex"])

    def problems(r):
        return check_value(lambda: s, 1e-6, key="bandwidths")(ctx, r) + check_value(lambda: want, 1e-3)(ctx, r)

    return judge_ok_or_refused(res, problems, keywords=(("memory", "too large", "points"),))


# ---------------------------------------------------------------------------------------------
# Family: CSV datasets and their specs
# ---------------------------------------------------------------------------------------------

TOY_HEADER = ["id", "x1", "x2", "color", "sex", "y", "one", "part"]


def toy_rows(n: int = 240, seed: int = 7) -> list[list[str]]:
    """Rows of a small dataset: line i + 2 of the file (after the header) is row i. Split by
    the `part` column: rows i % 10 < 6 train, < 8 valid, else test (both sexes in each)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sex = "F" if i % 2 == 0 else "M"
        x1 = round(rng.gauss(0.0, 1.0) + (0.8 if sex == "M" else 0.0), 6)
        x2 = round(rng.gauss(0.0, 1.0), 6)
        color = rng.choice(["red", "green", "blue"])
        y = 1 if x1 + 0.5 * x2 + rng.gauss(0.0, 0.5) > 0.4 else 0
        part = "train" if i % 10 < 6 else ("valid" if i % 10 < 8 else "test")
        rows.append([str(i), repr(x1), repr(x2), color, sex, str(y), "1", part])
    return rows


def toy_csv(rows, header=TOY_HEADER, eol="\n") -> str:
    return eol.join(",".join(r) for r in [header] + rows) + eol


GROUPS_FM = '[ { name = "F", values = ["F"] }, { name = "M", values = ["M"] } ]'
TASK_Y = '[[tasks]]\nname = "y"\ncolumn = "y"\nop = "=="\nvalue = 1\n'
PARTITION = ('[split]\nkind = "partition"\ncolumn = "part"\ntrain_values = ["train"]\n'
             'valid_values = ["valid"]\ntest_values = ["test"]\n')


def toy_spec(numeric='["x1", "x2"]', categorical='["color"]', groups=GROUPS_FM, tasks=TASK_Y,
             path="toy/toy.csv", top="", fmt="", split=PARTITION, filters="", sensitive=None) -> str:
    sens = sensitive or f'[sensitive]\ncolumn = "sex"\ngroups = {groups}\n'
    return (f'name = "toy"\n{top}\n[files]\ntrain = {{ path = "{path}" }}\n\n{fmt}\n'
            f"[inputs]\nnumeric = {numeric}\ncategorical = {categorical}\n\n{sens}\n{filters}\n{tasks}\n{split}")


def toy_config(over=None) -> str:
    return config_text({"data.dataset": '"toy"', "data.batch_size": "32", "optim.epochs": "3", **(over or {})},
                       drop=SYNTH_KEYS)


TOY_ENV = {"FAIRREP_SPECS_DIR": "{d}/specs"}
TOY_TRAIN = TRAIN + ["--data-dir", "{d}/data"]


def data_case(name, expect="refused", csv=None, spec=None, keywords=(), over=None, checks=None,
              file_name="toy.csv", defect="bad data gets an error naming file, line and column", **kw) -> Case:
    files = {"specs/toy.toml": spec if spec is not None else toy_spec(path=f"toy/{file_name}"),
             "cfg.toml": toy_config(over)}
    if csv is not None:
        files[f"data/toy/{file_name}"] = csv
    return Case(name, "data", expect, TOY_TRAIN, files, env=dict(TOY_ENV), keywords=keywords,
                checks=checks if checks is not None else [check_summary_finite], defect=defect,
                timeout=kw.pop("timeout", 120), **kw)


def mutate(rows, i, col, value):
    rows = [list(r) for r in rows]
    rows[i][TOY_HEADER.index(col)] = value
    return rows


def exact_mean_std(values: list[float]) -> tuple[float, float]:
    fr = [fractions.Fraction(v) for v in values]
    mean = sum(fr) / len(fr)
    var = sum((v - mean) ** 2 for v in fr) / len(fr)
    return float(mean), math.sqrt(float(var)) if var else 0.0


def latest_manifest(run: Path) -> dict:
    name = (run / "latest").read_text().strip()
    return json.loads((run / "checkpoints" / name / "manifest.json").read_text())


def check_stats(column: str, want_mean: float, want_std: float, rtol: float) -> Callable:
    """The standardisation statistics saved in the checkpoint equal the exact train-split ones."""

    def check(ctx: Ctx, res: Result) -> list[str]:
        runs = run_dirs(ctx)
        if len(runs) != 1:
            return [f"expected one run directory, found {len(runs)}"]
        stats = {s["column"]: s for s in latest_manifest(runs[0])["preprocessing"]["numeric"]}
        s = stats.get(column)
        if s is None:
            return [f"no statistics for `{column}` in the manifest"]
        out = []
        if not rel_close(s["mean"], want_mean, rtol, 1e-12):
            out.append(f"`{column}` mean {s['mean']!r}, exact {want_mean!r}")
        if not rel_close(s["std"], want_std, rtol):
            out.append(f"`{column}` std {s['std']!r}, exact {want_std!r} (train split, population)")
        return out

    return check


def check_standardised(column: str, raw: float, bound: float) -> Callable:
    """The standardised value `(raw - mean) / std` of a constant column is 0 (within bound)."""

    def check(ctx: Ctx, res: Result) -> list[str]:
        runs = run_dirs(ctx)
        if len(runs) != 1:
            return [f"expected one run directory, found {len(runs)}"]
        stats = {s["column"]: s for s in latest_manifest(runs[0])["preprocessing"]["numeric"]}
        s = stats.get(column)
        if s is None:
            return [f"no statistics for `{column}` in the manifest"]
        z = (raw - s["mean"]) / s["std"]
        if not abs(z) <= bound:
            return [f"constant column `{column}` = {raw!r} is standardised to {z:.3g} "
                    f"(mean {s['mean']!r}, std {s['std']!r}); expected 0"]
        return []

    return check


def check_auc_undefined(task: str) -> Callable:
    def check(ctx: Ctx, res: Result) -> list[str]:
        s = res.json() or {}
        v = ((s.get("test") or {}).get("tasks") or {}).get(task, {}).get("auc", "absent")
        if v is None or v == "absent":
            return []
        return [f"test AUC of `{task}`, whose labels are all 1, is reported as {v!r} (undefined)"]

    return check


def data_cases() -> list[Case]:
    rows = toy_rows()
    cases = [data_case("data-baseline", "ok", toy_csv(rows), defect="valid input must work")]
    L = lambda i: f"line {i + 2}"
    cases.append(data_case("data-ragged-short", csv=toy_csv(rows[:35] + [rows[35][:-1]] + rows[36:]),
                           keywords=("toy.csv", L(35))))
    cases.append(data_case("data-ragged-long", csv=toy_csv(rows[:50] + [rows[50] + ["extra"]] + rows[51:]),
                           keywords=("toy.csv", L(50))))
    for label, value in [("text", "abc"), ("nan", "NaN"), ("inf", "inf"), ("empty", ""), ("1e400", "1e400"),
                         ("comma-decimal", '"1,5"')]:
        cases.append(data_case(f"data-cell-{label}", csv=toy_csv(mutate(rows, 10, "x1", value)),
                               keywords=("toy.csv", L(10), "x1")))
    cases.append(data_case("data-missing-column", csv=toy_csv(rows), spec=toy_spec(numeric='["x1", "x3"]'),
                           keywords=("x3",)))
    dup_header = TOY_HEADER + ["x1"]
    cases.append(data_case("data-duplicate-header", csv=toy_csv([r + ["0.0"] for r in rows], header=dup_header),
                           keywords=("x1",), defect="duplicate CSV headers are accepted"))
    cases.append(data_case("data-duplicate-categorical", csv=toy_csv(rows), spec=toy_spec(categorical='["color", "color"]'),
                           keywords=("color",), defect="duplicate categorical columns are accepted"))
    cases.append(data_case("data-numeric-and-categorical", csv=toy_csv(rows),
                           spec=toy_spec(categorical='["color", "x1"]'), keywords=("x1",)))
    cases.append(data_case("data-one-group", csv=toy_csv(rows),
                           spec=toy_spec(groups='[ { name = "all", values = ["F", "M"] } ]'),
                           keywords=("group",), defect="a dataset with one group is accepted"))
    cases.append(data_case("data-unmatched-sensitive", csv=toy_csv(mutate(rows, 20, "sex", "X")),
                           keywords=("toy.csv", L(20), "X")))
    cases.append(data_case("data-single-sex", csv=toy_csv([mutate([r], 0, "sex", "F")[0] for r in rows]),
                           keywords=("M",)))
    gz = gzip.compress(toy_csv(rows).encode())
    cases.append(data_case("data-truncated-gzip", csv=gz[: len(gz) // 2], file_name="toy.csv.gz",
                           keywords=("toy.csv.gz",), defect="truncated gzip"))
    cases.append(data_case("data-garbage-gzip", csv=b"\x1f\x8b\x08\x00" + bytes(range(200)), file_name="toy.csv.gz",
                           keywords=("toy.csv.gz",), defect="truncated gzip"))
    cases.append(data_case("data-gzip-ok", "ok", csv=gz, file_name="toy.csv.gz", defect="valid input must work"))
    cases.append(data_case("data-empty-file", csv="", keywords=("toy.csv",)))
    cases.append(data_case("data-header-only", csv=toy_csv([]), keywords=("toy.csv",)))
    latin = toy_csv(mutate(rows, 30, "color", "r\udce9d")).encode("utf-8", "surrogateescape")
    cases.append(data_case("data-not-utf8", csv=latin, keywords=("toy.csv", L(30))))
    cases.append(data_case("data-crlf", "ok", csv=toy_csv(rows, eol="\r\n"), defect="valid input must work"))
    cases.append(data_case("data-quoted-delimiter", "ok", csv=toy_csv(mutate(rows, 5, "color", '"red, dark"')),
                           defect="valid input must work"))
    cases.append(data_case("data-unterminated-quote", csv=toy_csv(mutate(rows, 5, "color", '"red')),
                           keywords=("toy.csv",)))
    cases.append(data_case("data-missing-file", csv=None, keywords=("toy.csv",), defect="missing files"))
    is_dir = data_case("data-file-is-directory", csv=None, keywords=("toy.csv",), defect="missing files")
    is_dir.files["data/toy/toy.csv/x"] = "1"
    cases.append(is_dir)
    no_dir = data_case("data-no-data-dir", csv=toy_csv(rows), keywords=(("data-dir", "FAIRREP_DATA_DIR"),),
                       defect="missing files")
    no_dir.argv = TRAIN
    cases.append(no_dir)
    cases.append(data_case("data-spec-missing", csv=toy_csv(rows), over={"data.dataset": '"nosuch"'},
                           keywords=("nosuch.toml",), defect="missing files"))
    specs_file = data_case("data-specs-dir-is-file", csv=toy_csv(rows), keywords=("toy",), defect="missing files")
    specs_file.env = {"FAIRREP_SPECS_DIR": "{d}/cfg.toml"}
    cases.append(specs_file)
    for name, spec, kws in [
        ("spec-unknown-key", toy_spec(top="colour = 1"), ("colour",)),
        ("spec-type-error", toy_spec(numeric='"x1"'), ("numeric",)),
        ("spec-threshold-nan", toy_spec(sensitive='[sensitive]\ncolumn = "x2"\nthreshold = nan\n'), ("threshold",)),
        ("spec-no-tasks", toy_spec(tasks="", top="tasks = []"), ("tasks",)),
        ("spec-bad-op", toy_spec(tasks=TASK_Y.replace('"=="', '"~="')), ("~=",)),
        ("spec-order-op-on-text", toy_spec(tasks=TASK_Y.replace('"=="', '">"').replace("value = 1", 'value = "abc"')),
         ("value",)),
        ("spec-fractions", toy_spec(split='[split]\nkind = "random"\nfractions = { train = 0.9, valid = 0.2, test = 0.1 }\n'),
         ("fractions",)),
        ("spec-duplicate-task", toy_spec(tasks=TASK_Y + TASK_Y), ("y",)),
        ("spec-regression-on-text", toy_spec(tasks='[[tasks]]\nname = "c"\ncolumn = "color"\nkind = "regression"\n'),
         ("color",)),
        ("spec-filter-missing-column", toy_spec(filters='[[filters]]\ncolumn = "zzz"\nop = "=="\nvalue = 1\n'),
         ("zzz",)),
        ("spec-filter-removes-all", toy_spec(filters='[[filters]]\ncolumn = "x1"\nop = ">"\nvalue = 1e9\n'),
         (("rows", "group"),)),
        ("spec-partition-without-column", toy_spec(split='[split]\nkind = "partition"\n'), ("column",)),
        ("spec-not-toml", "name = \n[[", ("toy.toml",)),
    ]:
        # Problems found in the data rather than the spec may name either file.
        where = ("toy.toml", "toy.csv") if name in ("spec-filter-missing-column", "spec-filter-removes-all",
                                                    "spec-regression-on-text") else "toy.toml"
        cases.append(data_case(name, csv=toy_csv(rows), spec=spec, keywords=(where,) + kws,
                               defect="bad dataset specs"))
    cases.append(data_case("data-tasks-duplicate", csv=toy_csv(rows), over={"data.tasks": '["y", "y"]'}, keywords=("y",),
                           defect="duplicate task names are accepted"))
    cases.append(data_case("data-too-few-rows", csv=toy_csv(rows[:4]), keywords=(("valid", "test"),)))
    # Standardisation must be exact: population statistics of the train split (README).
    train_rows = [r for r in rows if r[-1] == "train"]
    big_rows = [r + [repr(float(r[1]) + 1e9)] for r in rows]
    bigs = [float(r[-1]) for r in big_rows if r[-2] == "train"]
    m_big, s_big = exact_mean_std(bigs)
    cases.append(data_case("data-offset-1e9-statistics", "ok", toy_csv(big_rows, header=TOY_HEADER + ["big"]),
                           spec=toy_spec(numeric='["big", "x2"]'),
                           checks=[check_summary_finite, check_stats("big", m_big, s_big, 1e-6)],
                           defect="standardisation by E[x^2]-E[x]^2"))
    const_rows = [r + ["1e30"] for r in rows]
    cases.append(data_case("data-constant-1e30-statistics", "ok", toy_csv(const_rows, header=TOY_HEADER + ["k"]),
                           spec=toy_spec(numeric='["x1", "x2", "k"]'),
                           checks=[check_summary_finite, check_stats("k", 1e30, 1.0, 1e-9),
                                   check_standardised("k", 1e30, 1e-6)],
                           defect="standardisation by E[x^2]-E[x]^2"))
    m_x1, s_x1 = exact_mean_std([float(r[1]) for r in train_rows])
    cases.append(data_case("data-statistics-exact", "ok", toy_csv(rows),
                           checks=[check_summary_finite, check_stats("x1", m_x1, s_x1, 1e-9)],
                           defect="standardisation by E[x^2]-E[x]^2"))
    cases.append(Case("data-offset-invariance-accuracy", "data", "custom", None, {}, env=dict(TOY_ENV),
                      custom=offset_invariance_case, timeout=240, defect="standardisation by E[x^2]-E[x]^2"))
    huge_rows = mutate(rows, 3, "x1", "1e300")
    cases.append(data_case("data-value-1e300", "ok_or_refused", toy_csv(huge_rows), keywords=("x1",),
                           defect="no silent NaN"))
    cases.append(data_case("data-long-cell", "ok_or_refused", toy_csv(mutate(rows, 7, "color", "r" * 1_000_000)),
                           keywords=("color",), defect="no hang"))
    uniq = [mutate([r], 0, "color", f"c{i}")[0] for i, r in enumerate(rows)]
    cases.append(data_case("data-categorical-all-distinct", "ok", toy_csv(uniq), defect="valid input must work"))
    one_task = '[[tasks]]\nname = "always"\ncolumn = "one"\nop = "=="\nvalue = 1\n'
    cases.append(data_case("data-constant-label-auc", "ok_or_refused", toy_csv(rows), spec=toy_spec(tasks=one_task),
                           keywords=("always",), checks=[check_summary_finite, check_auc_undefined("always")],
                           defect="an undefined AUC is reported as a number (0.5)"))
    return cases


def offset_invariance_case(ctx: Ctx) -> Verdict:
    """Adding 1e9 to an input column changes nothing after standardisation."""
    rows = toy_rows(n=1000, seed=9)
    big = [r + [repr(float(r[1]) + 1e9)] for r in rows]
    accs = {}
    verdicts = []
    for tag, spec_num in (("plain", '["x1", "x2"]'), ("offset", '["big", "x2"]')):
        ctx.write(f"{tag}/specs/toy.toml", toy_spec(numeric=spec_num))
        ctx.write(f"{tag}/data/toy/toy.csv", toy_csv(big, header=TOY_HEADER + ["big"]))
        ctx.write(f"{tag}/cfg.toml", toy_config({"optim.epochs": "4"}))
        res = ctx.run(["{bin}", "train", f"{{d}}/{tag}/cfg.toml", "--out", f"{{d}}/{tag}/runs",
                       "--data-dir", f"{{d}}/{tag}/data"], env={"FAIRREP_SPECS_DIR": f"{{d}}/{tag}/specs"})
        v = judge_ok(res, lambda r: check_summary_finite(ctx, r))
        verdicts.append(v)
        if v.cls == HANDLED:
            accs[tag] = res.json()["test"]["tasks"]["y"]["accuracy"]
    if len(accs) == 2 and abs(accs["plain"] - accs["offset"]) > 0.011:
        verdicts.append(Verdict(WRONG, [f"test accuracy {accs['plain']:.3f} with x1, {accs['offset']:.3f} "
                                        f"with x1 + 1e9 (200 test rows; tolerance 0.011)"]))
    return Verdict.worst(verdicts)


# ---------------------------------------------------------------------------------------------
# Family: checkpoints, kills and resumes
# ---------------------------------------------------------------------------------------------

RESUME = ["{bin}", "train", "--resume"]


def leftovers(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".tmp-" in p.name)


def run_consistency(run: Path, epochs: int, ref: Optional[dict] = None) -> list[Verdict]:
    """What a finished run directory must hold: `best`, `summary.json` and the epochs of
    `metrics.jsonl` agree, the best checkpoint exists, and (with a reference run) the metrics
    replay the uninterrupted run exactly."""
    out = []
    summary_path = run / "summary.json"
    if not summary_path.exists():
        return [Verdict(LOSS, ["no summary.json after the run finished"])]
    summary = json.loads(summary_path.read_text())
    best_epoch = summary.get("best_epoch")
    want = f"epoch-{best_epoch:04d}" if isinstance(best_epoch, int) else None
    best = (run / "best").read_text().strip() if (run / "best").exists() else None
    if best != want:
        out.append(Verdict(LOSS, [f"`best` names {best!r} but summary.json's best epoch is {best_epoch}"]))
    if want and not (run / "checkpoints" / want / "model.bpk").exists():
        out.append(Verdict(LOSS, [f"the best checkpoint checkpoints/{want}/model.bpk is gone"]))
    latest = (run / "latest").read_text().strip() if (run / "latest").exists() else None
    if latest != f"epoch-{epochs:04d}":
        out.append(Verdict(WRONG, [f"`latest` names {latest!r}, not the last epoch {epochs}"]))
    metrics = read_metrics(run)
    numbers = [m.get("epoch") for m in metrics]
    if numbers != list(range(1, epochs + 1)):
        out.append(Verdict(WRONG, [f"metrics.jsonl holds epochs {numbers}, expected 1..{epochs} once each"]))
    elif metrics:
        objectives = [m["objective"] for m in metrics]
        argmin = objectives.index(min(objectives)) + 1
        if best_epoch != argmin:
            out.append(Verdict(WRONG, [f"summary.json's best epoch {best_epoch}, metrics.jsonl's lowest "
                                       f"objective is at epoch {argmin}"]))
    if ref and numbers == list(range(1, epochs + 1)):
        for m, r in zip(metrics, ref["metrics"]):
            for key in ("objective", "lr"):
                if not rel_close(m[key], r[key], 1e-9, 1e-12):
                    out.append(Verdict(WRONG, [f"epoch {m['epoch']} {key} {m[key]!r}, the uninterrupted run "
                                               f"has {r[key]!r} (resume must replay exactly)"]))
                    break
        if ref["summary"].get("best_epoch") != best_epoch:
            out.append(Verdict(WRONG, [f"best epoch {best_epoch}, uninterrupted run {ref['summary'].get('best_epoch')}"]))
    left = leftovers(run)
    if left:
        out.append(Verdict(WRONG, [f"temporary files left behind: {left[:4]}"], LEFTOVERS))
    return out or [Verdict(HANDLED, ["best, summary.json and metrics.jsonl agree"])]


def after_kill(ctx: Ctx, res: Result, ref: dict, epochs: int) -> Verdict:
    """Resumes a killed run and checks the finished run directory."""
    if res.timed_out:
        return Verdict(HANG, ["the run to be killed did not finish in time"])
    if res.rc not in (-9, 137):
        if res.rc == 0:
            raise SkipCase("the kill point was not reached (the run finished)")
        crash = crash_verdict(res)
        return crash or Verdict(WRONG, [f"killed run exited {res.rc}: {res.error_line()}"])
    runs = run_dirs(ctx)
    if not runs:
        return Verdict(HANDLED, ["killed before the run directory existed: nothing to resume"])
    run = runs[0]
    had_latest = (run / "latest").exists()
    r = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=180)
    if not had_latest:
        return judge_refused(r, (("checkpoint", "config.toml"),))
    crash = crash_verdict(r)
    if crash:
        return crash
    if r.rc != 0:
        return Verdict(LOSS, [f"resume failed: {r.error_line()}"])
    return Verdict.worst(run_consistency(run, epochs, ref))


def kill_syscall_case(syscall: str, n: int, ref_name: str = "killref") -> Case:
    over, epochs, prefix = (KILL_OVER, 8, "kill") if ref_name == "killref" else (KILL2_OVER, 4, "kill-improving")

    def custom(ctx: Ctx) -> Verdict:
        ref = ctx.fx.get(ref_name)
        count = ref["counts"].get(syscall, 0)
        if n > count:
            raise SkipCase(f"the reference run makes only {count} {syscall} calls")
        ctx.write("cfg.toml", config_text(over))
        res = ctx.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                       "-e", f"inject={syscall}:signal=KILL:when={n}", *TRAIN], env=FLEX_ENV, timeout=180)
        return after_kill(ctx, res, ref, epochs)

    return Case(f"{prefix}-{syscall}-{n:02d}", "checkpoint", "custom", custom=custom, needs=("strace",), timeout=180,
                defect="a kill between the moves of `latest` and `best` loses the best checkpoint")


def kill_random_case(i: int) -> Case:
    def custom(ctx: Ctx) -> Verdict:
        ref = ctx.fx.get("killref")
        delay = random.Random(1000 + i).uniform(0.05, 1.0) * ref["wall"]
        ctx.write("cfg.toml", config_text(KILL_OVER))
        proc = ctx.spawn(TRAIN, env=FLEX_ENV, timeout=180)
        try:
            proc.popen.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
        res = ctx.scrub(proc.finish())
        if res.rc == 0:
            runs = run_dirs(ctx)
            return Verdict.worst(run_consistency(runs[0], 8, ref)) if runs else Verdict(WRONG, ["no run directory"])
        return after_kill(ctx, res, ref, 8)

    return Case(f"kill-random-{i:02d}", "checkpoint", "custom", custom=custom, timeout=180,
                defect="a kill between the moves of `latest` and `best` loses the best checkpoint")


def stopped_copy(ctx: Ctx, name: str = "stopped4") -> Path:
    return copy_run(ctx.fx.get(name), ctx.d / "runs")


def latest_ckpt(run: Path) -> Path:
    return run / "checkpoints" / (run / "latest").read_text().strip()


def corrupt_case(name: str, mutate_fn: Callable[[Path, Ctx], None], keywords, defect: str, extra_args=()) -> Case:
    def custom(ctx: Ctx) -> Verdict:
        run = stopped_copy(ctx)
        mutate_fn(run, ctx)
        res = ctx.run(RESUME + [str(run), *extra_args], env=FLEX_ENV, timeout=120)
        return judge_refused(res, keywords)

    return Case(name, "checkpoint", "custom", custom=custom, timeout=120, defect=defect)


def zero_tail(path: Path, fraction: float):
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * (1 - fraction))
    raw[start:] = bytes(len(raw) - start)
    path.write_bytes(bytes(raw))


def flip_tail(path: Path):
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - 64, len(raw) - 8, 4):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def edit_manifest(run: Path, fn):
    p = latest_ckpt(run) / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m, indent=2))


def outside_pointer(pointer: str) -> Callable:
    """Points `pointer` outside the run directory at a valid checkpoint copy."""

    def fn(run: Path, ctx: Ctx):
        outside = ctx.d / "outside"
        shutil.copytree(latest_ckpt(run), outside)
        rel = os.path.relpath(outside, run / "checkpoints")
        (run / pointer).write_text(rel)

    return fn


def checkpoint_cases() -> list[Case]:
    checksum = "checkpoints have no checksum: corrupted state resumes silently"
    cases = [
        corrupt_case("ckpt-model-zeroed", lambda r, c: zero_tail(latest_ckpt(r) / "model.bpk", 1.0),
                     ("model.bpk",), checksum),
        corrupt_case("ckpt-model-weights-zeroed", lambda r, c: zero_tail(latest_ckpt(r) / "model.bpk", 0.5),
                     ("model.bpk",), checksum),
        corrupt_case("ckpt-optimizer-bytes-flipped", lambda r, c: flip_tail(latest_ckpt(r) / "optimizer.bpk"),
                     ("optimizer.bpk",), checksum),
        corrupt_case("ckpt-model-truncated",
                     lambda r, c: (latest_ckpt(r) / "model.bpk").write_bytes((latest_ckpt(r) / "model.bpk").read_bytes()[:100]),
                     ("model.bpk",), checksum),
        corrupt_case("ckpt-model-missing", lambda r, c: (latest_ckpt(r) / "model.bpk").unlink(), ("model.bpk",),
                     "missing files"),
        corrupt_case("ckpt-manifest-epoch-99", lambda r, c: edit_manifest(r, lambda m: m.update(epoch=99)),
                     ("manifest",), checksum),
        corrupt_case("ckpt-manifest-history-edited",
                     lambda r, c: edit_manifest(r, lambda m: m["history"][0].update(objective=-1.0)),
                     ("manifest",), checksum),
        corrupt_case("ckpt-manifest-not-json", lambda r, c: (latest_ckpt(r) / "manifest.json").write_text("{"),
                     ("manifest.json",), "bad input files"),
        corrupt_case("ckpt-manifest-missing", lambda r, c: (latest_ckpt(r) / "manifest.json").unlink(),
                     ("manifest.json",), "missing files"),
        corrupt_case("ckpt-latest-names-missing", lambda r, c: (r / "latest").write_text("epoch-0042"),
                     ("epoch-0042",), "missing files"),
        corrupt_case("ckpt-latest-empty", lambda r, c: (r / "latest").write_text(""), ("latest",), "bad input files"),
        corrupt_case("ckpt-latest-outside-run", outside_pointer("latest"), ("latest",),
                     "pointer contents like ../../outside lead outside the run directory"),
        corrupt_case("ckpt-latest-absolute", lambda r, c: (r / "latest").write_text(str(latest_ckpt(r).resolve())),
                     ("latest",), "pointer contents like ../../outside lead outside the run directory"),
        corrupt_case("ckpt-config-edited",
                     lambda r, c: (r / "config.toml").write_text((r / "config.toml").read_text().replace(
                         "lambda = 1.0", "lambda = 2.0")), ("penalty.lambda",), "resume refuses what differs"),
        corrupt_case("ckpt-resume-longer", lambda r, c: None, ("optim.epochs",), "resume refuses what differs",
                     extra_args=("--set", "optim.epochs=6")),
        corrupt_case("ckpt-resume-other-data", lambda r, c: None, ("noise",), "resume refuses what differs",
                     extra_args=("--set", "data.synthetic.noise=0.5")),
    ]
    cases.append(Case("ckpt-best-outside-run", "checkpoint", "custom", custom=best_outside_case, timeout=180,
                      defect="pointer contents like ../../outside lead outside the run directory"))
    for kind in ("backup-directory", "stray-file"):
        cases.append(Case(f"ckpt-user-{kind}", "checkpoint", "custom", custom=user_files_case(kind), timeout=180,
                          defect="pruning deletes what the user put in checkpoints/"))
    cases.append(Case("ckpt-resume-finished-run", "checkpoint", "custom", custom=resume_finished_case, timeout=180,
                      defect="resume of a finished run"))
    cases.append(Case("ckpt-two-resumes-at-once", "checkpoint", "custom", custom=concurrent_resume_case, timeout=240,
                      defect="no lock against two resumes of one run"))
    cases.append(Case("ckpt-resume-completes", "checkpoint", "custom", custom=plain_resume_case, timeout=180,
                      defect="a kill between the moves of `latest` and `best` loses the best checkpoint"))
    cases.append(Case("ckpt-curves-unwritable", "checkpoint", "custom", custom=curves_unwritable_case, timeout=180,
                      defect="a failed write of curves.svg is silent"))
    return cases


def best_outside_case(ctx: Ctx) -> Verdict:
    run = stopped_copy(ctx)
    victim = ctx.d / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    (run / "best").write_text(os.path.relpath(victim, run / "checkpoints"))
    res = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=180)
    verdicts = [judge_ok_or_refused(res, keywords=("best",))]
    if not (victim / "precious.txt").exists():
        verdicts.append(Verdict(LOSS, ["a file outside the run directory, named by `best`, was deleted"]))
    return Verdict.worst(verdicts)


def user_files_case(kind: str) -> Callable:
    def custom(ctx: Ctx) -> Verdict:
        run = stopped_copy(ctx)
        ck = run / "checkpoints"
        if kind == "backup-directory":
            shutil.copytree(latest_ckpt(run), ck / "my-backup")
            mine = ck / "my-backup" / "model.bpk"
        else:
            mine = ck / "NOTES.txt"
            mine.write_text("my notes about this run\n")
        res = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=180)
        verdicts = []
        crash = crash_verdict(res)
        if crash:
            verdicts.append(crash)
        elif res.rc != 0:
            verdicts.append(Verdict(LOSS, [f"resume failed with a user file in checkpoints/: {res.error_line()}"]))
        else:
            verdicts += [v for v in run_consistency(run, 4) if v.cls != HANDLED]
        if not mine.exists():
            verdicts.append(Verdict(LOSS, [f"checkpoints/{mine.relative_to(ck)} (the user's) was deleted"]))
        return Verdict.worst(verdicts) if verdicts else Verdict(HANDLED, ["user files kept, run consistent"])

    return custom


def plain_resume_case(ctx: Ctx) -> Verdict:
    run = stopped_copy(ctx)
    res = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=180)
    crash = crash_verdict(res)
    if crash:
        return crash
    if res.rc != 0:
        return Verdict(LOSS, [f"resume of a stopped run failed: {res.error_line()}"])
    return Verdict.worst(run_consistency(run, 4))


def resume_finished_case(ctx: Ctx) -> Verdict:
    run = copy_run(ctx.fx.get("finished3"), ctx.d / "runs")
    before = (run / "metrics.jsonl").read_text()
    best_before = json.loads((run / "summary.json").read_text())["best_epoch"]
    res = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=180)
    verdicts = [judge_ok_or_refused(res, keywords=(("finished", "complete", "done", "nothing"),))]
    if (run / "metrics.jsonl").read_text().count("\n") != before.count("\n"):
        verdicts.append(Verdict(WRONG, ["resuming a finished run changed the number of lines in metrics.jsonl"]))
    if json.loads((run / "summary.json").read_text())["best_epoch"] != best_before:
        verdicts.append(Verdict(WRONG, ["resuming a finished run changed summary.json's best epoch"]))
    return Verdict.worst(verdicts)


def concurrent_resume_case(ctx: Ctx) -> Verdict:
    run = stopped_copy(ctx, "stopped6")
    p1 = ctx.spawn(RESUME + [str(run)], env=FLEX_ENV, timeout=240)
    p2 = ctx.spawn(RESUME + [str(run)], env=FLEX_ENV, timeout=240)
    r1, r2 = ctx.scrub(p1.finish()), ctx.scrub(p2.finish())
    verdicts = [c for c in (crash_verdict(r1), crash_verdict(r2)) if c]
    if verdicts:
        return Verdict.worst(verdicts)
    oks = [r for r in (r1, r2) if r.rc == 0]
    numbers = [m.get("epoch") for m in read_metrics(run)]
    if numbers != list(range(1, 7)):
        verdicts.append(Verdict(WRONG, [f"metrics.jsonl holds epochs {numbers} after two concurrent resumes"]))
    if len(oks) == 2:
        verdicts.append(Verdict(WRONG, ["both resumes of one run ran to the end: no lock"]))
    elif len(oks) == 1:
        refused = r1 if r1.rc != 0 else r2
        verdicts.append(judge_refused(refused, (("lock", "in use", "another process", "being resumed", "running"),)))
        verdicts += [v for v in run_consistency(run, 6) if v.cls != HANDLED]
    else:
        verdicts.append(Verdict(LOSS, [f"both resumes failed: {r1.error_line()} / {r2.error_line()}"]))
    return Verdict.worst(verdicts) if verdicts else Verdict(HANDLED, ["one resume ran, the other was refused"])


def curves_unwritable_case(ctx: Ctx) -> Verdict:
    run = stopped_copy(ctx)
    curves = run / "curves.svg"
    if curves.exists():
        curves.unlink()
    curves.mkdir()
    (curves / "blocker").write_text("x")
    res = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=180)
    return judge_refused_or_warned(res, ("curves.svg",))


# ---------------------------------------------------------------------------------------------
# Family: audits (eval, export, transfer)
# ---------------------------------------------------------------------------------------------


def audit_case(name: str, args_fn: Callable[[Ctx, Path], list], judge: Callable[[Ctx, Result, Path], Verdict],
               defect: str, fixture: str = "finished3", timeout: float = 240) -> Case:
    def custom(ctx: Ctx) -> Verdict:
        run = copy_run(ctx.fx.get(fixture), ctx.d / "runs")
        res = ctx.run(args_fn(ctx, run), timeout=timeout)
        return judge(ctx, res, run)

    return Case(name, "audit", "custom", custom=custom, timeout=timeout, defect=defect)


def find_key(obj, pred) -> list:
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if pred(k):
                found.append(v)
            found += find_key(v, pred)
    elif isinstance(obj, list):
        for v in obj:
            found += find_key(v, pred)
    return found


def audit_cases() -> list[Case]:
    EVAL = lambda ctx, run, *a: ["{bin}", "eval", "--from", str(run), "--device", "flex", *a]
    refused = lambda kws: (lambda ctx, res, run: judge_refused(res, kws))
    cases = []

    def eval_zero_perm(flag: str, which: str) -> Callable:
        """Without relabellings there is no p-value: refused, or reported as null."""

        def judge(ctx, res, run):
            if res.rc != 0:
                return judge_refused(res, (flag.lstrip("-"),))
            crash = crash_verdict(res)
            if crash:
                return crash
            report = json.loads((run / "eval.json").read_text())
            pvals = [((r.get("leakage") or {}).get(which) or {}).get("p_value") for r in report.get("runs", [])]
            summary = (report.get("summary") or {}).get(f"leakage.{which}_p")
            if any(isinstance(p, (int, float)) for p in pvals) or summary is not None:
                return Verdict(WRONG, [f"{flag} 0 still reports the {which} p-value {pvals} (summary {summary})"])
            return Verdict(HANDLED, ["no p-value without permutations"])

        return judge

    cases.append(audit_case("eval-permutations-0", lambda c, r: EVAL(c, r, "--permutations", "0"),
                            eval_zero_perm("--permutations", "mmd2"), "eval --permutations 0 prints p = 1.0"))
    cases.append(audit_case("eval-sinkhorn-permutations-0", lambda c, r: EVAL(c, r, "--sinkhorn-permutations", "0"),
                            eval_zero_perm("--sinkhorn-permutations", "sinkhorn"), "eval --permutations 0 prints p = 1.0"))
    for flag, v in [("--max-points", "3"), ("--max-points", "-1"), ("--blur", "0"), ("--blur", "-1"),
                    ("--blur", "nan"), ("--permutations", "-5"), ("--split", "train")]:
        cases.append(audit_case(f"eval{flag}-{v}", lambda c, r, f=flag, v=v: EVAL(c, r, f, v),
                                refused((flag.lstrip("-"),)), "command-line validation"))
    cases.append(Case("eval-from-missing", "audit", "refused", ["{bin}", "eval", "--from", "{d}/nosuch"],
                      keywords=("nosuch",), defect="missing files"))
    cases.append(Case("eval-from-not-a-run", "audit", "refused", ["{bin}", "eval", "--from", "{d}/notarun"],
                      {"notarun/x": "1"}, keywords=("notarun",), defect="missing files"))
    cases.append(audit_case("eval-out-missing-dir", lambda c, r: EVAL(c, r, "--out", str(c.d / "no" / "dir" / "e.json"),
                                                                      "--permutations", "10", "--sinkhorn-permutations", "1"),
                            lambda ctx, res, run: judge_ok_or_refused(
                                res, lambda r: [] if (ctx.d / "no" / "dir" / "e.json").exists() else ["no e.json written"],
                                keywords=("no/dir",)), "missing files"))

    def eval_default_out(ctx: Ctx) -> Verdict:
        a = copy_run(ctx.fx.get("finished3"), ctx.d / "runs")
        b = copy_run(ctx.fx.get("finished3b"), ctx.d / "runs")
        cwd = ctx.d / "cwd"
        cwd.mkdir()
        res = ctx.run(["{bin}", "eval", "--from", str(a), "--from", str(b), "--device", "flex",
                       "--permutations", "20", "--sinkhorn-permutations", "2"], cwd=cwd)
        v = judge_ok(res)
        if v.cls != HANDLED:
            return v
        stray = sorted(p.name for p in cwd.iterdir())
        if stray:
            return Verdict(WRONG, [f"eval wrote {stray} into the current directory instead of next to the runs"])
        return Verdict(HANDLED, ["report next to the runs"])

    cases.append(Case("eval-default-out-two-runs", "audit", "custom", custom=eval_default_out, timeout=300,
                      defect="fairrep eval writes ./eval.json by default"))

    def export_ok(ctx, res, run):
        def problems(r):
            out = []
            try:
                _, zshape, z = read_npy(ctx.d / "z.npy")
                sdescr, sshape, s = read_npy(ctx.d / "z_s.npy")
                _, lshape, labels = read_npy(ctx.d / "z_labels.npy")
                side = json.loads((ctx.d / "z.json").read_text())
            except (OSError, ValueError, KeyError, AttributeError) as e:
                return [f"export files unreadable: {e}"]
            if zshape != (100, 4) or sshape != (100,) or lshape != (100, 2):
                out.append(f"shapes z {zshape}, s {sshape}, labels {lshape}; expected (100, 4), (100,), (100, 2)")
            if not all(math.isfinite(v) for v in z):
                out.append("z holds non-finite values")
            if sorted(set(s)) != [0, 1] or sorted(set(labels)) != [0.0, 1.0]:
                out.append(f"groups {sorted(set(s))[:5]} / labels {sorted(set(labels))[:5]} are not 0/1")
            if side.get("rows") != 100 or side.get("latent") != 4:
                out.append(f"sidecar rows {side.get('rows')} / latent {side.get('latent')}")
            return out

        return judge_ok(res, problems)

    cases.append(audit_case("export-ok", lambda c, r: ["{bin}", "export", "--from", str(r), "--out", str(c.d / "z.npy"),
                                                       "--device", "flex"], export_ok, "valid input must work"))
    cases.append(audit_case("export-out-not-npy", lambda c, r: ["{bin}", "export", "--from", str(r), "--out",
                                                                str(c.d / "z.txt"), "--device", "flex"],
                            refused((".npy",)), "command-line validation"))
    cases.append(audit_case("export-out-missing-dir", lambda c, r: ["{bin}", "export", "--from", str(r), "--out",
                                                                    str(c.d / "no" / "dir" / "z.npy"), "--device", "flex"],
                            lambda ctx, res, run: judge_ok_or_refused(
                                res, lambda r: [] if (ctx.d / "no" / "dir" / "z.npy").exists() else ["no z.npy written"],
                                keywords=("no/dir",)), "missing files"))
    cases.append(Case("export-from-missing", "audit", "refused",
                      ["{bin}", "export", "--from", "{d}/nosuch", "--out", "{d}/z.npy"], keywords=("nosuch",),
                      defect="missing files"))
    transfer_cfg = ('[data]\ntasks = ["task2"]\n[heads]\nkinds = ["linear"]\n[fit]\nepochs = 3\n'
                    '[compare]\nraw = true\n[bounds]\nmax_points = 50\n[run]\ndevice = "flex"\n')

    def transfer_ok(ctx, res, run):
        def problems(r):
            path = run / "transfer.json"
            if not path.exists():
                return ["no transfer.json next to the run"]
            report = json.loads(path.read_text())
            accs = [v for v in find_key(report, lambda k: k == "accuracy") if isinstance(v, (int, float))]
            if not accs or not all(0 <= a <= 1 for a in accs):
                return [f"accuracies {accs[:4]} missing or out of [0, 1]"]
            return []

        return judge_ok(res, problems)

    def transfer_args(text: str):
        def args(ctx, run):
            ctx.write("t.toml", text)
            return ["{bin}", "transfer", "--from", str(run), str(ctx.d / "t.toml")]

        return args

    cases.append(audit_case("transfer-ok", transfer_args(transfer_cfg), transfer_ok, "valid input must work",
                            fixture="heldout"))
    cases.append(audit_case("transfer-unknown-key", transfer_args(transfer_cfg.replace("epochs = 3", "epoch = 3")),
                            refused(("epoch",)), "unknown keys are errors listing valid keys", fixture="heldout"))
    cases.append(audit_case("transfer-trained-task", transfer_args(transfer_cfg.replace("task2", "task0")),
                            lambda ctx, res, run: judge_ok_or_refused(res, keywords=("task0",)),
                            "transfer to a task the encoder was trained on", fixture="heldout"))
    cases.append(Case("transfer-from-missing", "audit", "refused",
                      ["{bin}", "transfer", "--from", "{d}/nosuch", "{d}/t.toml"], {"t.toml": transfer_cfg},
                      keywords=("nosuch",), defect="missing files"))
    cases.append(Case("transfer-config-missing", "audit", "refused",
                      ["{bin}", "transfer", "--from", "{d}/nosuch", "{d}/missing.toml"],
                      keywords=(("missing.toml", "nosuch"),), defect="missing files"))
    cases.append(Case("eval-undefined-auc", "audit", "custom", env=dict(TOY_ENV), custom=eval_undefined_auc_case,
                      timeout=300, defect="an undefined AUC is reported as a number (0.5)"))
    return cases


def eval_undefined_auc_case(ctx: Ctx) -> Verdict:
    """A task whose labels are all 1: its AUC is undefined, not 0.5."""
    rows = toy_rows()
    ctx.write("specs/toy.toml", toy_spec(tasks=TASK_Y + '[[tasks]]\nname = "always"\ncolumn = "one"\nop = "=="\nvalue = 1\n'))
    ctx.write("data/toy/toy.csv", toy_csv(rows))
    ctx.write("cfg.toml", toy_config())
    res = ctx.run(TOY_TRAIN)
    if res.rc != 0:
        return judge_ok_or_refused(res, keywords=("always",))
    run = run_dirs(ctx)[0]
    ev = ctx.run(["{bin}", "eval", "--from", str(run), "--device", "flex", "--data-dir", "{d}/data",
                  "--permutations", "20", "--sinkhorn-permutations", "2"])
    v = judge_ok_or_refused(ev, keywords=("always",))
    if v.cls != HANDLED or ev.rc != 0:
        return v
    report = json.loads((run / "eval.json").read_text())
    aucs = [m.get("auc") for r in report.get("runs", []) for t, m in (r.get("tasks") or {}).items()
            if t == "always" and isinstance(m, dict)]
    if any(isinstance(a, (int, float)) for a in aucs):
        return Verdict(WRONG, [f"eval reports AUC {aucs} for a task with one class"])
    return Verdict(HANDLED, ["undefined AUC reported as undefined"])


# ---------------------------------------------------------------------------------------------
# Family: paths, devices, runaway training, full disks
# ---------------------------------------------------------------------------------------------


def paths_cases() -> list[Case]:
    cases = []
    outside = "run.name with .. or an absolute path leads outside --out"
    for slug, name in [("dotdot", '"../escape"'), ("absolute", '"{d}/abs-target"'), ("slash", '"a/b"'),
                       ("dotdot-deep", '"' + "../" * 24 + 'tmp/fairrep-abuse-escape"')]:
        cases.append(Case(f"paths-run-name-{slug}", "paths", "ok_or_refused", TRAIN,
                          {"cfg.toml": config_text({"run.name": name})}, keywords=(kw_key("run.name"),),
                          checks=[check_summary_finite, check_nothing_outside(("cfg.toml", "runs")), check_no_tmp_escape],
                          defect=outside, timeout=180))
    cases.append(Case("paths-out-nested-new", "paths", "ok", ["{bin}", "train", "{d}/cfg.toml", "--out", "{d}/a/b/c"],
                      {"cfg.toml": config_text()}, checks=[check_summary_finite], timeout=180,
                      defect="valid input must work"))
    cases.append(Case("paths-out-read-only", "paths", "custom", None, {"cfg.toml": config_text()},
                      needs=("readonly",), custom=readonly_out_case, defect="read-only directories"))
    cases.append(Case("paths-resume-read-only-run", "paths", "custom", None, {}, needs=("readonly",),
                      custom=readonly_resume_case, defect="read-only directories", timeout=120))
    return cases


def check_no_tmp_escape(ctx: Ctx, res: Result) -> list[str]:
    hits = sorted(Path("/tmp").glob("fairrep-abuse-escape*"))
    for h in hits:
        shutil.rmtree(h, ignore_errors=True)
    return [f"wrote {hits[0]} outside --out"] if hits else []


def readonly_out_case(ctx: Ctx) -> Verdict:
    ro = ctx.d / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = ctx.run(ctx.caps["ro_prefix"] + ["{bin}", "train", "{d}/cfg.toml", "--out", "{d}/ro/runs"])
    finally:
        ro.chmod(0o755)
    return judge_refused(res, ("ro/runs", ("permission", "denied", "read-only")))


def readonly_resume_case(ctx: Ctx) -> Verdict:
    run = stopped_copy(ctx)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    paths = [run] + [p for p in run.rglob("*") if p.is_dir()]
    for p in paths:
        p.chmod(0o555)
    try:
        res = ctx.run(ctx.caps["ro_prefix"] + RESUME + [str(run)], env=FLEX_ENV)
    finally:
        for p in paths:
            p.chmod(0o755)
    verdicts = [judge_refused(res, (run.name, ("permission", "denied", "read-only")))]
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    if before != after:
        verdicts.append(Verdict(LOSS, ["files of the read-only run changed"]))
    return Verdict.worst(verdicts)


def device_cases() -> list[Case]:
    cases = []
    no_adapter = NO_ADAPTER

    def resume_without_burn_device(env: dict) -> Callable:
        def custom(ctx: Ctx) -> Verdict:
            run = stopped_copy(ctx)
            res = ctx.run(RESUME + [str(run), "--device", "flex"], env=env, timeout=240)
            crash = crash_verdict(res)
            if crash:
                return crash
            if res.rc != 0:
                return Verdict(WRONG, [f"a CPU resume failed: {res.error_line()}"])
            return Verdict.worst(run_consistency(run, 4))

        return custom

    cases.append(Case("device-resume-flex-no-gpu-no-burn-device", "device", "custom", env=NO_GPU_ENV,
                      custom=resume_without_burn_device(NO_GPU_ENV), timeout=240,
                      defect="--resume on --device flex without any GPU adapter panics unless BURN_DEVICE=flex"))
    cases.append(Case("device-resume-flex-no-burn-device", "device", "custom",
                      custom=resume_without_burn_device({}), timeout=240,
                      defect="--resume on --device flex without any GPU adapter panics unless BURN_DEVICE=flex"))
    cases.append(Case("device-train-wgpu-no-adapter", "device", "ok_or_refused", TRAIN + ["--device", "wgpu"],
                      {"cfg.toml": config_text()}, env=NO_GPU_ENV, keywords=(("adapter", "gpu", "vulkan"),),
                      checks=[check_summary_finite], timeout=300, defect=no_adapter))
    cases.append(Case("device-train-auto-no-adapter", "device", "ok", TRAIN + ["--device", "auto"],
                      {"cfg.toml": config_text()}, env=NO_GPU_ENV, checks=[check_summary_finite], timeout=180,
                      defect="--device auto falls back to the CPU"))
    cases.append(audit_case("device-eval-wgpu-no-adapter",
                            lambda c, r: ["{bin}", "eval", "--from", str(r), "--device", "wgpu", "--permutations", "5",
                                          "--sinkhorn-permutations", "1"],
                            lambda ctx, res, run: judge_ok_or_refused(res, keywords=(("adapter", "gpu", "vulkan"),)),
                            no_adapter))
    cases[-1].category, cases[-1].env = "device", dict(NO_GPU_ENV)
    return cases


def resource_cases() -> list[Case]:
    diverge = DIVERGE
    cases = [
        Case("res-train-lr-1e15-mmd", "resources", "refused", TRAIN,
             {"cfg.toml": config_text({"optim.lr": "1e15", "optim.epochs": "3"})},
             keywords=("epoch", ("step", "batch")), timeout=120, defect=diverge),
        Case("res-train-lr-1e12-sinkhorn", "resources", "refused", TRAIN,
             {"cfg.toml": config_text({**SINK, "optim.lr": "1e12", "optim.epochs": "3"})},
             keywords=("epoch", ("step", "batch")), timeout=120,
             defect="Sinkhorn loops with memory growing when squared distances overflow"),
        Case("res-train-sinkhorn-never-converges", "resources", "refused_or_warned", TRAIN,
             {"cfg.toml": config_text({**SINK, "penalty.sinkhorn.eps": "0.001", "penalty.sinkhorn.max_iters": "1",
                                       "penalty.sinkhorn.check_every": "1", "penalty.sinkhorn.tolerance": "1e-9"})},
             keywords=("converge",), timeout=180,
             defect="no warning when the Sinkhorn penalty never converges during training"),
        Case("res-train-diverges-later-keeps-checkpoint", "resources", "custom", custom=diverge_later_case,
             timeout=240, defect=diverge),
    ]
    return cases


def diverge_later_case(ctx: Ctx) -> Verdict:
    """A run that trains for a few epochs, then diverges: it must stop naming the epoch and
    step, and the checkpoints of the good epochs must still resume."""
    ctx.write("cfg.toml", config_text(DIVERGE_LATER))
    res = ctx.run(TRAIN, env=FLEX_ENV, timeout=240)
    if res.rc == 0:
        raise SkipCase("this configuration no longer diverges; nothing to check")
    verdicts = [judge_refused(res, ("epoch", ("step", "batch")))]
    m = re.search(r"epoch (\d+)", res.error_line())
    runs = run_dirs(ctx)
    if m and runs and int(m.group(1)) > 1:
        run = runs[0]
        latest = (run / "latest").read_text().strip() if (run / "latest").exists() else None
        if not latest or not (run / "checkpoints" / latest / "model.bpk").exists():
            verdicts.append(Verdict(LOSS, [f"diverged at epoch {m.group(1)} but no good checkpoint is left"]))
    return Verdict.worst(verdicts)


# AdamW's decoupled decay with lr * weight_decay = 5 multiplies the weights by -4 every step:
# the loss overflows to NaN in epoch 6 of 12, after five good checkpoints.
DIVERGE_LATER = {"optim.kind": '"adamw"', "optim.lr": "1.0", "optim.weight_decay": "5.0", "optim.epochs": "12",
                 "penalty.kind": '"none"'}


def disk_cases() -> list[Case]:
    big_model = {"model.encoder_widths": "[512, 512]", "optim.epochs": "6"}
    return [
        Case("disk-file-size-limit-checkpoint", "resources", "custom", None, {"cfg.toml": config_text(big_model)},
             custom=fsize_case, timeout=180, defect="a disk-full error leaves the partial checkpoint directory"),
        Case("disk-full-tmpfs-mid-run", "resources", "custom", None, {"cfg.toml": config_text(big_model)},
             custom=tmpfs_case, needs=("unshare",), timeout=300,
             defect="a disk-full error leaves the partial checkpoint directory"),
    ]


def fsize_case(ctx: Ctx) -> Verdict:
    """Files may not grow beyond 512 KiB (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with
    EFBIG): the 1 MiB model.bpk cannot be written."""
    res = ctx.run(TRAIN, env=FLEX_ENV, fsize=512 * 1024)
    verdicts = [judge_refused(res, (("model.bpk", "optimizer.bpk", "checkpoint"),
                                    ("too large", "space", "os error 27")))]
    for run in run_dirs(ctx):
        left = leftovers(run)
        if left:
            verdicts.append(Verdict(WRONG, [f"the failed checkpoint left {left[:3]}"]))
    return Verdict.worst(verdicts)


TMPFS_WRAPPER = """\
set -u
mkdir -p "$D/mnt" "$D/copy"
mount -t tmpfs -o size=5m tmpfs "$D/mnt" || { echo "cannot mount a tmpfs" >&2; exit 97; }
BURN_DEVICE=flex "$BIN" train "$D/cfg.toml" --out "$D/mnt/runs" >"$D/train.out" 2>"$D/train.err"
echo $? >"$D/train.rc"
cp -a "$D/mnt/." "$D/copy/"
"""


def tmpfs_case(ctx: Ctx) -> Verdict:
    """A 5 MiB filesystem: the first 3.2 MiB checkpoint fits, the second does not. The run
    must fail naming the path, leave no partial checkpoint, and resume elsewhere."""
    ctx.write("wrap.sh", TMPFS_WRAPPER)
    res = ctx.run(["unshare", "--mount", "--map-root-user", "sh", "{d}/wrap.sh"],
                  env={"D": str(ctx.d), "BIN": str(ctx.bin)}, timeout=240)
    if res.rc == 97 or not (ctx.d / "train.rc").exists():
        raise SkipCase(f"tmpfs not available: {res.stderr.strip()[:120]}")
    train = ctx.scrub(Result(["fairrep", "train"], int((ctx.d / "train.rc").read_text()),
                             (ctx.d / "train.out").read_text(), strip_ansi((ctx.d / "train.err").read_text()),
                             False, res.seconds, res.timeout))
    if train.rc == 0:
        raise SkipCase("the run fitted in 5 MiB; nothing was tested")
    verdicts = [judge_refused(train, (("no space", "space left", "os error 28"),))]
    runs = run_dirs(ctx, "copy/runs")
    if not runs:
        return Verdict.worst(verdicts + [Verdict(LOSS, ["no run directory after the disk filled"])])
    run = runs[0]
    left = leftovers(run)
    if left:
        verdicts.append(Verdict(WRONG, [f"the failed write left {left[:3]}"]))
    if (run / "latest").exists():
        for leftover in left:
            p = run / leftover
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        r = ctx.run(RESUME + [str(run)], env=FLEX_ENV, timeout=240)
        crash = crash_verdict(r)
        if crash:
            verdicts.append(crash)
        elif r.rc != 0:
            verdicts.append(Verdict(LOSS, [f"the run cannot be resumed after the disk filled: {r.error_line()}"]))
        else:
            verdicts += [v for v in run_consistency(run, 6) if v.cls != HANDLED]
    return Verdict.worst(verdicts)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def detect_caps(scratch: Path) -> dict:
    caps: dict = {}
    if shutil.which("strace"):
        r = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=none", "true"],
                           capture_output=True)
        caps["strace"] = r.returncode == 0
        caps["strace_why"] = "strace cannot trace here: " + r.stderr.decode(errors="replace").strip()[:100]
    else:
        caps["strace"] = False
        caps["strace_why"] = "strace is not installed (apt-get install strace)"
    probe = scratch / "unshare-probe"
    probe.mkdir(parents=True, exist_ok=True)
    if shutil.which("unshare"):
        r = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs '{probe}'"], capture_output=True)
        caps["unshare"] = r.returncode == 0
        caps["unshare_why"] = "cannot mount a tmpfs in a user namespace: " + r.stderr.decode(errors="replace").strip()[:100]
    else:
        caps["unshare"], caps["unshare_why"] = False, "unshare is not installed"
    # Read-only directories: root ignores permissions unless it drops CAP_DAC_OVERRIDE.
    ro = scratch / "ro-probe"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    prefix: list = []
    if os.geteuid() == 0:
        if shutil.which("setpriv"):
            prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
        else:
            caps["readonly_why"] = "running as root without setpriv: permissions are not enforced"
    r = subprocess.run(prefix + ["sh", "-c", f"touch '{ro}/x'"], capture_output=True) if (
        os.geteuid() != 0 or prefix) else None
    ro.chmod(0o755)
    caps["readonly"] = r is not None and r.returncode != 0
    caps.setdefault("readonly_why", "read-only directories are not enforced here")
    caps["ro_prefix"] = prefix
    return caps


def all_cases(fx: Fixtures, caps: dict, only: Optional[str], count_kills: bool = True) -> list[Case]:
    cases = (config_value_cases() + config_shape_cases() + config_file_cases() + cli_cases() + points_cases()
             + divergence_cases() + data_cases() + checkpoint_cases() + audit_cases() + paths_cases()
             + device_cases() + resource_cases() + disk_cases())
    cases += [kill_random_case(i) for i in range(1, 9)]
    # The syscall kill cases need the reference runs (counted under strace): build them only
    # when --only can select one of these names.
    wanted = only is None or any(only in f"{prefix}-{s}-{n:02d}" for prefix in ("kill", "kill-improving")
                                 for s in KILL_SYSCALLS for n in range(1, 200))
    if caps.get("strace") and wanted and count_kills:
        try:
            for ref_name in ("killref", "killref2"):
                counts = fx.get(ref_name)["counts"]
                for s in KILL_SYSCALLS:
                    cases += [kill_syscall_case(s, n, ref_name) for n in range(1, counts.get(s, 0) + 1)]
        except FixtureError as e:
            message = str(e)

            def fail(ctx: Ctx) -> Verdict:
                raise FixtureError(message)

            cases.append(Case("kill-at-every-syscall-step", "checkpoint", "custom", custom=fail, sticky=True,
                              defect="kills at every rename / fsync"))
    elif not caps.get("strace"):
        cases.append(Case("kill-at-every-syscall-step", "checkpoint", "custom", needs=("strace",), sticky=wanted,
                          custom=lambda ctx: Verdict(HANDLED), defect="kills at every rename / fsync"))
    names = [c.name for c in cases]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise SystemExit(f"duplicate case names: {sorted(dups)}")
    return cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, type=Path, help="the fairrep binary")
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, help="results folder (default: a new temporary folder)")
    ap.add_argument("--skip-heavy", action="store_true", help="leave out the 20,000-point cases")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()

    binary = args.bin.resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"error: --bin {args.bin}: not an executable file", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[2]
    out = (args.out or Path(tempfile.mkdtemp(prefix="fairrep-abuse-"))).resolve()
    if out == repo or repo in out.parents:
        print(f"error: --out {out} is inside the repository; choose a folder outside it", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    caps = detect_caps(out / "probes")
    fx = Fixtures(out / "fixtures", binary, caps)
    cases = all_cases(fx, caps, args.only, count_kills=not args.list)
    if args.only:
        cases = [c for c in cases if args.only in c.name or c.sticky]
    if args.skip_heavy:
        cases = [c for c in cases if not c.heavy]
    if args.list:
        for c in cases:
            print(f"{c.category:11} {c.expect:17} {c.name}")
        print(f"{len(cases)} cases, plus kill-SYSCALL-NN: one per rename / fsync / fdatasync call of the "
              "reference run (counted under strace when the campaign runs)")
        return 0
    for k in ("strace", "unshare", "readonly"):
        if not caps.get(k):
            print(f"note: {k} cases are skipped: {caps.get(k + '_why')}")
    # Longest first, so that the pool does not wait on a straggler at the end.
    order = sorted(cases, key=lambda c: (not c.heavy, not c.name.startswith("kill-"), c.timeout < 150))
    results_path = out / "results.jsonl"
    results_path.write_text("")
    lock = threading.Lock()
    records = []
    started = time.monotonic()

    def one(case: Case) -> dict:
        d = out / "cases" / case.name
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        ctx = Ctx(case, d, binary, fx, caps)
        t0 = time.monotonic()
        try:
            verdict = run_case(case, ctx)
        except SkipCase as e:
            verdict = Verdict(SKIPPED, [str(e)])
        except FixtureError as e:
            verdict = Verdict(SETUP, [str(e)])
        except Exception as e:  # a defect of this script, reported rather than hidden
            verdict = Verdict(SETUP, [f"campaign error: {type(e).__name__}: {e}"])
        rec = {
            "name": case.name, "category": case.category, "expect": case.expect, "class": verdict.cls,
            "defect": verdict.defect or case.defect, "evidence": verdict.evidence, "seconds": round(time.monotonic() - t0, 2),
            "commands": ctx.commands, "outputs": ctx.outputs, "dir": str(d),
        }
        with lock:
            records.append(rec)
            with results_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            ev = (verdict.evidence[0] if verdict.evidence else "")[:110]
            print(f"[{len(records):4d}/{len(order)}] {verdict.cls:15} {case.name:52} {ev}", flush=True)
        return rec

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, order))

    elapsed = time.monotonic() - started
    print(f"\n{len(records)} cases in {elapsed / 60:.1f} min; results: {results_path}\n")
    cats = sorted({r["category"] for r in records})
    shown = [c for c in CLASSES if any(r["class"] == c for r in records)]
    width = max(len(c) for c in cats + ["category"])
    print(f"{'category':{width}} " + " ".join(f"{c[:13]:>13}" for c in shown) + f" {'total':>6}")
    for cat in cats + ["all"]:
        rs = [r for r in records if cat == "all" or r["category"] == cat]
        print(f"{cat:{width}} " + " ".join(f"{sum(r['class'] == c for r in rs):13d}" for c in shown) + f" {len(rs):6d}")
    failing = [r for r in records if r["class"] not in (HANDLED, SKIPPED)]
    if failing:
        print("\nFailing cases, by defect:")
        by_defect: dict = {}
        for r in failing:
            by_defect.setdefault(r["defect"] or "(none)", []).append(r)
        for defect in sorted(by_defect, key=lambda d: -len(by_defect[d])):
            print(f"\n  {defect} ({len(by_defect[defect])})")
            for r in sorted(by_defect[defect], key=lambda r: r["name"]):
                ev = r["evidence"][0] if r["evidence"] else ""
                print(f"    {r['class']:15} {r['name']}: {ev[:150]}")
    unclear = [r for r in records if r["class"] == UNCLEAR]
    if unclear:
        print("\nUnclear messages, by reason (a case may have several):")
        for label, pattern in [("cause printed twice", "cause printed twice"),
                               ("exit status 2 instead of 1", "exit status 2"),
                               ("key / file / row / value not named", "does not name"),
                               ("serde internals in the message", "tells the user nothing")]:
            n = sum(any(pattern in e for e in r["evidence"]) for r in unclear)
            print(f"  {label}: {n}")
    skipped = [r for r in records if r["class"] == SKIPPED]
    if skipped:
        print(f"\nSkipped ({len(skipped)}):")
        reasons: dict = {}
        for r in skipped:
            reasons.setdefault(r["evidence"][0] if r["evidence"] else "", []).append(r["name"])
        for reason, names in reasons.items():
            print(f"  {reason}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}")
    (out / "summary.json").write_text(json.dumps({
        "binary": str(binary), "cases": len(records), "minutes": round(elapsed / 60, 2),
        "totals": {c: sum(r["class"] == c for r in records) for c in CLASSES},
        "by_category": {cat: {c: sum(r["class"] == c and r["category"] == cat for r in records) for c in CLASSES}
                        for cat in cats},
    }, indent=2))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
