#!/usr/bin/env bash
# Installs every Debian 12 package MedSearch needs to build, run, test and benchmark.
# Used by the README and by .ci/run. Safe to run again: apt-get skips what is installed.
set -euo pipefail

build_pkgs=(
  build-essential pkg-config clang libclang-rt-14-dev valgrind
  libdnnl-dev libprotobuf-c-dev protobuf-c-compiler libonnx-dev
  libvips-dev libwebp-dev libdeflate-dev libjpeg62-turbo-dev libopenjp2-7-dev libcharls-dev libjansson-dev libmicrohttpd-dev libsqlite3-dev libpq-dev libssl-dev
  libcmocka-dev
)
test_pkgs=(
  postgresql curl chromium
  python3-torch python3-torchvision python3-onnx python3-numpy python3-pil python3-pydicom dcmtk libgdcm-tools
  libheif-examples
  python3-faiss python3-hnswlib python3-flask
)

want=("${build_pkgs[@]}")
[ "${1:-}" = "--build-only" ] || want+=("${test_pkgs[@]}")
# Node.js may come from elsewhere (a newer npm); take Debian's only when there is none.
command -v npm >/dev/null 2>&1 || want+=(nodejs npm)

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "bootstrap.sh: these packages are missing and installing them needs root: ${missing[*]}" >&2
      echo "bootstrap.sh: run this script as root, or install sudo" >&2
      exit 1
    }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Browser tests drive Debian's chromium through npm playwright-core (no browser download).
if [ "${1:-}" != "--build-only" ] && [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi
