#!/usr/bin/env bash
# The GPU checks in one call of a lent GPU machine (results: docs/benchmarks.md, GPU section):
#   the carried wheels (.whl: ray without its Java jar, mlflow-skinny and their needs, pydensecrf2) installed,
#   benchmarks/gpu_throughput.py at full size (VGG-16 LargeFOV, bf16 and fp32, torch.compile too; a 400-image label
#   round on rectangle pools), tests/test_ray_gpu.py (deterministic and default), then the reduction's and the
#   deterministic forms' tests.
# Every step writes its log (and the benchmark its JSON, after each part) under $OUT as it goes.
#   device: bash benchmarks/device_check.sh            here: PY=.venv/bin/python SKIP_INSTALL=1 OUT=/tmp/out bash benchmarks/device_check.sh
set -o pipefail
OUT=${OUT:-/tmp/device_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -z "$SKIP_INSTALL" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    mkdir -p /tmp/site/databricks  # mlflow asks find_spec("databricks.agents"); an empty namespace answers "absent"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"  # boxsup from this tree, for Ray's workers too
step() { echo "== $(date +%T) $*"; }
{
    step environment
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PY" -c "import sys, torch, cv2; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count(), 'opencv', cv2.__version__, 'ximgproc', hasattr(cv2, 'ximgproc'))"
    "$PY" -c "import ray, mlflow, pydensecrf.densecrf; print('ray', ray.__version__, 'mlflow', mlflow.__version__)"
    nproc; git rev-parse --short HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
} 2>&1 | tee "$OUT/env.txt"
if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    step "gpu_throughput" | tee "$OUT/bench.log"
    timeout 270 "$PY" benchmarks/gpu_throughput.py --steps 20 --backbones vgg16_largefov --precisions bf16 fp32 \
        --parts abcep --compile --unique-images 400 --label-images 400 --label-proposals rectangles --out "$OUT/gpu.json" 2>&1 \
        | grep --line-buffered -v 'img/s\]$' | tee -a "$OUT/bench.log"
    echo "benchmark exit $?" | tee -a "$OUT/bench.log"
else
    step "no GPU: gpu_throughput at full size skipped" | tee "$OUT/bench.log"
fi
step "tests/test_ray_gpu.py" | tee "$OUT/ray_gpu.log"
# about 100 s per case on an H200, 4 cases (deterministic first); the report JSON records each run's stages as they end
BOXSUP_GPU_REPORT="$OUT/ray_gpu_report.json" timeout 450 "$PY" -m pytest -q -rs --tb=short tests/test_ray_gpu.py -p no:cacheprovider 2>&1 \
    | tail -150 | tee -a "$OUT/ray_gpu.log"
step "the batched reduction on the GPU, the deterministic forms" | tee "$OUT/reduction.log"
timeout 60 "$PY" -m pytest -q -rs tests/test_batched_label_round.py tests/test_kernels.py -p no:cacheprovider 2>&1 \
    | tail -30 | tee -a "$OUT/reduction.log"
step done
