#!/usr/bin/env python3
"""wgnn beside scikit-learn's MLPClassifier on MNIST (60,000 training, 10,000 test images).

scikit-learn with its defaults — 100 ReLU hidden units, Adam (learning rate 1e-3, beta1 0.9,
beta2 0.999, epsilon 1e-8), alpha 1e-4, batch min(200, n), at most 200 epochs, tol 1e-4,
n_iter_no_change 10, shuffled every epoch, seed --seed — against `wgnn train mlp` given the
same settings as flags (--hidden 100 --activation relu --optimizer adam --alpha 1e-4
--batch-size 200 --iterations 200 --tol 1e-4 --n-iter-no-change 10 --learning-rate 1e-3
--seed S). Both see the pixels scaled to [0, 1] and stop on the training loss alone (no
validation split). Prints the test accuracy, epochs and wall time of each, the accuracy gap
and the time ratio, and the load average around each run.

Usage: /work/pyenv/bin/python benches/compare/sklearn_mlp.py [--wgnn target/release/wgnn]
       [--data mnist:../shared/data/mnist] [--seed 0] [--backend cpu] [--order wgnn-first]
scikit-learn stays outside the repository (pip install scikit-learn); see README.md here.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (find_wgnn, load_average, MNIST reading)


def read_mnist(folder, split):
    """Images (float32 in [0, 1], one row each) and labels of MNIST's `train` or `t10k` split."""
    import gzip

    def raw(name):
        for n in (name, name + ".gz"):
            p = Path(folder) / n
            if p.is_file():
                return (gzip.open if n.endswith(".gz") else open)(p, "rb").read()
        sys.exit(f"error: {folder} holds no {name}[.gz]")

    images = raw(f"{split}-images-idx3-ubyte")
    count, h, w = (int.from_bytes(images[i : i + 4], "big") for i in (4, 8, 12))
    x = np.frombuffer(images, dtype=np.uint8, offset=16, count=count * h * w).reshape(count, h * w)
    y = np.frombuffer(raw(f"{split}-labels-idx1-ubyte"), dtype=np.uint8, offset=8, count=count)
    return (x / np.float32(255)).astype(np.float32), y.astype(np.int64)


def run_sklearn(folder, seed):
    from sklearn.neural_network import MLPClassifier
    import sklearn

    x, y = read_mnist(folder, "train")
    xt, yt = read_mnist(folder, "t10k")
    clf = MLPClassifier(random_state=seed)  # every default: (100,), relu, adam, alpha 1e-4, …
    start = time.perf_counter()
    clf.fit(x, y)
    seconds = time.perf_counter() - start
    accuracy = float((clf.predict(xt) == yt).mean())
    return {"who": f"scikit-learn {sklearn.__version__}", "accuracy": accuracy, "epochs": clf.n_iter_,
            "seconds": seconds, "final_loss": float(clf.loss_)}


def run_wgnn(wgnn, folder, seed, backend):
    out = Path(tempfile.mkdtemp(prefix="wgnn-sklearn-")) / "run"
    cmd = [str(wgnn), "train", "mlp", "--data", f"mnist:{folder}", "--test-data", f"mnist:{folder}",
           "--hidden", "100", "--activation", "relu", "--optimizer", "adam", "--learning-rate", "1e-3",
           "--alpha", "1e-4", "--batch-size", "200", "--iterations", "200", "--tol", "1e-4",
           "--n-iter-no-change", "10", "--seed", str(seed), "--backend", backend, "--out", str(out)]
    print("running  " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"wgnn failed ({done.returncode}):\n{done.stderr.strip()}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"who": f"wgnn ({backend})", "accuracy": metrics.get("test_accuracy"),
            "epochs": metrics.get("iterations"), "seconds": seconds,
            "final_loss": metrics.get("final_cost"), "metrics": metrics, "stdout": done.stdout}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wgnn", help="the wgnn binary (default: target/release/wgnn)")
    ap.add_argument("--data", default="mnist:../shared/data/mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--order", choices=["wgnn-first", "sklearn-first"], default="wgnn-first")
    args = ap.parse_args()
    if not args.data.startswith("mnist:"):
        sys.exit(f"error: --data {args.data}: only mnist:DIR is understood")
    folder = args.data[len("mnist:") :]
    wgnn = compare.find_wgnn(args.wgnn)
    print(f"threads  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs")
    runs = []
    order = ["wgnn", "sklearn"] if args.order == "wgnn-first" else ["sklearn", "wgnn"]
    for who in order:
        before = compare.load_average()
        r = run_wgnn(wgnn, folder, args.seed, args.backend) if who == "wgnn" else run_sklearn(folder, args.seed)
        r["load"] = f"{before} → {compare.load_average()}"
        print(f"{r['who']:<22} test accuracy {100 * r['accuracy']:.2f}%  epochs {r['epochs']}  "
              f"{r['seconds']:.1f} s  final loss {r['final_loss']}  load {r['load']}", flush=True)
        runs.append(r)
    ours = next(r for r in runs if r["who"].startswith("wgnn"))
    theirs = next(r for r in runs if not r["who"].startswith("wgnn"))
    gap = 100 * (ours["accuracy"] - theirs["accuracy"])
    print(f"accuracy wgnn − scikit-learn = {gap:+.2f} points (target: within ±0.5)")
    print(f"time     wgnn / scikit-learn = {ours['seconds'] / theirs['seconds']:.2f}")
    print(json.dumps({k: {kk: vv for kk, vv in r.items() if kk not in ("metrics", "stdout")} for k, r in
                      zip(("wgnn", "sklearn"), (ours, theirs))}))


if __name__ == "__main__":
    main()
