#!/usr/bin/env python3
"""wgnn's CNN training step beside PyTorch's, in one run on one machine (issue 15 §5).

The network is `wgnn train cnn`'s default LeNet: 1x28x28 -> conv 20x5x5 relu, max pool 2,
conv 50x5x5 relu, max pool 2, dense 500 relu, dense 10, softmax cross-entropy; one step is
the cost, the gradient and the Adam update on a batch of 64, float32, on the CPU. wgnn is
timed by `wgnn bench --cnn --json` (which also times each convolution alone); PyTorch by the
same network in torch.nn with torch.optim.Adam, at --threads threads (default 2). Timing is
wgnn's: one untimed warm-up, then the median of --repeats steps; --rounds rounds alternate
who goes first (wgnn first in odd rounds) and each cell is the median over the rounds, with
the load average printed before and after each round.

Usage: python3 benches/compare/cnn.py [--wgnn target/release/wgnn] [--data mnist:DIR]
       [--repeats 30] [--rounds 4] [--threads 2]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

import compare  # the sibling script: find_wgnn, read_mnist_images, load_average, median_seconds

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit("error: this comparison needs PyTorch (pip install torch)")


def lenet():
    """The same layers, in PyTorch's layouts (wgnn's θ holds conv weights the same way)."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def time_torch(x, y, repeats):
    """Median seconds of one Adam training step, and of each convolution forward/backward."""
    torch.manual_seed(0)
    net = lenet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    out = {"cnn_lenet_step_adam": compare.median_seconds(repeats, step)}
    for name, conv, shape, input_grad in [
        ("lenet1", nn.Conv2d(1, 20, 5), (64, 1, 28, 28), False),
        ("lenet2", nn.Conv2d(20, 50, 5), (64, 20, 12, 12), True),
    ]:
        inp = torch.rand(shape, requires_grad=input_grad)
        with torch.no_grad():
            out[f"conv2d_{name}_forward"] = compare.median_seconds(repeats, lambda: conv(inp))
        z = conv(inp)
        delta = torch.rand_like(z)

        def backward():
            conv.zero_grad(set_to_none=True)
            inp.grad = None
            conv(inp).backward(delta)

        # PyTorch's backward needs its forward: the forward's time is taken off.
        both = compare.median_seconds(repeats, backward)
        suffix = "dW_db_dx" if input_grad else "dW_db"
        out[f"conv2d_{name}_backward_{suffix}"] = max(both - out[f"conv2d_{name}_forward"], 0.0)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wgnn", help="the wgnn binary (default: target/release/wgnn)")
    ap.add_argument("--data", help="mnist:DIR: the first 64 training images (default: random in [0, 1])")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    wgnn = compare.find_wgnn(args.wgnn)
    cmd = [str(wgnn), "bench", "--cnn", "--json", "--repeats", str(args.repeats)]
    cmd += ["--data", args.data] if args.data else []
    if args.data:
        x = compare.read_mnist_images(args.data, 64)
    else:
        x = np.random.default_rng(1).random((64, 784), np.float32)
    tx, ty = torch.from_numpy(x).reshape(64, 1, 28, 28), torch.arange(64) % 10
    print(f"torch    {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load     {compare.load_average()} at the start (1, 5, 15 min)")
    print(f"running  {' '.join(cmd)} and PyTorch's step, {args.rounds} round(s)", flush=True)

    def run_wgnn():
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
        rows = json.loads(done.stdout)
        return rows, {(r["name"], "wgnn cpu f32"): r["median_seconds"] for r in rows}

    rounds, rows = [], None
    for i in range(args.rounds):
        seconds = {}
        if i % 2 == 0:
            rows, ours = run_wgnn()
            seconds.update(ours)
            seconds.update({(k, "torch cpu"): v for k, v in time_torch(tx, ty, args.repeats).items()})
        else:
            seconds.update({(k, "torch cpu"): v for k, v in time_torch(tx, ty, args.repeats).items()})
            rows, ours = run_wgnn()
            seconds.update(ours)
        rounds.append(seconds)
        print(f"load     {compare.load_average()} after round {i + 1}", flush=True)
    seconds = {k: statistics.median(r[k] for r in rounds if k in r) for k in rounds[0]}
    flops = {r["name"]: r["median_seconds"] * r["gflops"] * 1e9 for r in rows}
    print(f"timing   median of {args.repeats} runs after one warm-up, median of {args.rounds} rounds\n")
    header = ["name", "shape", "wgnn cpu f32", "torch cpu", "wgnn / torch"]
    table = []
    for r in rows:
        ours, theirs = seconds[(r["name"], "wgnn cpu f32")], seconds[(r["name"], "torch cpu")]
        cell = lambda s: f"{s * 1e3:.2f} ms ({flops[r['name']] / s / 1e9:.0f})" if s > 0 else "—"
        table.append([r["name"], r["shape"], cell(ours), cell(theirs), f"{ours / theirs:.2f}" if theirs > 0 else "—"])
    print("median time (GFLOP/s in brackets; below 1 in the last column: wgnn is faster)")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in [header] + table:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
