#!/bin/sh
# Build llama.cpp's own `llama-server` (and `llama-batched-bench`) from the llama.cpp source that the
# llama-cpp-python sdist vendors, with the same AMX-free flags as the wheel, and cache the binaries.
#
#   sh deploy/build-llama-server.sh PYTHON CACHE_DIR   -> prints the directory holding the binaries
#
# LLAMA_SDIST=path/to/llama_cpp_python-VERSION.tar.gz skips the download (pip prepares the sdist's
# metadata first, which takes minutes).
#
# The directory is keyed by the sdist version and a hash of the flags, so a changed flag set builds
# anew; `CACHE_DIR/bin/llama-server` is a symlink to the current build. Static libraries, so the
# binary stands alone; no curl, no OpenSSL, no web UI (nothing is fetched at build or run time).
set -eu
PY=${1:-python3}
CACHE=${2:-$HOME/.cache/voicequeue}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
HERE=$(cd "$(dirname "$0")" && pwd)
FLAGS="$(sh "$HERE/llama-cmake-args.sh") -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
 -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
 -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DCMAKE_BUILD_TYPE=Release"
KEY=$(printf '%s %s' "$VERSION" "$FLAGS" | sha256sum | cut -c1-12)
OUT="$CACHE/bin/llama-server-$VERSION-$KEY"
if [ ! -x "$OUT/llama-server" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  SDIST=${LLAMA_SDIST:-}
  if [ -z "$SDIST" ]; then
    "$PY" -m pip download --quiet --no-binary :all: --no-deps -d "$WORK" "llama-cpp-python==$VERSION" >&2
    SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
  fi
  tar -xzf "$SDIST" -C "$WORK"
  SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
  # shellcheck disable=SC2086
  cmake -S "$SRC" -B "$WORK/build" $FLAGS >&2
  cmake --build "$WORK/build" --target llama-server llama-batched-bench -j "$(nproc)" >&2
  mkdir -p "$OUT.tmp"
  cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-batched-bench" "$OUT.tmp/"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi
ln -sfn "$(basename "$OUT")" "$CACHE/bin/llama-server.current"
ln -sfn "llama-server.current/llama-server" "$CACHE/bin/llama-server"
echo "$OUT"
