#!/usr/bin/env bash
# Build (once) llama.cpp's llama-server and llama-mtmd-cli and print llama-server's path
# (llama-mtmd-cli lies beside it).
#
# Why: tests/test_server_llamacpp.py compares `gemmapipe --server` against a real llama-server
# running the same tiny models as the local engine, and bench/ compares with llama-mtmd-cli. The
# sources are the llama.cpp vendored in the llama-cpp-python sdist of the version we pin, so the
# server runs the same llama.cpp as the local engine. Same portable flags as .ci/llama-wheel.sh
# (no -march=native: see there), no web UI download and no curl (offline), static so that the
# two binaries stand alone. Kept under ~/.cache/gemmapipe/, keyed by version and flags.
#
# GEMMAPIPE_LLAMA_SRC: an unpacked llama.cpp source tree to use instead of downloading the sdist.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
flags="${GEMMAPIPE_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
extra="-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
-DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release"
key=$(printf 'server %s %s %s' "$version" "$flags" "$extra" | sha256sum | cut -c1-12)
dir="${GEMMAPIPE_SERVER_CACHE:-$HOME/.cache/gemmapipe/llama-server}/$key"
python="${PYTHON:-python3}"
jobs="${GEMMAPIPE_BUILD_JOBS:-$(nproc)}"
if [ ! -x "$dir/bin/llama-server" ] || [ ! -x "$dir/bin/llama-mtmd-cli" ]; then
  work="$dir.tmp"   # kept when a build is interrupted, so that a rerun resumes it
  mkdir -p "$work"
  src="${GEMMAPIPE_LLAMA_SRC:-}"
  if [ -z "$src" ]; then
    if [ ! -d "$work/src" ]; then
      "$python" -m pip download -q --no-deps --no-binary :all: -d "$work/sdist" \
        "llama-cpp-python==$version" >&2
      mkdir -p "$work/src.tmp"
      tar -xzf "$work"/sdist/llama_cpp_python-*.tar.gz -C "$work/src.tmp"
      mv "$work/src.tmp" "$work/src"
    fi
    src=$(ls -d "$work"/src/llama_cpp_python-*/vendor/llama.cpp | head -n 1)
  fi
  generator=()
  if [ ! -f "$work/build/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  # shellcheck disable=SC2086
  cmake -S "$src" -B "$work/build" "${generator[@]}" $flags $extra >&2
  cmake --build "$work/build" --target llama-server llama-mtmd-cli -j "$jobs" >&2
  mkdir -p "$dir.bin"
  cp "$work/build/bin/llama-server" "$work/build/bin/llama-mtmd-cli" "$dir.bin/"
  "$dir.bin/llama-server" --version >&2
  rm -rf "$dir" && mkdir -p "$dir" && mv "$dir.bin" "$dir/bin" && rm -rf "$work"
fi
echo "$dir/bin/llama-server"
