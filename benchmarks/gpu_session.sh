#!/usr/bin/env bash
# Everything this project checks on a lent GPU, in one call of the device tool (a lease is ~15 minutes in all):
#   1. benchmarks/bench_gpu.py, alone on the machine: per-stage CPU vs CUDA, the fused kernels vs the bytes floor;
#   2. the suite's CUDA tests with TRITON_INTERPRET=0 (compiled Triton kernels, the GPU-resident frame, training);
#   3. encoder training runs side by side on the GPU (spam-stream train --device cuda --minutes M), started with
#      the tests and fitted to end BUDGET seconds after this script starts; their run folders come back as runs.tgz.
# Needs BSDS500 train + val (and test/100007.jpg for the benchmark) under $BSDS: a carried copy, since ../shared does
# not travel:  mkdir -p .bsds && cp -r ../shared/datasets/bsds500/data .bsds/  (test split optional).
# usage (device tool): OUT=$OUT BUDGET=560 bash benchmarks/gpu_session.sh        carry: [".bsds"]
set -u
start=$(date +%s)
BUDGET=${BUDGET:-560}
BSDS=${BSDS:-.bsds}
OUT=${OUT:-out/gpu_session}
RUNS=/tmp/spam_runs
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # benchmarks/ scripts import spam_stream
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, numba; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. bench_gpu ($(left) s left)"
timeout 200 python3 benchmarks/bench_gpu.py --repeats 5 --image "$BSDS/data/images/test/100007.jpg" 2>&1 | tee "$OUT/bench_gpu.txt"

minutes=$(python3 -c "print(round(max(0.5, ($(left) - 50) / 60), 2))")
echo "== 3. training, $minutes minutes each ($(left) s left)"
train() {  # name, extra args: the selection rule of issue 11 (val ASA at GR >= 0.555, lambda_s 9.25, 50 val images)
    local name=$1; shift
    timeout $(( $(left) - 20 )) python3 -c 'import sys; from spam_stream.cli import console_main; sys.exit(console_main())' \
        train --device cuda --minutes "$minutes" --root "$BSDS" --out "$RUNS/$name" --spatial-scale 9.25 \
        --min-gr 0.555 --val-images 50 --val-superpixels 400 --val-every 500 --batch 6 --threads 3 "$@" \
        >"$RUNS/$name.log" 2>&1 &
}
train w64 --width 64
train w32 --width 32
train ft32 --width 32 --init spam_stream/weights/spam_encoder.pt --lr 3e-4

echo "== 2. CUDA tests ($(left) s left)"
TRITON_INTERPRET=0 timeout $(( $(left) - 30 )) python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_triton_kernels.py tests/test_gpu_frame.py tests/test_training.py tests/test_seeding.py \
    tests/test_kernels_cpu.py 2>&1 | tee "$OUT/pytest.txt" | tail -40

wait
echo "== runs ($(left) s left)"
for f in "$RUNS"/*.log; do echo "-- $f"; tr '\r' '\n' <"$f" | grep -v "step/s\|s/step\|img/s\|^ *$" | tail -20; done
tar czf "$OUT/runs.tgz" -C "$RUNS" .
ls -la "$OUT"
