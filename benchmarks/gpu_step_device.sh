#!/usr/bin/env bash
# benchmarks/gpu_step.py on a GPU machine that has torch and JAX but no Keras, no TensorFlow
# and no network: Keras and its two small dependencies travel as wheels in .whl/.
#
#   bash benchmarks/gpu_step_device.sh fetch   # here (pip, network): the wheels into .whl/
#   bash benchmarks/gpu_step_device.sh         # there, from the repository root: install
#                                              # them offline, run, figures into $OUT
#   bash benchmarks/gpu_step_device.sh jax     # there: the JAX part alone (4-5 minutes)
#
# The run: the JAX backend with the PyTorch section (keras_vgg under XLA against torchvision's
# VGG16 eager and torch.compile), then the torch backend with --backend-only (keras_vgg eager
# and jit_compile=True). Batch 256, 128, 64 at 224x224, full width, every implementation at
# one batch before the next batch. Each part has its own time limit and writes its JSON after
# every measurement, so a part stopped at its limit keeps complete comparisons for the batches
# it finished. 9 minutes at most: a 15-minute lease, start-up included, holds one run.
set -u

KERAS_WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0)

if [ "${1:-}" = fetch ]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "${KERAS_WHEELS[@]}"
    exit
fi

out=${OUT:-gpu_step_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    >"$out/nvidia_smi.csv" 2>&1
lscpu | grep 'Model name' >>"$out/nvidia_smi.csv"

KERAS_BACKEND=jax timeout 390 python3 benchmarks/gpu_step.py --batch-sizes 256,128,64 \
    --json "$out/gpu_step_jax.json" 2>&1 | tee "$out/gpu_step_jax.log"
[ "${1:-}" = jax ] && exit
KERAS_BACKEND=torch timeout 140 python3 benchmarks/gpu_step.py --backend-only \
    --batch-sizes 256,128,64 --json "$out/gpu_step_torch.json" 2>&1 | tee "$out/gpu_step_torch.log"
