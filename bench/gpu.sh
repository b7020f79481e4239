#!/usr/bin/env bash
# The checks that need a GPU, in one go: the CUDA tests, then the batch-job and engine benchmarks there.
#
#     bash bench/gpu.sh [LOG_DIR]          # logs in LOG_DIR (default gpu-results/)
#     IMAGES=64 REPEATS=1 ENGINE_REPEATS=0 bash bench/gpu.sh /tmp/quick   # a quick try
#
# Run from the repository's root with the package installed (tests import the installed `saliency`).
set -uo pipefail
out="${1:-gpu-results}"
images="${IMAGES:-2048}"
repeats="${REPEATS:-3}"
engine_repeats="${ENGINE_REPEATS:-25}"
engine_batches="${ENGINE_BATCHES:-1 8 32}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
                                      'available', torch.cuda.is_available())"
    echo "cpus $(nproc)"
} 2>&1 | tee "$out/machine.txt"

# -P: the installed package, not the source folder (which lacks saliency.models and saliency.api)
"$python" -P -m pytest -p no:cacheprovider -q -rs tests/test_engine_contract.py tests/test_engine_threads.py \
    tests/test_batch.py tests/test_cli.py -k "cuda or device" 2>&1 | tee "$out/tests.log"

"$python" bench/batch.py --skip-ray --images "$images" --repeats "$repeats" 2>&1 | tee "$out/batch.log"
# what else bounds the local engine beside a GPU: the GIL's hand-over, decoding threads that share the GIL
"$python" bench/batch.py --skip-ray --skip-bare --images "$images" --repeats "$repeats" --switch-interval 0.5 \
    2>&1 | tee "$out/batch-switch.log"
"$python" bench/batch.py --skip-ray --skip-bare --images "$images" --repeats "$repeats" --decode-in processes \
    2>&1 | tee "$out/batch-processes.log"
if [ "$engine_repeats" -gt 0 ]; then
    "$python" bench/methods.py --batches $engine_batches --repeats "$engine_repeats" 2>&1 | tee "$out/methods.log"
fi

