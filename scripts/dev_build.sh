#!/usr/bin/env bash
# Incremental developer build: compiles llmetal._engine with plain CMake into build/dev and
# copies it next to the Python sources, so `PYTHONPATH=python pytest` runs the working tree
# without reinstalling. (Users and CI use `pip install .`.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -f build/dev/build.ninja ]; then
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v $PY)" \
        -DLLMETAL_CUDA="${LLMETAL_CUDA:-OFF}" -DLLMETAL_METAL_EMU="${LLMETAL_METAL_EMU:-ON}" > /dev/null
fi
cmake --build build/dev
cp -f build/dev/_engine*.so python/llmetal/
