#!/usr/bin/env bash
# Install the llama-cpp-python 0.3.36 bindings (pure Python, ctypes) WITHOUT compiling llama.cpp a
# second time: the package's CMake option LLAMA_BUILD=OFF (and LLAVA_BUILD=OFF) makes its wheel
# carry only the Python sources, and the bindings then load the libllama.so that
# build_llamacpp.sh already built.
#
# How the bindings find the library (llama_cpp/llama_cpp.py 0.3.36): the environment variable
# LLAMA_CPP_LIB_PATH names the directory holding libllama.so; without it they look in
# <site-packages>/llama_cpp/lib. We do both: symlink the built libraries into that lib directory
# (so a plain `import llama_cpp` works) and write $ORACLE_ROOT/ENV exporting LLAMA_CPP_LIB_PATH.
#
# Fallback if the symlinked libraries were ever unwanted: a self-contained compile of the same
# sources with the same CPU flags would be
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
#     -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON \
#     -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
#   CMAKE_BUILD_PARALLEL_LEVEL=2 pip install llama-cpp-python==0.3.36
# (about ten minutes on two cores; not what this script does).
set -euo pipefail

ORACLE_ROOT=${ORACLE_ROOT:-/work/oracle}
ORACLE_DIR=${ORACLE_DIR:-$ORACLE_ROOT/llama.cpp-build}
SRC_TOP=${SRC_TOP:-$ORACLE_ROOT/llama_cpp_python-0.3.36}
PY=${PYTHON:-python3}
LIBDIR="$ORACLE_DIR/bin"

[ -f "$SRC_TOP/pyproject.toml" ] || { echo "error: extracted sdist not found at $SRC_TOP (run build_llamacpp.sh)" >&2; exit 1; }
[ -f "$LIBDIR/libllama.so" ] || { echo "error: $LIBDIR/libllama.so missing (run build_llamacpp.sh first)" >&2; exit 1; }

# 1. the Python package only (no llama.cpp compile)
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
  "$PY" -m pip install --no-cache-dir "$SRC_TOP"

# 2. point the installed package at the built shared libraries
PKG_DIR=$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')
mkdir -p "$PKG_DIR/lib"
for f in "$LIBDIR"/lib*.so*; do
  ln -sf "$f" "$PKG_DIR/lib/$(basename "$f")"
done

cat > "$ORACLE_ROOT/ENV" <<EOF
export LLAMA_CPP_LIB_PATH="$LIBDIR"
export LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LLAMA_ORACLE_BIN="$LIBDIR"
EOF

# 3. smoke test: the bindings load and report the library's system info
"$PY" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__, "loaded from", llama_cpp.llama_cpp._base_path); print(llama_cpp.llama_print_system_info().decode())'
