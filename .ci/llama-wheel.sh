#!/usr/bin/env bash
# Build (once) a portable llama-cpp-python wheel and print its path.
#
# Why: a default source build uses -march=native, which on Sapphire Rapids hosts compiles ggml's
# AMX kernels; kernels that do not grant AMX tile state to processes (as on these CI machines)
# then kill the process with SIGILL at the first matrix multiply. pip's wheel cache ignores
# CMAKE_ARGS, so we keep our own wheel, keyed by version and flags.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
flags="${GEMMAPIPE_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
key=$(printf '%s %s' "$version" "$flags" | sha256sum | cut -c1-12)
dir="${GEMMAPIPE_WHEEL_CACHE:-$HOME/.cache/gemmapipe/wheels}/$key"
python="${PYTHON:-python3}"
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  mkdir -p "$dir.tmp"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip wheel --no-cache-dir --no-deps -q -w "$dir.tmp" "llama-cpp-python==$version" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
ls "$dir"/llama_cpp_python-*.whl | head -n 1
