#!/usr/bin/env bash
# Build, test and benchmark the CUDA device on a GPU machine, in one go.
#
#   bash bench/cuda_check.sh [DIR]
#
# DIR (default .cudawt) may hold: whl/*.whl (wheels to install where the machine has no
# index: gguf, nanobind, scikit-build-core, pytest...), smollm2-4l.gguf (the real SmolLM2
# cut to 4 layers by scripts/cut_gguf.py) and synth_gguf.py (synthetic full-size GGUFs).
# Steps: install the wheels, `pip install --no-build-isolation --no-deps .`, run the CUDA
# tests (tests/test_cuda.py and the device=cuda stage tests), write a synthetic llama3-1b
# Q8_0 GGUF, and time decode/prefill of both models. Logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath "${1:-.cudawt}")
OUT=${OUT:-/tmp/cuda_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if ls "$DIR"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$DIR"/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PATH=/tmp/site/bin:$PATH

echo "== build"
# Some GPU images point CXX at a private GCC whose libstdc++ ends up linked statically into
# the extension; its iostreams then crash inside Python (seen: CXX=/opt/gcc/bin/g++, a
# segfault in the first std::ostringstream). Build with the system compiler when there is one.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++; fi
echo "CXX=${CXX:-default}"
t0=$(date +%s)
rm -rf /tmp/llm /tmp/llm-build
CMAKE_BUILD_PARALLEL_LEVEL=16 $PY -m pip install -q --no-build-isolation --no-deps --target /tmp/llm \
  -C cmake.define.LLMETAL_CUDA=ON -C build-dir=/tmp/llm-build . \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/llm:$PYTHONPATH
$PY -c "from llmetal import _engine as E; print(E.build_info()['devices'])"

echo "== tests"
CUT="$DIR/smollm2-4l.gguf"
[ -f "$CUT" ] && export LLMETAL_CUT_GGUF=$CUT
# tests import the installed package (/tmp/llm), not python/ in the tree
$PY -m pytest -p no:cacheprovider tests/test_cuda.py tests/test_stages.py -q -rs -m cuda \
  -o addopts="" 2>&1 | tee "$OUT/tests.log" | tail -25

echo "== bench"
MODELS=()
[ -f "$CUT" ] && MODELS+=("$CUT")
if [ -f "$DIR/synth_gguf.py" ] && [ -f "$CUT" ]; then
  t0=$(date +%s)
  $PY "$DIR/synth_gguf.py" --tok "$CUT" --shape llama3-1b --qtype Q8_0 -o /tmp/llama3-1b-q8_0.gguf \
    && MODELS+=(/tmp/llama3-1b-q8_0.gguf)
  echo "synthetic llama3-1b Q8_0 written in $(( $(date +%s) - t0 )) s"
fi
[ ${#MODELS[@]} -gt 0 ] && $PY -X faulthandler bench/cuda_bench.py "${MODELS[@]}" --check-cpu 2>&1 | tee "$OUT/bench.log"
