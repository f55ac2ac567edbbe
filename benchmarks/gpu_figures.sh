#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run (issue 23): the 3B train step's MFU
# on synthetic batches (bf16) and the latency of one 28-token action chunk with the KV cache.
#   OUT=/tmp/gpu bash benchmarks/gpu_figures.sh            # on a machine with one GPU
#   PRESET=tiny BATCH=8 OUT=/tmp/g bash benchmarks/gpu_figures.sh   # smoke run on a CPU
# The lent GPU machines have JAX/Flax/Optax/Orbax but not ml_collections: a wheel in .whl/
# (pip download ml_collections) is installed when present. No TensorFlow is needed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/vlax_gpu_figures}"; mkdir -p "$OUT"
PRESET="${PRESET:-paligemma_3b}"; BATCH="${BATCH:-64}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"  # H100/H200 SXM dense bf16 peak, TFLOP/s
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=.92
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

step() {  # batch, extra flags
  local name="train_step_b$1${2:-}"
  python3 benchmarks/train_step.py --preset "$PRESET" --dtype bfloat16 --batch_size "$1" \
    --seq_len 64 --prefix_len 32 --steps 6 --warmup 2 ${2:-} --json "$OUT/$name.json" \
    2>&1 | tee "$OUT/$name.log"
}
step "$BATCH" || step "$((BATCH / 2))" --remat
python3 benchmarks/inference_latency.py --preset "$PRESET" --dtype bfloat16 --action_tokens 28 \
  --repeats 20 --no_policy --json "$OUT/latency.json" 2>&1 | tee "$OUT/latency.log"
python3 - "$OUT" "$PEAK_TFLOPS" <<'PY'
import glob, json, sys
out, peak = sys.argv[1], float(sys.argv[2]) * 1e12
for f in sorted(glob.glob(f"{out}/train_step_*.json")):
  r = json.load(open(f))
  print(f"{f}: batch {r['batch_size']} remat {r['remat']}: {r['step_seconds'] * 1e3:.1f} ms/step, "
        f"{r['achieved_flops_per_s'] / 1e12:.1f} TFLOP/s, MFU vs {peak / 1e12:.0f} peak "
        f"{r['achieved_flops_per_s'] / peak:.3f}, vs matmul {r['train_flops_vs_matmul']:.3f} "
        f"(matmul {r['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s)")
r = json.load(open(f"{out}/latency.json"))
print(f"chunk of {r['action_tokens']} tokens, KV cache: p50 {r['cached_p50_s'] * 1e3:.1f} ms, "
      f"p99 {r['cached_p99_s'] * 1e3:.1f} ms; prefill p50 {r['prefill_p50_s'] * 1e3:.1f} ms; "
      f"recompute p50 {r.get('recompute_p50_s', float('nan')) * 1e3:.1f} ms")
PY
