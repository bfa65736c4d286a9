#!/usr/bin/env bash
# Issues 6 and 15's NVIDIA measurements in one command, for a session lent a GPU (device tool
# `run`, carry [".gl", ".device"], after benches/nvidia/prepare.sh here). About 5–7 minutes: the
# GPU test suites, `wgnn bench` and PyTorch CUDA side by side (compare.py --shapes xlarge:
# 4096³ with TF32 off), and the 400-iteration L-BFGS autoencoder on all 60,000 images. Every
# output lands in $OUT (log.txt, compare.txt, bench.json, train60k.json); a step that fails
# is logged and the next one still runs. Read $OUT/log.txt first. Issue 15 adds the layer
# kernels' suite (gpu_layers) and a CNN training run, GPU then CPU, with wall times (cnn_*.json).
# Issue 16 adds the recurrent suite (gpu_rnn; the bench's recurrent rows time the row-MNIST
# LSTM-128 step at batch 128 and the char LSTM-256 step, T = 64, batch 32, GPU and CPU f32) and
# one epoch of row-by-row MNIST with an LSTM of 128, GPU then CPU, with wall times (lstm_*.json).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/wgnn-out}
mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/log.txt"; }
step() { "$@" 2>&1 | tee -a "$OUT/log.txt"; echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"; }

if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
# prepare.sh ships the test binaries gzipped (the carry limit).
for f in .device/tests/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
data=.device/data
export WGNN_DATA_DIR=$data
# Smaller settings for a dry run on lavapipe: SHAPES=small BATCH=256 TRAIN_ARGS="--limit 1000 --iterations 5"
# CNN_ARGS="--limit 200" LSTM_ARGS="--limit 256".
SHAPES=${SHAPES:-xlarge}
BATCH=${BATCH:-10000,60000}
TRAIN_ARGS=${TRAIN_ARGS:-}
CNN_ARGS=${CNN_ARGS:---limit 4000}
LSTM_ARGS=${LSTM_ARGS:---limit 12800}

log "machine"
step nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step .device/wgnn devices

log "GPU tests (the suites CI runs on lavapipe, here on the real adapter)"
for t in gpu_kernels gpu_parity gpu_update gpu_data gpu_layers gpu_rnn; do
    step timeout 180 ".device/tests/$t" --quiet
done
step timeout 120 .device/tests/gpu --bench

log "wgnn bench and PyTorch (CPU and CUDA, TF32 off) side by side"
PYTHONUNBUFFERED=1 timeout 300 python3 benches/compare/compare.py --wgnn .device/wgnn --shapes "$SHAPES" \
    --backend both --batch "$BATCH" --data mnist:$data/mnist --repeats 5 --rounds 2 2>&1 | tee "$OUT/compare.txt" >> "$OUT/log.txt"
echo "exit ${PIPESTATUS[0]}" >> "$OUT/log.txt"
timeout 120 .device/wgnn bench --json --shapes "$SHAPES" --backend gpu --repeats 5 --batch "$BATCH" \
    --data mnist:$data/mnist > "$OUT/bench.json" 2>> "$OUT/log.txt"
echo "exit $? (wgnn bench --json)" >> "$OUT/log.txt"

log "400 L-BFGS iterations, 784-196-784 sparse autoencoder, all 60,000 images, GPU backend"
rm -rf /tmp/train60k
start=$(date +%s%N)
# shellcheck disable=SC2086 # TRAIN_ARGS is a list of flags
step timeout 180 .device/wgnn train --data mnist:$data/mnist --hidden 196 --sparsity 0.1 --weight-decay 3e-3 \
    --backend gpu --quiet --out /tmp/train60k $TRAIN_ARGS
echo "wall $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$OUT/log.txt"
cp /tmp/train60k/metrics.json "$OUT/train60k.json" 2>/dev/null

# One epoch of the LeNet-like CNN (conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2,
# dense 500 relu, softmax; Adam η = 1e-3, batch 64) on the first 4,000 MNIST images, with θ
# and the update on the device; then the same on the CPU backend (f32, all cores) for the ratio.
for backend in gpu cpu; do
    log "wgnn train cnn, 1 epoch, $backend backend"
    rm -rf "/tmp/cnn_$backend"
    start=$(date +%s%N)
    # shellcheck disable=SC2086 # CNN_ARGS is a list of flags
    step timeout 300 .device/wgnn train cnn --data mnist:$data/mnist --iterations 1 --backend $backend \
        --quiet --out "/tmp/cnn_$backend" $CNN_ARGS
    echo "wall $(( ($(date +%s%N) - start) / 1000000 )) ms (cnn, $backend)" | tee -a "$OUT/log.txt"
    cp "/tmp/cnn_$backend/metrics.json" "$OUT/cnn_$backend.json" 2>/dev/null
done
# One epoch of row-by-row MNIST (28 steps of 28 pixels) with an LSTM of 128 and a softmax at
# the last step (Adam, batch 128: `wgnn train lstm`'s defaults) on the first 12,800 images
# (100 steps), θ and the update on the device; then the same on the CPU backend (f32).
for backend in gpu cpu; do
    log "wgnn train lstm --sequence rows, 1 epoch, $backend backend"
    rm -rf "/tmp/lstm_$backend"
    start=$(date +%s%N)
    # shellcheck disable=SC2086 # LSTM_ARGS is a list of flags
    step timeout 300 .device/wgnn train lstm --data mnist:$data/mnist --sequence rows --iterations 1 \
        --backend $backend --quiet --out "/tmp/lstm_$backend" $LSTM_ARGS
    echo "wall $(( ($(date +%s%N) - start) / 1000000 )) ms (row-MNIST lstm 128, $backend)" | tee -a "$OUT/log.txt"
    cp "/tmp/lstm_$backend/metrics.json" "$OUT/lstm_$backend.json" 2>/dev/null
done
log "done"
