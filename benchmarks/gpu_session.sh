#!/usr/bin/env bash
# Everything this project checks on a lent GPU, in one call of the device tool (a lease is ~15 minutes in all):
#   1. benchmarks/bench_gpu.py, alone on the machine: per-stage CPU vs CUDA, the fused kernels vs the bytes floor;
#   2. the suite's CUDA tests with TRITON_INTERPRET=0 (compiled Triton kernels, the GPU-resident frame, training);
#   3. encoder training runs side by side on the GPU (spam-stream train --device cuda --minutes M), started with
#      the tests and fitted to end BUDGET seconds after this script starts; their run folders come back as runs.tgz.
# Needs BSDS500 train + val + test under $BSDS: a carried copy, since ../shared does not travel:
#   mkdir -p .bsds && cp -r ../shared/datasets/bsds500/data .bsds/
# usage (device tool): OUT=$OUT BUDGET=560 bash benchmarks/gpu_session.sh        carry: [".bsds", ".wheels"]
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

# issue 22: what a prior costs on the GPU (targets on an H100: segment() 481x321 <= 10 ms and 1080p <= 20 ms, with or
# without a 25-object prior), then the 1080p stream with FastSAM (>= 30 frames/s, prior and clustering overlapped).
# The device machine has no PyAV or ultralytics: carry their wheels (pip download --no-deps -d .wheels av ultralytics
# ultralytics-thop) in ".wheels"; without them bench_stream is skipped.
echo "== 1a. host round trips per frame on CUDA, counted and as set_sync_debug_mode reports them ($(left) s left)"
timeout 90 python3 benchmarks/bench_host_syncs.py --device cuda 2>&1 | tee "$OUT/bench_host_syncs.txt"
echo "== 1b. bench_prior_cost, CUDA ($(left) s left)"
for enc in none default; do
    timeout 120 python3 benchmarks/bench_prior_cost.py --device cuda --encoder $enc --images 10 --repeats 5 \
        --root "$BSDS" 2>&1 | tee -a "$OUT/bench_prior_cost.txt"
done
if [ -d .wheels ]; then pip install -q --no-index --find-links .wheels av ultralytics ultralytics-thop 2>&1 | tail -2; fi
if python3 -c "import av, ultralytics" 2>/dev/null; then
    echo "== 1c. bench_stream, CUDA ($(left) s left)"
    timeout 240 python3 benchmarks/bench_stream.py --devices cuda --frames 60 --io-frames 30 --no-write-costs \
        --trace "$OUT/stream_trace.json" 2>&1 | tee "$OUT/bench_stream.txt"
fi

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
    tests/test_kernels_cpu.py tests/test_tiles.py tests/test_graph.py 2>&1 | tee "$OUT/pytest.txt" | tail -40

wait
echo "== runs ($(left) s left)"
for f in "$RUNS"/*.log; do echo "-- $f"; tr '\r' '\n' <"$f" | grep -v "step/s\|s/step\|img/s\|^ *$" | tail -20; done
tar czf "$OUT/runs.tgz" -C "$RUNS" .
ls -la "$OUT"
