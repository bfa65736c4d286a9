#!/usr/bin/env python3
"""wgnn side by side with NumPy (OpenBLAS) and PyTorch, in one run on one machine.

Runs `wgnn bench --json`, then the same work in NumPy float32 and PyTorch float32 (CPU, and
CUDA where present): every matrix product wgnn timed, at the same shape and in the same
transpose form, and the full-batch sparse-autoencoder cost and gradient (784-196-784,
sigmoid, KL sparsity rho=0.1 beta=3, weight decay lambda=3e-3) on the same rows. Timing is
the same as wgnn's: one untimed warm-up, then the median of --repeats runs, each to
completion. Prints one table and the ratios the issue's targets are stated in.

Usage: python3 benches/compare/compare.py [--wgnn target/release/wgnn] [--shapes large]
       [--backend cpu] [--batch 10000] [--data mnist:DIR] [--repeats 5]
See README.md beside this file.
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import torch
except ImportError:  # PyTorch is optional: NumPy alone still gives the OpenBLAS baseline.
    torch = None

try:
    from threadpoolctl import threadpool_info
except ImportError:
    threadpool_info = None

REPO = Path(__file__).resolve().parents[2]
RHO, BETA, LAMBDA = 0.1, 3.0, 3e-3


def median_seconds(repeats, run, sync=lambda: None):
    """One untimed warm-up, then the median of `repeats` runs, each ended by `sync`."""
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def find_wgnn(given):
    candidates = [Path(given)] if given else []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "wgnn")
    candidates.append(REPO / "target" / "release" / "wgnn")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which("wgnn")
    if found and not given:
        return Path(found)
    sys.exit(
        "error: no wgnn binary at "
        + ", ".join(str(c) for c in candidates)
        + ": build it with `cargo build --release` or pass --wgnn PATH"
    )


def read_mnist_images(spec, rows):
    """The first `rows` MNIST training images as float32 in [0, 1], from `mnist:DIR`."""
    if not spec.startswith("mnist:"):
        sys.exit(f"error: --data {spec}: only mnist:DIR is understood")
    folder = Path(spec[len("mnist:") :])
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"):
        path = folder / name
        if path.is_file():
            raw = (gzip.open if name.endswith(".gz") else open)(path, "rb").read()
            count, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
            if count < rows:
                sys.exit(f"error: {path} holds {count} images, fewer than the {rows} asked for")
            pixels = np.frombuffer(raw, dtype=np.uint8, offset=16, count=rows * h * w)
            return (pixels.reshape(rows, h * w) / np.float32(255)).astype(np.float32)
    sys.exit(f"error: {folder} holds no train-images-idx3-ubyte[.gz]")


def sae_theta(rng, visible=784, hidden=196):
    """W1, b1, W2, b2 as wgnn initialises them: uniform in ±sqrt(6/(in+out+1)), zero biases."""
    r = np.sqrt(6.0 / (visible + hidden + 1))
    w1 = rng.uniform(-r, r, (hidden, visible)).astype(np.float32)
    w2 = rng.uniform(-r, r, (visible, hidden)).astype(np.float32)
    return w1, np.zeros(hidden, np.float32), w2, np.zeros(visible, np.float32)


def sae_numpy(w1, b1, w2, b2, x):
    """J and its gradient with hand-written backpropagation (MATH.md), all in float32."""
    m = x.shape[0]
    a2 = 1.0 / (1.0 + np.exp(-(x @ w1.T + b1)))
    a3 = 1.0 / (1.0 + np.exp(-(a2 @ w2.T + b2)))
    diff = a3 - x
    rho_hat = a2.mean(axis=0)
    kl = RHO * np.log(RHO / rho_hat) + (1 - RHO) * np.log((1 - RHO) / (1 - rho_hat))
    cost = 0.5 * np.sum(diff * diff) / m + 0.5 * LAMBDA * (np.sum(w1 * w1) + np.sum(w2 * w2)) + BETA * np.sum(kl)
    d3 = diff * a3 * (1 - a3)
    d2 = (d3 @ w2 + BETA * (-RHO / rho_hat + (1 - RHO) / (1 - rho_hat))) * a2 * (1 - a2)
    grads = (d2.T @ x / m + LAMBDA * w1, d2.sum(axis=0) / m, d3.T @ a2 / m + LAMBDA * w2, d3.sum(axis=0) / m)
    return cost, grads


def sae_torch_cost(w1, b1, w2, b2, x):
    """J as a PyTorch user writes it; autograd gives the gradient."""
    m = x.shape[0]
    a2 = torch.sigmoid(x @ w1.T + b1)
    a3 = torch.sigmoid(a2 @ w2.T + b2)
    rho_hat = a2.mean(dim=0)
    kl = RHO * torch.log(RHO / rho_hat) + (1 - RHO) * torch.log((1 - RHO) / (1 - rho_hat))
    return 0.5 * ((a3 - x) ** 2).sum() / m + 0.5 * LAMBDA * ((w1**2).sum() + (w2**2).sum()) + BETA * kl.sum()


def product_operands(row, rng):
    """The stored operands of a wgnn matmul row and how they are combined (see bench.rs)."""
    m, n, k = (int(v) for v in row["shape"].split("x"))

    def rand(r, c):
        return rng.random((r, c), dtype=np.float32)

    form = row["name"]
    if form == "matmul":
        return rand(m, k), rand(k, n), lambda a, b: (a, b)
    if form == "matmul_forward":  # X (m×k) · Wᵀ, W stored n×k
        return rand(m, k), rand(n, k), lambda a, b: (a, b.T)
    if form == "matmul_weight_grad":  # δᵀ · A, δ stored k×m
        return rand(k, m), rand(k, n), lambda a, b: (a.T, b)
    if form == "matmul_input_delta":  # δ (m×k) · W (k×n)
        return rand(m, k), rand(k, n), lambda a, b: (a, b)
    raise ValueError(form)


def time_products(rows, repeats, rng, devices):
    """Median seconds per (name, shape) for NumPy and each PyTorch device."""
    out = {}
    for row in rows:
        key = (row["name"], row["shape"])
        if key in out:
            continue
        a, b, arrange = product_operands(row, rng)
        m, n, _ = (int(v) for v in row["shape"].split("x"))
        result = {}
        c = np.empty((m, n), np.float32)
        lhs, rhs = arrange(a, b)
        result["numpy"] = median_seconds(repeats, lambda: np.matmul(lhs, rhs, out=c))
        for dev in devices:
            ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
            tl, tr = arrange(ta, tb)
            tc = torch.empty((m, n), dtype=torch.float32, device=dev)
            result[f"torch {dev}"] = median_seconds(repeats, lambda: torch.matmul(tl, tr, out=tc), sync(dev))
        out[key] = result
    return out


def sync(dev):
    return torch.cuda.synchronize if dev == "cuda" else (lambda: None)


def time_sae(batch, x_all, repeats, rng, devices):
    """Median seconds of the SAE cost+grad (and of a whole step with the update) per peer."""
    x = x_all[:batch]
    w1, b1, w2, b2 = sae_theta(rng)
    result = {}
    result["numpy"] = median_seconds(repeats, lambda: sae_numpy(w1, b1, w2, b2, x))
    for dev in devices:
        params = [torch.from_numpy(p.copy()).to(dev).requires_grad_() for p in (w1, b1, w2, b2)]
        tx = torch.from_numpy(x).to(dev)

        def cost_and_grad():
            for p in params:
                p.grad = None
            cost = sae_torch_cost(*params, tx)
            cost.backward()
            return cost

        def step():
            cost_and_grad()
            with torch.no_grad():
                for p in params:
                    p -= 0.1 * p.grad

        result[f"torch {dev}"] = median_seconds(repeats, cost_and_grad, sync(dev))
        result[f"torch {dev} step"] = median_seconds(repeats, step, sync(dev))
    return result


def sae_batches(rows):
    return sorted({int(r["shape"].split("=")[1]) for r in rows if r["name"] == "sae_784_196_784"})


def describe_machine(devices):
    lines = [f"machine  {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"]
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(ln for ln in cpuinfo if ln.startswith("model name")).split(":", 1)[1].strip()
        lines[0] = f"machine  {model}, {os.cpu_count()} logical CPUs"
    except (OSError, StopIteration):
        pass
    lines.append(f"numpy    {np.__version__}")
    if threadpool_info:
        for pool in threadpool_info():
            kernel = f", kernel {pool['architecture']}" if pool.get("architecture") else ""
            version = f" {pool['version']}" if pool.get("version") else ""
            lines.append(
                f"         {pool.get('user_api')}: {pool.get('internal_api')}{version}{kernel}, "
                f"{pool.get('num_threads')} threads ({Path(pool.get('filepath', '')).name})"
            )
    else:
        lines.append("         (pip install threadpoolctl to see which BLAS kernel runs)")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var):
            lines.append(f"         {var}={os.environ[var]} is set (it can slow OpenBLAS: see README.md)")
    if torch is None:
        lines.append("torch    not installed: PyTorch columns left out (pip install torch)")
    else:
        lines.append(f"torch    {torch.__version__}, {torch.get_num_threads()} threads, devices: {', '.join(devices)}")
    return lines


def load_average():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def ratio_parts(key, who, ours, peer, theirs, step):
    """A product: who's rate as a percentage of peer's. A step: who's time over peer's, and over
    peer's whole step (with the update) where that was timed."""
    if key[0].startswith("matmul"):
        return [f"{who} rate = {100 * theirs / ours:.0f}% of {peer}'s"]
    parts = [f"{who} time / {peer}'s = {ours / theirs:.2f}"]
    if step is not None:
        parts.append(f"/ {peer}'s whole step = {ours / step:.2f}")
    return parts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wgnn", help="the wgnn binary (default: $CARGO_TARGET_DIR or target/release/wgnn)")
    ap.add_argument("--shapes", default="medium", choices=["small", "medium", "large", "xlarge"])
    ap.add_argument("--backend", choices=["cpu", "gpu", "both"], help="passed to wgnn bench (default: its own)")
    ap.add_argument("--batch", default="10000", help="rows of the cost-and-gradient steps (default 10000)")
    ap.add_argument("--data", help="mnist:DIR for the autoencoder rows (default: random values in [0, 1])")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternate wgnn and its peers this many times")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch CPU threads (default: all)")
    ap.add_argument("--no-cuda", action="store_true", help="skip PyTorch on CUDA even where present")
    args = ap.parse_args()

    devices = []
    if torch is not None:
        torch.set_num_threads(args.threads)
        devices.append("cpu")
        if torch.cuda.is_available() and not args.no_cuda:
            # Compare float32 with float32: TF32 would trade precision for speed.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            devices.append("cuda")

    wgnn = find_wgnn(args.wgnn)
    cmd = [str(wgnn), "bench", "--json", "--shapes", args.shapes, "--repeats", str(args.repeats)]
    cmd += ["--batch", args.batch]
    cmd += ["--backend", args.backend] if args.backend else []
    cmd += ["--data", args.data] if args.data else []
    print("\n".join(describe_machine(devices)))
    print(f"load     {load_average()} at the start (1, 5, 15 min)")
    print(f"running  {' '.join(cmd)}, then NumPy and PyTorch on the same shapes, {args.rounds} round(s)", flush=True)

    # On a busy machine the load drifts: alternating wgnn and its peers for several rounds, in
    # the order wgnn-peers, peers-wgnn, ..., and taking each cell's median over the rounds keeps
    # one slow minute from deciding a ratio.
    rounds = []  # one {(name, shape, who): seconds} per round
    rows, x_all = None, None

    def run_wgnn():
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
        out = json.loads(done.stdout)
        return out, {(r["name"], r["shape"], f"wgnn {r['backend']}"): r["median_seconds"] for r in out}

    def run_peers(rows, x_all):
        seconds = {}
        rng = np.random.default_rng(0)
        products = [r for r in rows if r["name"].startswith("matmul")]
        for (name, shape), result in time_products(products, args.repeats, rng, devices).items():
            seconds.update({(name, shape, who): s for who, s in result.items()})
        for b in sae_batches(rows):
            result = time_sae(b, x_all, args.repeats, rng, devices)
            seconds.update({("sae_784_196_784", f"batch={b}", who): s for who, s in result.items()})
        return seconds

    for i in range(args.rounds):
        if rows is None or i % 2 == 0:
            rows, seconds = run_wgnn()
            if x_all is None:
                rows_needed = max(sae_batches(rows), default=1)
                rng = np.random.default_rng(1)
                x_all = (
                    read_mnist_images(args.data, rows_needed)
                    if args.data
                    else rng.random((rows_needed, 784), np.float32)
                )
            seconds.update(run_peers(rows, x_all))
        else:
            seconds = run_peers(rows, x_all)
            rows, ours = run_wgnn()
            seconds.update(ours)
        rounds.append(seconds)
        print(f"load     {load_average()} after round {len(rounds)}", flush=True)
    batches = sae_batches(rows)
    seconds = {key: statistics.median(r[key] for r in rounds if key in r) for key in rounds[0]}
    print(
        f"timing   median of {args.repeats} runs after one warm-up, each to completion, median of {args.rounds} rounds\n"
    )

    wgnn_backends = sorted({r["backend"] for r in rows}, key=lambda b: ["cpu f32", "cpu f64", "gpu"].index(b))
    peers = ["numpy"] + [f"torch {d}" for d in devices]
    header = ["name", "shape"] + [f"wgnn {b}" for b in wgnn_backends] + peers
    table = []
    flops = {(r["name"], r["shape"]): r["median_seconds"] * r["gflops"] * 1e9 for r in rows}
    keys = [k for k in dict.fromkeys((r["name"], r["shape"]) for r in rows) if k[0].startswith("matmul")]
    keys += [("sae_784_196_784", f"batch={b}") for b in batches]

    print("median seconds (GFLOP/s in brackets)")
    for key in keys:
        cells = list(key)
        for who in header[2:]:
            s = seconds.get((*key, who))
            cells.append("—" if s is None else f"{s:.4f} ({flops[key] / s / 1e9:.0f})")
        table.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in [header] + table:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    if devices and batches:
        print("\nPyTorch's whole step (cost+grad+update θ -= 0.1∇θ), for the issue's reference point:")
        for b in batches:
            steps = ", ".join(
                f"{d} {seconds[('sae_784_196_784', f'batch={b}', f'torch {d} step')]:.4f} s" for d in devices
            )
            print(f"  sae_784_196_784 batch={b}: {steps}")

    print("\nratios (one run, this machine)")
    for key in keys:
        parts = []
        ours = seconds.get((*key, "wgnn cpu f32"))
        gpu = seconds.get((*key, "wgnn gpu"))
        for peer in peers if ours is not None else []:
            theirs = seconds.get((*key, peer))
            if theirs is not None:
                parts += ratio_parts(key, "wgnn cpu f32", ours, peer, theirs, seconds.get((*key, f"{peer} step")))
        if gpu is not None and ours is not None:
            parts.append(f"wgnn gpu time / cpu f32's = {gpu / ours:.2f}")
        # The NVIDIA targets: wgnn's GPU backend against PyTorch on CUDA (float32, TF32 off).
        cuda = seconds.get((*key, "torch cuda"))
        if gpu is not None and cuda is not None:
            parts += ratio_parts(key, "wgnn gpu", gpu, "torch cuda", cuda, seconds.get((*key, "torch cuda step")))
        if parts:
            print(f"  {key[0]} {key[1]}: " + "; ".join(parts))
    print("  (a time ratio below 1: wgnn is faster; a rate above 100%: wgnn is faster)")


if __name__ == "__main__":
    main()
