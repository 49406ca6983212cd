#!/usr/bin/env bash
# The CPU speed targets of issues 22-24, one after the other on an otherwise idle machine (no other job: the
# pipelined-vs-sequential ratios and the prior's cost are only meaningful there). Each step prints the load average
# before and after; outputs go to $OUT (default out/idle/). About 30-40 minutes on the 2-core development VM.
#   bash benchmarks/idle_session.sh [step ...]      steps: prior stream pipeline graph temporal iterations cli
set -u
OUT=${OUT:-out/idle}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-.venv/bin/python}
steps=${*:-prior stream pipeline graph temporal iterations}
run() {  # name, command...
    local name=$1; shift
    echo "== $name: $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/$name.txt"
    "$@" 2>&1 | grep -v "it/s\]\|frame/s\]\|img/s\]\|s/it\]" | tee -a "$OUT/$name.txt"
    echo "-- load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/$name.txt"
}
for step in $steps; do
    case $step in
        prior)
            run prior $PY benchmarks/bench_prior_cost.py --encoder none --images 20 --repeats 5
            run prior $PY benchmarks/bench_prior_cost.py --encoder default --images 20 --repeats 3 ;;
        stream)
            run stream $PY benchmarks/bench_stream.py --frames 8 --io-frames 60 ;;
        pipeline)
            run pipeline $PY benchmarks/bench_pipeline.py --frames 40 --encoder default none --repeats 5 \
                --schedules pool stages
            run pipeline $PY benchmarks/bench_pipeline.py --frames 24 --size 1280x720 --no-fastsam --repeats 3
            run pipeline $PY benchmarks/bench_pipeline.py --frames 120 --no-fastsam --repeats 2
            run pipeline $PY benchmarks/bench_pipeline.py --frames 60 --size 1280x720 --no-fastsam --repeats 2 ;;
        cli)
            run cli $PY benchmarks/bench_cli_video.py --sizes 640x360 1280x720 --frames 40 --runs 3 ;;
        graph)
            run graph $PY benchmarks/bench_graph.py --repeats 5 --batch 64 ;;
        temporal)
            run temporal $PY benchmarks/bench_temporal.py --images 5 --frames 12 ;;
        iterations)
            run iterations $PY benchmarks/bench_iterations.py --limit 50 ;;
    esac
done
