#!/usr/bin/env bash
# The whole GPU suite on a machine with an NVIDIA GPU, in one call that fits a short lease:
# the CPU twin of the layout, every CUDA op against its CPU reference, a worker's slot table
# on the GPU, the golden references through the coordinator's engine and through the workers'
# experts on the GPU (exact and fast), bench/gpu,
# and the same expert layer in PyTorch (tests/gpu/moe_torch.py) for the ratio. Prints a short table
# last; full logs go to $OUT (or ./gpu-out) when set.
#   tests/gpu/run-on-device.sh [BUNDLE]   (default build/gpu-bundle, made by bundle.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=${1:-build/gpu-bundle}
out=${OUT:-gpu-out}
mkdir -p "$out"
# cuBLAS 13 and the CUDA runtime: the toolkit's, else PyTorch's wheels
libs="$bundle/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublas.so.13" ] && libs="$libs:$d"
done
py=$(command -v python3 || true)
if [ -n "$py" ]; then
  for d in $("$py" - <<'PY' 2>/dev/null
import glob, os, site
for s in site.getsitepackages():
    for d in glob.glob(os.path.join(s, "nvidia", "*", "lib")):
        print(d)
PY
  ); do libs="$libs:$d"; done
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 ||
  echo "no nvidia-smi" > "$out/gpu.txt"
status=0
step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  local rc=$? t1=$(date +%s.%N)
  awk -v n="$name" -v rc="$rc" -v a="$t0" -v b="$t1" \
    'BEGIN { printf "%-20s rc %-3s %6.1fs\n", n, rc, b - a }' >> "$out/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return $rc
}
: > "$out/summary.txt"
export FERRY_GPU_MODULE="$bundle/lib/libferry-gpu.so"
step moe_plan "$bundle/bin/test_moe_plan"
step gpu_module "$bundle/bin/test_gpu_module"
step cuda_ops timeout 300 "$bundle/bin/test_cuda_ops"
step moe_gpu timeout 300 "$bundle/bin/test_moe_gpu"
# the golden sets through the coordinator's engine and through the workers' experts on the
# GPU, exact (f32 activations, 1e-4) and fast (bf16 tensor cores)
for where in ENGINE WORKER; do
  for prec in exact fast; do
    step golden_${where,,}_$prec env FERRY_GOLDEN="$bundle/golden" FERRY_${where}_DEVICE=cuda:0 \
      FERRY_PRECISION=$prec timeout 200 "$bundle/bin/test_golden"
  done
done
# the coordinator's decode step on the 16b shape (2 layers), CPU and GPU, batch 1 and 32
m16=${TMPDIR:-/tmp}/ferry-m16
step model_16b timeout 120 "$bundle/bin/ferryctl" model gen --preset 16b --layers 2 -q "$m16"
for b in 1 32; do
  step e2e_cpu_b$b timeout 150 "$bundle/bin/e2e" --model "$m16" --batch $b --prompt 64 \
    --gen 16 --reps 3
  step e2e_gpu_b$b timeout 150 "$bundle/bin/e2e" --model "$m16" --batch $b --prompt 64 \
    --gen 16 --reps 3 --device cuda:0
done
rm -rf "$m16"
step bench_gpu timeout 300 "$bundle/bin/gpu" --reps 20
if [ -n "$py" ]; then
  step moe_torch timeout 300 "$py" "$bundle/moe_torch.py"
fi
echo "== $(cat "$out/gpu.txt")"
cat "$out/summary.txt"
grep -hE "^(FAIL|ok)" "$out/cuda_ops.log" "$out/moe_gpu.log" "$out/gpu_module.log" | tail -50
for f in "$out"/golden_*.log; do # each run: its failures, and its worst logit difference
  w=$(awk '{ for (i = 1; i < NF; i++) if ($i == "diff") print $(i + 1) }' "$f" | sort -g | tail -1)
  echo "$(basename "$f" .log): worst max abs diff ${w:-?}; $(grep -hE "set\(s\)" "$f")"
  grep -hE "^fast:|FAIL" "$f" | head -6
done
cat "$out/bench_gpu.log"
[ -f "$out/moe_torch.log" ] && tail -5 "$out/moe_torch.log"
# coordinator ms per decode step (all but the routed experts, which stay on the CPU here)
for b in 1 32; do
  c=$(awk '/^coordinator ms per decode step/ { print $6 }' "$out/e2e_cpu_b$b.log" 2>/dev/null)
  g=$(awk '/^coordinator ms per decode step/ { print $6 }' "$out/e2e_gpu_b$b.log" 2>/dev/null)
  [ -n "$c" ] && [ -n "$g" ] && awk -v b=$b -v c="$c" -v g="$g" \
    'BEGIN { printf "coordinator decode step, batch %d: CPU %s ms, GPU %s ms, CPU/GPU %.2f\n", b, c, g, c / g }'
done
# ours / PyTorch per token count
if [ -f "$out/moe_torch.log" ]; then
  for n in 1 32 256; do
    a=$(awk -v n=$n '$1 == "layer" && $2 == n { print $4 }' "$out/bench_gpu.log")
    b=$(awk -v n=$n '$1 == "torch" && $3 == n { print $5 }' "$out/moe_torch.log")
    [ -n "$a" ] && [ -n "$b" ] && awk -v n=$n -v a="$a" -v b="$b" \
      'BEGIN { printf "layer %d tokens: ours %s ms, PyTorch %s ms, PyTorch/ours %.2f\n", n, a, b, b / a }'
  done
fi
exit $status
