#!/usr/bin/env bash
# Build, test and benchmark the CUDA device on a GPU machine, in one go.
#
#   bash bench/cuda_check.sh [DIR]
#
# DIR (default .cudawt; `bash bench/cuda_prepare.sh DIR` writes it) may hold:
#   whl/*.whl          wheels to install where the machine has no index (gguf, nanobind,
#                      scikit-build-core, pytest...)
#   smollm2-4l.gguf    the real SmolLM2 cut to 4 layers (scripts/cut_gguf.py): end-to-end
#                      parity with the CPU device, a bench row, and (merges kept) the tokenizer
#                      scripts/synth_gguf.py copies into the synthetic files
#   tok.gguf           (optional) another GGUF to copy the tokenizer from instead
#   llama.tar.xz       llama.cpp's sources cut to llama-bench (or llama/, the same unpacked):
#                      llama-bench is built with CUDA (in the background, while llmetal builds
#                      and tests) and run side by side with `python -m llmetal bench` on each
#                      synthetic model
# SYNTH="llama3-1b:Q8_0 llama3-8b:Q4_0" (the default: llama3-1b:Q8_0) names the synthetic files
# scripts/synth_gguf.py writes there (shape:type).
# DEPTHS="512,4096,16384" (optional) adds decode at those depths side by side: the synthetic
# files are then written with a context past the deepest (else 4096), and after the
# pp512 / tg128 runs come `llama-bench -p 0 -n 128 -d 0,DEPTHS -r 2 -fa 1` and `python -m
# llmetal bench -p 0 -n 128 -r 2 -d D` for D in 0 and DEPTHS (docs/benchmarks-cuda.md, "Decode
# at depth").
# Steps: install the wheels, `pip install --no-build-isolation --no-deps .`, run the CUDA
# tests (tests/test_cuda.py and the device=cuda stage tests), write the synthetic GGUFs,
# bench. Logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath "${1:-.cudawt}")
OUT=${OUT:-/tmp/cuda_check_out}
SYNTH=${SYNTH:-llama3-1b:Q8_0}
DEPTHS=${DEPTHS:-}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader || true

if ls "$DIR"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$DIR"/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PATH=/tmp/site/bin:$PATH

# Some GPU images point CXX at a private GCC whose libstdc++ ends up linked statically into
# the extension; its iostreams then crash inside Python (seen: CXX=/opt/gcc/bin/g++, a
# segfault in the first std::ostringstream). Build with the system compiler when there is one.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++; fi
echo "CXX=${CXX:-default}"

LLAMA_PID=
LLAMA_SRC=$DIR/llama
if [ ! -d "$LLAMA_SRC" ] && [ -f "$DIR/llama.tar.xz" ]; then
  mkdir -p /tmp/llama-src && tar xJf "$DIR/llama.tar.xz" -C /tmp/llama-src && LLAMA_SRC=/tmp/llama-src/llama
fi
if [ -d "$LLAMA_SRC" ]; then
  echo "== llama.cpp: building llama-bench (CUDA, sm_90) in the background"
  ( t0=$(date +%s)
    cmake -S "$LLAMA_SRC" -B /tmp/llama-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_MTMD=OFF \
      -DGGML_NATIVE=ON && cmake --build /tmp/llama-build --target llama-bench -j 14
    echo "llama-bench built (rc=$?) in $(( $(date +%s) - t0 )) s" ) > "$OUT/llama_build.log" 2>&1 &
  LLAMA_PID=$!
fi

echo "== build"
t0=$(date +%s)
rm -rf /tmp/llm /tmp/llm-build
CMAKE_BUILD_PARALLEL_LEVEL=16 $PY -m pip install -q --no-build-isolation --no-deps --target /tmp/llm \
  -C cmake.define.LLMETAL_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="90-real;80-virtual" \
  -C build-dir=/tmp/llm-build . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/llm:$PYTHONPATH
$PY -c "from llmetal import _engine as E; print(E.build_info()['devices'])"

echo "== tests"
CUT="$DIR/smollm2-4l.gguf"
[ -f "$CUT" ] && export LLMETAL_CUT_GGUF=$CUT
# tests import the installed package (/tmp/llm), not python/ in the tree
$PY -m pytest -p no:cacheprovider tests/test_cuda.py tests/test_stages.py -q -rs -m cuda -x \
  -o addopts="" 2>&1 | tee "$OUT/tests.log" | tail -25

echo "== synthetic models"
# the tokenizer of the synthetic files: tok.gguf if given, else the cut model (which needs its BPE
# merges: llama.cpp cannot load a file seeded from a cut made with --no-merges)
TOK="$DIR/tok.gguf"; [ -f "$TOK" ] || TOK=$CUT
SYN=()
if [ -f "$TOK" ]; then
  ctx=4096   # with DEPTHS: a context past the deepest depth (llama-bench sizes its own from -d)
  [ -n "$DEPTHS" ] && ctx=$(( $(tr ',' '\n' <<< "$DEPTHS" | sort -n | tail -1) + 4096 ))
  for s in $SYNTH; do
    shape=${s%%:*}; q=${s##*:}; f=/tmp/$shape-${q,,}.gguf
    t0=$(date +%s)
    $PY scripts/synth_gguf.py --arch llama --tok "$TOK" --shape "$shape" --qtype "$q" --ctx $ctx -o "$f" && SYN+=("$f")
    echo "$f written in $(( $(date +%s) - t0 )) s"
  done
fi

echo "== bench (llmetal, bench/cuda_bench.py)"
MODELS=()
[ -f "$CUT" ] && MODELS+=("$CUT")
MODELS+=("${SYN[@]}")
[ ${#MODELS[@]} -gt 0 ] && $PY -X faulthandler bench/cuda_bench.py "${MODELS[@]}" --check-cpu 2>&1 | tee "$OUT/bench.log"

if [ -n "$LLAMA_PID" ]; then
  echo "== side by side with llama.cpp"
  wait $LLAMA_PID; tail -2 "$OUT/llama_build.log"
  LB=/tmp/llama-build/bin/llama-bench
  for f in "${SYN[@]}"; do
    if [ -x $LB ]; then
      $LB -m "$f" -p 512 -n 128 -r 3 -fa 1 > /tmp/lb.log 2>&1
      echo "llama-bench rc=$?"; cat /tmp/lb.log >> "$OUT/llama_bench.log"
      grep "^|" /tmp/lb.log | tee -a "$OUT/side_by_side.log" || tail -5 /tmp/lb.log
    fi
    $PY -m llmetal bench -m "$f" --device cuda -p 512 -n 128 -r 3 -b 512 2>&1 | tee -a "$OUT/side_by_side.log"
  done
  if [ -n "$DEPTHS" ]; then
    echo "== decode at depth 0,$DEPTHS, side by side"
    for f in "${SYN[@]}"; do
      [ -x $LB ] && $LB -m "$f" -p 0 -n 128 -d "0,$DEPTHS" -r 2 -fa 1 2>&1 | grep "^|" | tee -a "$OUT/depth.log"
      for d in 0 ${DEPTHS//,/ }; do
        $PY -m llmetal bench -m "$f" --device cuda -p 0 -n 128 -r 2 -d "$d" 2>&1 | grep "tg128" | tee -a "$OUT/depth.log"
      done
    done
  fi
fi
