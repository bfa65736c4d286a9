"""wgnn's LSTM training step beside PyTorch's nn.LSTM on the CPU, in one run (issue 16 §6).

One training step = forward over T steps, cross-entropy, backpropagation through time and an
Adam update, float32, at the same shapes on both sides:

- row-by-row MNIST: batch 128, 28 steps of 28 pixels, LSTM 128, softmax 10 at the last step;
- the character model: batch 32, 64 steps of one-hot characters (73), LSTM 256, softmax 73 at
  every step.

wgnn runs `target/release/examples/lstm_step` (build it with
`cargo build --release --example lstm_step`); PyTorch runs here with `torch.set_num_threads`
(default: all cores). Rounds alternate which side goes first (`--rounds`, default 3), each side
reports the median of 5 timed runs of 10 steps per round, and the table shows each side's median
over rounds, with the load average before and after, so a busy machine shows itself.

    python3 benches/compare/lstm.py [--rounds 3] [--threads 2] [--wgnn PATH]
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

CASES = {  # name: (batch, steps, features, hidden, classes, per_step)
    "row-MNIST LSTM-128, batch 128": (128, 28, 28, 128, 10, False),
    "char LSTM-256, T 64, batch 32": (32, 64, 73, 256, 73, True),
}
TIMED = 10


def torch_step_ms(torch, batch, steps, n, hidden, k, per_step):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(n, hidden, batch_first=True)
    head = torch.nn.Linear(hidden, k)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    if per_step:
        x = torch.nn.functional.one_hot(torch.randint(0, n, (batch * TIMED, steps)), n).float()
        y = torch.randint(0, k, (batch * TIMED, steps))
    else:
        x = torch.rand(batch * TIMED, steps, n)
        y = torch.randint(0, k, (batch * TIMED,))

    def epoch():
        start = time.perf_counter()
        for i in range(TIMED):
            xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
            seq, _ = lstm(xb)
            z = head(seq.reshape(-1, hidden)) if per_step else head(seq[:, -1, :])
            loss = torch.nn.functional.cross_entropy(z, yb.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / TIMED * 1e3

    epoch()
    return statistics.median(epoch() for _ in range(5))


def wgnn_step_ms(binary, batch, steps, n, hidden, k, per_step):
    args = [str(binary), str(batch), str(steps), str(n), str(hidden), str(k)]
    if per_step:
        args.append("per-step")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_step"]


def load():
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wgnn", help="the lstm_step example (default: target/release/examples/lstm_step)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", choices=["mnist", "char"], help="one case only")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    binary = Path(args.wgnn) if args.wgnn else target / "release" / "examples" / "lstm_step"
    import torch

    torch.set_num_threads(args.threads)
    env_threads = {"RAYON_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    print(f"torch {torch.__version__}, {args.threads} threads each; wgnn {binary}")
    cases = {k: v for k, v in CASES.items() if not args.only or args.only in k.lower()}
    results = {name: ([], []) for name in cases}
    for r in range(args.rounds):
        print(f"round {r + 1}: load {load()}", flush=True)
        for name, shape in cases.items():
            sides = [("wgnn", lambda: wgnn_step_ms(binary, *shape)), ("torch", lambda: torch_step_ms(torch, *shape))]
            if r % 2:
                sides.reverse()
            for who, run in sides:
                ms = run()
                results[name][0 if who == "wgnn" else 1].append(ms)
                print(f"  {name:32s} {who:5s} {ms:8.2f} ms per step", flush=True)
    print(f"load after: {load()}")
    print(f"\n| step (f32, {args.threads} threads) | wgnn ms | PyTorch ms | wgnn / PyTorch |")
    print("|---|---:|---:|---:|")
    for name, (ours, theirs) in results.items():
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}× |")


if __name__ == "__main__":
    main()
