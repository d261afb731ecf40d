#!/usr/bin/env bash
# The GPU measurements BENCHMARKS.md still lists as open ("Still to measure on a GPU"), in one command that ends
# within a time budget, most decisive first, so that a short loan of a GPU settles as much as it can:
#
#     MNIST_DATA_DIR=/path/to/data bash benchmarks/gpu_checks.sh [LOG_DIR] [BUDGET_SECONDS] [RUNS_DIR]
#
# LOG_DIR (default runs/gpu-checks/logs) gets one log per step (and per seed of steps 4 and 6) and each seeds step's
# figure; the seeds' runs, checkpoints and summaries, go to RUNS_DIR (default runs/gpu-checks). Every step is cut
# off where the budget (default 540 s) runs out, a step that fails does not stop the others, and the tables are
# printed again at the end so that the last screenful holds every result. Run from the repository root.
set -u
log_dir=${1:-runs/gpu-checks/logs}
budget=${2:-540}
runs=${3:-runs/gpu-checks}
python=${PYTHON:-python3}  # the interpreter that has torch (a venv's, once activated)
mkdir -p "$log_dir" "$runs"
export PYTHONUNBUFFERED=1
deadline=$(($(date +%s) + budget))

step() {  # step NAME LIMIT_SECONDS COMMAND...: run COMMAND for at most LIMIT seconds, or what is left of the budget
    local name=$1 limit=$2 left=$((deadline - $(date +%s)))
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        echo "=== $name: skipped, the budget is spent" | tee "$log_dir/$name.log"
        return
    fi
    echo "=== $name (at most $limit s): $*"
    local started=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee "$log_dir/$name.log"
    local code=${PIPESTATUS[0]}
    echo "=== $name: exit $code after $(($(date +%s) - started)) s$( ((code == 124)) && echo ", cut off at its limit")" | tee -a "$log_dir/$name.log"
}

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv,noheader
  "$python" -c "import sys, torch, torchvision; print('Python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
  date -u; } 2>&1 | tee "$log_dir/0-machine.log"
# 1. That a graphed training step computes the plain model's gradients (skipped without CUDA, so never run in CI).
step 1-graphed-step 90 "$python" -m pytest -q -p no:cacheprovider tests/test_model.py
# 2. Throughput of today's code, torch.compile included (its first step, compiling, timed apart: on a fresh machine cold).
step 2-bench 150 "$python" benchmarks/bench.py --compile
# 3. train.py --compile end to end: accuracy, and whether compiling pays for itself in the whole command's time. Seed 0
# compiles what bench.py did not (the epoch's shorter last batch); seeds 1 and 2 read everything from inductor's cache.
step 3-seeds-compile 200 "$python" benchmarks/seeds.py --out-dir "$runs/compile" -- --compile
# Seeds 0, 1 and 2 of train.py with the given flags at once on the GPU, each logging to DIR/parallel-seedN.log, then
# one seeds.py call that only gathers them into DIR/summary.md: for a question of accuracy alone, as their times,
# sharing the GPU, count for nothing. Usage: bash -c "$side_by_side" PYTHON DIR TRAIN_FLAGS...
side_by_side='mkdir -p "$1"
    for s in 0 1 2; do
        "$0" benchmarks/seeds.py --seeds $s --out-dir "$1" -- "${@:2}" > "$1/parallel-seed$s.log" 2>&1 &
    done
    wait
    "$0" benchmarks/seeds.py --out-dir "$1" -- "${@:2}"'
# 4. Whether the 10-epoch schedule still reaches 99.70% at batch 1024, where training runs nearer 60,000 images/s
# (bench.py times the batch).
step 4-seeds-batch-1024 150 bash -c "$side_by_side" "$python" "$runs/b1024" --batch-size 1024
# 5. The default recipe's accuracy and times on this GPU.
step 5-seeds-default 200 "$python" benchmarks/seeds.py --out-dir "$runs/default"
# 6. train.py --photometric on CUDA, where its noise comes from a CUDA generator: that it runs, and whether its clean
# accuracy over 3 seeds matches the default's, as seed 0's did on the CPU (then it could be the default).
step 6-seeds-photometric 120 bash -c "$side_by_side" "$python" "$runs/photometric" --photometric

echo; echo "=== results"
cat "$log_dir/0-machine.log"
grep -h -E "^=+ .*[0-9]+ (passed|failed|skipped|error)|[0-9]+ (passed|failed)" "$log_dir/1-graphed-step.log" | tail -n 1
echo "--- 2-bench"
grep -h -E "^\||first training step" "$log_dir/2-bench.log"
for name in compile b1024 default photometric; do
    summary=$runs/$name/summary.md
    shared=$([ -f "$runs/$name/parallel-seed0.log" ] && echo ", run side by side: accuracy only")
    [ -f "$summary" ] && { echo "--- seeds, $name$shared"; grep -v "^(train.py wall s" "$summary"; }
    [ -f "$runs/$name/seeds.png" ] && cp "$runs/$name/seeds.png" "$log_dir/seeds-$name.png"
    for log in "$runs/$name"/parallel-seed*.log; do
        [ -f "$log" ] && cp "$log" "$log_dir/$name-$(basename "$log")"
    done
done
exit 0
