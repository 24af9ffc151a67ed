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
bins="tests/gpu/test_cuda_ops tests/gpu/test_moe_plan tests/gpu/test_moe_gpu tests/gpu/test_gpu_module bench/gpu tests/coordinator/test_golden bench/e2e ctl/ferryctl"
golden=${FERRY_GOLDEN:-../shared/golden}
if [ ! -d "$golden" ]; then
  echo "bundle: no golden sets at $golden (set FERRY_GOLDEN)" >&2
  exit 1
fi
# Meson 1.0 gives nvcc no dependency file: a .cu object is not rebuilt when only a header it
# includes changed (kn_cuda.h, cuda-internal.h, kernels.h), and a stale one would run with
# another struct layout. Rebuild them all before bundling.
if [ -d "$build/kernels/cuda" ]; then
  find "$build/kernels/cuda" -name '*.cu.o' -delete
  ninja -C "$build" > /dev/null
fi
for f in $bins moe/libferry-gpu.so; do
  if [ ! -e "$build/$f" ]; then
    echo "bundle: $build/$f is missing: configure with -Dcuda=enabled and run ninja -C $build" >&2
    exit 1
  fi
done
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for f in $bins; do cp "$build/$f" "$out/bin/"; done
cp "$build/moe/libferry-gpu.so" "$out/lib/"
cp tests/gpu/moe_torch.py "$out/"
cp -r "$golden" "$out/golden" # the coordinator's engine on the GPU against the references
# the shared libraries they link, but for the C runtime and CUDA's (the GPU machine has its
# own, matching its driver)
for f in $bins moe/libferry-gpu.so; do ldd "$build/$f"; done | awk '$3 ~ /^\// { print $1, $3 }' |
  sort -u | while read -r name path; do
    case $name in
      libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|ld-linux*|libgcc_s.so.*|\
      libstdc++.so.*|libcuda.so.*|libcudart.so.*|libcublas.so.*|libcublasLt.so.*) ;;
      *) cp -L "$path" "$out/lib/$name" ;;
    esac
  done
du -sh "$out"
ls "$out/lib"
