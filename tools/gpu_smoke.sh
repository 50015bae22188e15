#!/usr/bin/env bash
# GPU smoke run: each torch package's benchmark on CUDA in bf16-mixed, once as one process per GPU under
# torchrun and once compiled with torch.compile, printed as samples/s and share of the GPU's bf16 peak
# (tools/gpu_smoke.py). Takes a few minutes; bounded at 5. On a machine without a CUDA GPU it says so and
# exits 0. Run it from anywhere in the workspace: tools/gpu_smoke.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python=(uv run --locked python)
if [[ -n "${PYTHON:-}" ]]; then
  python=("$PYTHON")
fi

# No driver, no GPU: answer at once, without starting Python (importing torch takes seconds).
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "^GPU "; then
  echo "gpu_smoke: no CUDA GPU here (nvidia-smi lists none); nothing to measure."
  exit 0
fi
# A driver, but maybe no GPU for this process (CUDA_VISIBLE_DEVICES="") or a CPU-only torch.
if ! "${python[@]}" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_smoke: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure."
  exit 0
fi
exec timeout --signal=TERM --kill-after=10 300 "${python[@]}" tools/gpu_smoke.py
