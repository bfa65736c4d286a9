"""PyTorch's nn.LSTM trained on a text as wgnn trains its character model (issue 16 §5).

The same recipe as `wgnn train lstm --data text:FILE` with its defaults, step for step:

- text: UTF-8 (plain or gzip); the vocabulary is the sorted distinct characters of the whole
  file; the last round(N · 0.1) characters are held out (round half away from zero, as Rust).
- training: `batch` streams of L = ⌊(N_train − 1)/batch⌋ consecutive characters, stream j
  starting at j·L; update k reads window k (characters j·L + k·T … + T − 1, each predicting
  the next) of every stream; the state (h, c) is carried from one window to the next, the
  gradient is not (truncated BPTT); a new pass over the text (every ⌊L/T⌋ updates) starts from
  a zero state.
- network: one-hot characters → LSTM (gate order i, f, g, o) → a linear layer → softmax at
  every step; cost = the mean cross-entropy over batch · T characters (nats).
- update: the gradient clipped to global norm τ, then Adam (β = 0.9, 0.999, ε = 1e-8).
- held-out: consecutive windows of T characters, each from a zero state (the last
  N − 1 − W·T characters, fewer than T, not scored); bits per character = mean cross-entropy
  over the scored characters / ln 2.
- initialisation (`--init`): `wgnn` draws as wgnn's `Init::Uniform` does (every weight matrix
  uniform in ±√(6/(rows + cols + 1)) with W_ih and W_hh one 4h × (n + h) block, so the same
  r for both; every bias 0, `bias_hh` held at 0), from torch's generator; `torch` keeps
  PyTorch's own (U(±1/√h) for the LSTM's weights and both its biases, U(±1/√h) for the
  linear layer's).

Differences that remain: float32 on both sides but different kernels (the bits differ);
torch's clip_grad_norm_ scales by τ/(‖g‖ + 1e-6), wgnn by τ/‖g‖; torch's Adam runs in f32,
wgnn's in f64 on an f64 θ rounded to f32 for each step. None of these moves bits per
character by more than noise.

    python3 benches/compare/lstm_char.py --data ../shared/data/text/kjv.txt.gz \
        [--steps 2000] [--eval-every 500] [--init wgnn|torch] [--threads 2] [--seed 1]

Prints one line per evaluation and a final JSON line. wgnn's side:
`wgnn train lstm --data text:../shared/data/text/kjv.txt.gz` (the same defaults).
"""

import argparse
import gzip
import json
import math
import time


def read_text(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def split(text, held_out):
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in text]
    n = len(ids)
    held = int(math.floor(n * held_out + 0.5))  # Rust's f64::round: half away from zero
    return chars, ids[: n - held], ids[n - held:]


def wgnn_init(torch, lstm, head, generator):
    """wgnn's Init::Uniform: W uniform in ±√(6/(rows + cols + 1)) per layer, biases 0."""
    h4, n = lstm.weight_ih_l0.shape
    h = lstm.weight_hh_l0.shape[1]
    with torch.no_grad():
        r = math.sqrt(6.0 / (h4 + n + h + 1))  # one 4h × (n + h) block in wgnn's θ
        for w in (lstm.weight_ih_l0, lstm.weight_hh_l0):
            w.copy_((torch.rand(w.shape, generator=generator, dtype=torch.float64) * 2 - 1) * r)
        k, hidden = head.weight.shape
        r = math.sqrt(6.0 / (k + hidden + 1))
        head.weight.copy_((torch.rand(head.weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * r)
        for b in (lstm.bias_ih_l0, lstm.bias_hh_l0, head.bias):
            b.zero_()
    lstm.bias_hh_l0.requires_grad_(False)  # one bias per layer, as wgnn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a text file (plain or .gz)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--bptt", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--clip-norm", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--held-out", type=float, default=0.1)
    ap.add_argument("--init", choices=["wgnn", "torch"], default="wgnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    chars, train, held = split(read_text(args.data), args.held_out)
    vocab, T, batch = len(chars), args.bptt, args.batch_size
    print(f"torch {torch.__version__}, {args.threads} threads; {len(train) + len(held)} characters, "
          f"{vocab} distinct; {len(train)} for training, {len(held)} held out; init {args.init}", flush=True)
    lstm = torch.nn.LSTM(vocab, args.hidden, batch_first=True)
    head = torch.nn.Linear(args.hidden, vocab)
    if args.init == "wgnn":
        wgnn_init(torch, lstm, head, torch.Generator().manual_seed(args.seed))
    params = [p for p in list(lstm.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    train_t = torch.tensor(train, dtype=torch.long)
    held_t = torch.tensor(held, dtype=torch.long)
    stream_len = (len(train) - 1) // batch
    per_epoch = stream_len // T
    stream_starts = torch.arange(batch) * stream_len
    offsets = torch.arange(T)

    def windows(ids, starts):
        pos = starts[:, None] + offsets[None, :]
        x = torch.nn.functional.one_hot(ids[pos], vocab).float()
        return x, ids[pos + 1]

    def held_out_bits():
        starts = torch.arange((len(held) - 1) // T) * T
        nats = 0.0
        with torch.no_grad():
            for chunk in starts.split(256):
                x, y = windows(held_t, chunk)
                seq, _ = lstm(x)  # a zero state per window
                z = head(seq.reshape(-1, args.hidden))
                nats += torch.nn.functional.cross_entropy(z, y.reshape(-1), reduction="sum").item()
        return nats / (len(starts) * T) / math.log(2), len(starts)

    state = None
    history = []
    started = time.perf_counter()
    train_seconds = 0.0
    for step in range(1, args.steps + 1):
        k = (step - 1) % per_epoch
        if k == 0:
            state = None
        t0 = time.perf_counter()
        x, y = windows(train_t, stream_starts + k * T)
        seq, (h, c) = lstm(x, state)
        state = (h.detach(), c.detach())
        z = head(seq.reshape(-1, args.hidden))
        loss = torch.nn.functional.cross_entropy(z, y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip_norm)
        opt.step()
        train_seconds += time.perf_counter() - t0
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            bits, windows_scored = held_out_bits()
            history.append({"step": step, "train_bits_per_character": loss.item() / math.log(2),
                            "held_out_bits_per_character": bits})
            print(f"step {step:>6}  train {loss.item() / math.log(2):.4f} bits/char  held-out {bits:.4f} "
                  f"bits/char ({windows_scored} windows of {T}, zero state each; "
                  f"{time.perf_counter() - started:.1f} s)", flush=True)
    print(json.dumps({"side": "torch", "init": args.init, "steps": args.steps,
                      "held_out_bits_per_character": history[-1]["held_out_bits_per_character"],
                      "ms_per_update": 1e3 * train_seconds / args.steps, "history": history}))


if __name__ == "__main__":
    main()
