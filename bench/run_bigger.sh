#!/usr/bin/env bash
# Bigger networks against ONNX Runtime and PyTorch eager (oneDNN): AlexNet, VGG-11 and NiN
# (1x224x224) at batch 1 and 8, VGG-11 small (1x64x64) at batch 1 and 64; 1 and 2 threads; random
# weights.  Writes bench/results/<model>.json and prints one table with convdsl's share of the FMA
# peak (bench/tables.py --versus onnxruntime,torch).
#
#   bench/run_bigger.sh                # uses $PYTHON (default: python3 on PATH)
#   WAIT_IDLE=0 bench/run_bigger.sh    # do not wait for other processes to go quiet (default 300 s)
#
# As in run_lenet.sh, OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for the benchmark command only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p bench/results

run() {
    local name=$1 batch=$2
    echo "== $name: examples/$name.conv, batch $batch -> bench/results/$name.json" >&2
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" -m convdsl bench "examples/$name.conv" \
        --batch "$batch" --threads 1,2 --compare onnxruntime,torch --seconds 2 --json \
        --wait-idle "${WAIT_IDLE:-300}" "${@:3}" > "bench/results/$name.json.tmp"
    mv "bench/results/$name.json.tmp" "bench/results/$name.json"
}

run alexnet 1,8 "$@"
run vgg11_small 1,64 "$@"
run vgg11 1,8 "$@"
run nin 1,8 "$@"
"$PYTHON" bench/tables.py --versus onnxruntime,torch bench/results/alexnet.json bench/results/vgg11_small.json \
    bench/results/vgg11.json bench/results/nin.json
