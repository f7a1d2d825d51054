#!/usr/bin/env bash
# One-command accelerator check (make device-check): installs what it needs, runs the
# backend-independent tests on the accelerator, then the throughput table of every family in
# float32 and bfloat16 beside the PyTorch peer on the same device; writes one JSON file.
#
#   benchmarks/device_check.sh                # full check on a GPU/TPU host (< 8 min on one GPU)
#   benchmarks/device_check.sh --quick        # tiny sizes (the default on a CPU-only host)
#   benchmarks/device_check.sh --no_install --out runs/x.json --matmul_precision tf32
#
# Other options go to the driver: python -m benchmarks.device_check --help.
# Environment (CUDA hosts): TORCH_CUDA_VARIANT (cu128 for CUDA 12 drivers, cu130 for 13) and
# TORCH_INDEX_URL choose the CUDA torch wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
# Before JAX starts: allocate GPU memory as needed (not 75% up front), so PyTorch fits beside it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=.venv/bin/python

install=1
args=()
for a in "$@"; do
  case "$a" in
    --no_install) install=0 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

say() { echo "+ $*"; "$@"; }
start=$(date +%s)
if ((install)); then
  say make setup setup-bench
  jax_version=$(sed -n 's/^jax==//p' constraints.txt)
  torch_version=$(sed -n 's/^torch==//p' constraints.txt)
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    # The CUDA jax plugin matched to constraints.txt's jax; cuda13 for drivers of CUDA >= 13.
    cuda_major=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -1)
    cuda=cuda12
    if [ "${cuda_major:-12}" -ge 13 ]; then cuda=cuda13; fi
    echo "CUDA host (driver CUDA ${cuda_major:-?}): installing jax[$cuda]==$jax_version"
    say $PY -m pip install -q "jax[$cuda]==$jax_version" ||
      echo "jax[$cuda]==$jax_version did not install: JAX stays on the CPU"
    if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
      # The local version (+cu128) makes pip replace an installed +cpu build of the same torch.
      variant=${TORCH_CUDA_VARIANT:-$([ $cuda = cuda13 ] && echo cu130 || echo cu128)}
      index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$variant}
      echo "installing torch==$torch_version+$variant (a CUDA build) from $index"
      say $PY -m pip install -q "torch==$torch_version+$variant" --index-url "$index" ||
        echo "no CUDA torch==$torch_version here: the PyTorch peer is skipped on the GPU"
    fi
  elif ls /dev/accel* >/dev/null 2>&1 || [ -e /dev/vfio/0 ]; then
    echo "TPU host: installing jax[tpu]==$jax_version (the PyTorch peer has no TPU device)"
    say $PY -m pip install -q "jax[tpu]==$jax_version" ||
      echo "jax[tpu]==$jax_version did not install: JAX stays on the CPU"
  else
    echo "no GPU or TPU found: the CPU check (quick sizes unless --no-quick)"
  fi
fi
setup_s=$(($(date +%s) - start))

backend=$($PY -c "import jax; print(jax.default_backend())")
echo "JAX backend: $backend"
exec $PY -m benchmarks.device_check --setup_s "$setup_s" "${args[@]}"
