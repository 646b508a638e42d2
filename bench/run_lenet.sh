#!/usr/bin/env bash
# The standard LeNet benchmark: both LeNet variants (sigmoid/avgpool and relu/maxpool) against
# PyTorch eager, torch.compile, ONNX Runtime and numpy, batch 1/64/1024, 1 and 2 threads.
# Writes bench/results/<model>.json (the `convdsl bench --json` object) and prints the tables.
#
#   bench/run_lenet.sh                 # from anywhere; uses $PYTHON (default: python3 on PATH)
#   bench/run_lenet.sh --seconds 1     # extra options go to every `convdsl bench` call
#   WAIT_IDLE=0 bench/run_lenet.sh     # do not wait for other processes to leave the CPU idle
#                                      # (default: wait up to 300 s before each model)
#
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on this machine and select a slower OpenBLAS
# kernel for numpy; they are unset for the benchmark command only (the caller's environment is
# left alone).  The JSON records which kernel numpy's OpenBLAS runs (threadpoolctl), see
# "peak": {"blas": ...}, and the tables print it next to the sgemm peak.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p bench/results

for var in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do
    if [ -n "${!var+x}" ]; then
        echo "note: $var=${!var} is set in this shell; unset for the benchmark command" >&2
    fi
done

for name in lenet lenet_relu; do
    out="bench/results/$name.json"
    echo "== $name: examples/$name.conv -> $out" >&2
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PYTHON" -m convdsl bench "examples/$name.conv" \
        --batch 1,64,1024 --threads 1,2 --compare torch,torch-compile,onnxruntime,numpy --json \
        --wait-idle "${WAIT_IDLE:-300}" "$@" \
        > "$out.tmp"
    mv "$out.tmp" "$out"
    "$PYTHON" -m convdsl.tools.bench "$out"
    echo
done
echo "wrote bench/results/lenet.json bench/results/lenet_relu.json" >&2
