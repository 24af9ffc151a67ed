#!/usr/bin/env bash
# Gathers what tests/gpu/run-on-device.sh needs on a GPU machine that has CUDA 13 and cuBLAS
# but none of this project's build dependencies: the GPU test and benchmark binaries, the
# CPU-side twin, and the few shared libraries they link that such a machine may lack.
#   tests/gpu/bundle.sh [BUILD_DIR]      (default build; writes BUILD_DIR/gpu-bundle)
# Then, with the device tool: carry BUILD_DIR/gpu-bundle and run
#   tests/gpu/run-on-device.sh BUILD_DIR/gpu-bundle
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=$build/gpu-bundle
for f in tests/gpu/test_cuda_ops tests/gpu/test_moe_plan bench/gpu; do
  if [ ! -x "$build/$f" ]; then
    echo "bundle: $build/$f is missing: configure with -Dcuda=enabled and run ninja -C $build" >&2
    exit 1
  fi
done
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "$build/tests/gpu/test_cuda_ops" "$build/tests/gpu/test_moe_plan" "$build/bench/gpu" "$out/bin/"
cp tests/gpu/moe_torch.py "$out/"
# OpenMP's runtime: small, and not always installed where only CUDA is
for lib in libgomp.so.1; do
  p=$(ldd "$build/tests/gpu/test_cuda_ops" | awk -v l="$lib" '$1 == l { print $3 }')
  [ -n "$p" ] && cp -L "$p" "$out/lib/"
done
du -sh "$out"
