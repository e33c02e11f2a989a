#!/usr/bin/env bash
# The GPU check: the CUDA tests, the GPU smoke runs of both GPU presets and the views and loss benchmarks on the
# GPU, everything into one log. Sized for one recent GPU (an H200) in about 10 minutes: each part has its own
# time limit (seconds, below; they add up to 600) and a part that fails or runs out of time does not stop the
# others. Needs a Python with the project installed (pip install -e '.[dev]'; kornia is optional).
#
#     bash benchmarks/gpu_check.sh                 # writes gpu_check.log in the repository root
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh /tmp/gpu.log
#
# Parts and limits:
#   env      15 s   nvidia-smi, torch and CUDA versions
#   tests   200 s   pytest tests/test_cuda.py (both GPU presets on synthetic data, fp16 + scaler, resume, views
#                   CPU == GPU) and the CUDA test of tests/test_views.py
#   smoke-c 120 s   gpu_smoke.py cifar10-resnet18: the recipe (batch 256, bf16), 300 steps
#   smoke-i 150 s   gpu_smoke.py imagenet-resnet50 at batch 256 (the recipe's 2048 is 8 x 256 GPUs' share),
#                   100 steps on 2048 synthetic 256 px images
#   views    45 s   views.py --device cuda: ImageViews (and kornia if installed) on the GPU, PIL on the CPU
#   loss     70 s   loss.py --device cuda: ours vs the official formulation at the paper's D = 8192
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=$(realpath -m "${1:-gpu_check.log}")
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
: >"$LOG"
SUMMARY=""

part() {  # part NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== [$name] limit ${limit}s: $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    local took=$(($(date +%s) - start))
    [ "$rc" -eq 124 ] && echo "=== [$name] TIMED OUT after ${limit}s" | tee -a "$LOG"
    echo "=== [$name] exit $rc in ${took}s" | tee -a "$LOG"
    SUMMARY="$SUMMARY$name: exit $rc, ${took}s"$'\n'
}

echo "=== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" |
    tee -a "$LOG"
part env 15 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'"
part tests 200 "$PY" -m pytest -q -rs -p no:cacheprovider -m "cuda or not cuda" --timeout 190 \
    tests/test_cuda.py "tests/test_views.py::test_cpu_generator_gives_the_same_views_on_cuda"
part smoke-c 120 "$PY" benchmarks/gpu_smoke.py --preset cifar10-resnet18 --steps 300 --log-every 20 --workers 0
part smoke-i 150 "$PY" benchmarks/gpu_smoke.py --preset imagenet-resnet50 --batch-size 256 --steps 100 \
    --log-every 10 --rows 2048 --workers 0
part views 45 "$PY" benchmarks/views.py --device cuda --sizes 32 224 --batch 1024 128 --reps 5
part loss 70 "$PY" benchmarks/loss.py --device cuda --sizes 256x8192 2048x8192 --rounds 2 --repeats 5

echo "=== summary" | tee -a "$LOG"
printf '%s' "$SUMMARY" | tee -a "$LOG"
echo "log: $LOG"
