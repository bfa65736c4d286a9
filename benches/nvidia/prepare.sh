#!/usr/bin/env bash
# Prepares, on this (GPU-less) machine, everything benches/nvidia/run.sh needs on a lent
# NVIDIA machine, which has no Rust toolchain and no network: the release `wgnn`, the GPU test
# binaries and the GPU bench (stripped), the MNIST files, and the Vulkan loader's Debian
# packages. They go to .device/ and .gl/, both listed in .git/info/exclude, so that the device
# tool carries them only when asked: `run` with carry [".gl", ".device"] (~40 MiB of the 64 it may carry).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${WGNN_DATA_DIR:-../shared/data}
[ -f "$data/mnist/train-images-idx3-ubyte.gz" ] || { echo "no MNIST under $data/mnist: set WGNN_DATA_DIR" >&2; exit 1; }

# (git rev-parse finds the exclude file in a worktree too, where .git is a file.)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for d in /.device/ /.gl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"; done
rm -rf .device && mkdir -p .device/tests .device/data/mnist

cargo build --release
cp target/release/wgnn .device/wgnn
# Test and bench executables, as cargo names them (one JSON line per artifact).
cargo test --release --no-run --test gpu_kernels --test gpu_parity --test gpu_update --test gpu_data --test gpu_layers \
    --test gpu_rnn \
    --bench gpu \
    --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' \
  | while read -r name exe; do cp "$exe" ".device/tests/$name"; done
strip .device/wgnn .device/tests/*
# Six test binaries are ~45 MiB stripped, past the device tool's 64 MiB carry with the rest;
# gzip makes them ~20 (run.sh inflates them first).
gzip -9 -f .device/tests/*
cp "$data"/mnist/train-*.gz .device/data/mnist/

if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    # The machine's image has the NVIDIA driver but maybe no Vulkan loader (device README).
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update -qq
    (cd .gl && apt-get $o download libvulkan1)
fi
du -sh .device .gl
echo "ready: call the device tool's run with carry [\".gl\", \".device\"] and command 'bash benches/nvidia/run.sh'"
