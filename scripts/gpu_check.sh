#!/usr/bin/env bash
# The GPU checks, for a machine with CUDA GPUs (none of this can run on a CPU-only machine). Each step runs under
# its own timeout; a step that fails or times out is recorded and the next still runs; the script exits 1 when
# any step failed (2 when there is no GPU or a bad argument):
#   1. the tests marked `gpu` (tests/integration/test_gpu.py): every layout on NCCL against one GPU, grad-norm
#      series and final fp32 parameters on 2 GPUs, fp16 + GradScaler, memory per rank, MFU against the peak
#      table, compile + recompute + FSDP, SIGUSR2 -> checkpoint -> resume;
#   2. scripts/bench_parallel.py on the GPUs (bf16): tokens/s of each layout;
#   3. scripts/bench.py on the first GPU: the runner's loop against a bare loop;
#   4. scripts/bench_defaults.py on the first GPU: the defaults against every fixed precision x attention,
#      train.plan=auto and (with --nanogpt) nanoGPT's own train.py with its defaults (bf16, compile), at the
#      10.6M and GPT-2 124M (block 1024) shapes: the "defaults / nanoGPT" lines are the ratios, and the MFU
#      column the share of the bf16 peak.
# It ends with a Markdown table of the test results and of the steps, to paste into docs/gpus.md with the
# GPU's name and the date.
#
#   bash scripts/gpu_check.sh [--data input.txt] [--nanogpt ../nanoGPT] [--quick]
#       from the repository root; --data: tiny-shakespeare's input.txt (default: the copy in the package),
#       --nanogpt: a checkout of karpathy/nanoGPT to time beside the runner, --quick: the 10.6M shape only
#       and shorter timings. Installs only what is missing: the package (pip install -e '.[dev]') when it
#       cannot be imported, and nanoGPT's numpy and requests with --nanogpt.
set -uo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d -t nanogpt-gpu-check-XXXXXX)"
trap 'rm -rf "$work"' EXIT
nanogpt=() configs=(shakespeare gpt2) steps=60 rounds=2 data=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    --nanogpt) nanogpt=(--nanogpt "$2"); shift 2 ;;
    --quick) configs=(shakespeare); steps=30; rounds=1; shift ;;
    *) echo "gpu_check: unknown argument $1 (expected --data PATH, --nanogpt PATH, --quick)" >&2; exit 2 ;;
  esac
done

need() {  # need MODULE PIP-ARGS...: install only when MODULE cannot be imported
  local module="$1"; shift
  python -c "import $module" 2>/dev/null || pip install -q "$@"
}
need nanogpt_runner -e '.[dev]'
if [ ${#nanogpt[@]} -gt 0 ]; then
  need numpy numpy
  need requests requests
fi
if [ -z "$data" ]; then
  data="$(python -c 'from nanogpt_runner.data.sources import embedded_path; print(embedded_path())')"
fi

python - <<'EOF' || { echo "gpu_check: torch sees no CUDA GPU here; nothing to check" >&2; exit 2; }
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(1)
names = [f"{torch.cuda.get_device_name(i)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
         for i in range(torch.cuda.device_count())]
print(f"GPUs: {len(names)} x {', '.join(sorted(set(names)))}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
EOF

steps_run=() failed=0
step() {  # step NAME SECONDS COMMAND...: one check under its own timeout (SIGKILL 30 s after it)
  local name="$1" seconds="$2"; shift 2
  echo; echo "== $name (at most $seconds s)"
  timeout --kill-after=30 "$seconds" "$@"
  local code=$?
  local outcome="passed"
  if [ $code -eq 124 ] || [ $code -eq 137 ]; then outcome="timed out after $seconds s"; failed=1
  elif [ $code -ne 0 ]; then outcome="failed (exit $code)"; failed=1
  fi
  steps_run+=("| $name | $outcome |")
}

step "gpu tests" 1200 python -m pytest -m gpu tests/integration/test_gpu.py -q -rs -p no:cacheprovider \
  --junitxml="$work/gpu.xml"
step "bench_parallel" 600 python scripts/bench_parallel.py --device cuda --precision bf16
step "bench" 300 python scripts/bench.py --device cuda --data "$data"
step "bench_defaults" 1800 python scripts/bench_defaults.py --device cuda --configs "${configs[@]}" \
  --steps "$steps" --rounds "$rounds" --data "$data" "${nanogpt[@]}"

echo
echo "GPU check on $(python -c 'import torch; print(torch.cuda.get_device_name(0))'), $(date -u +%Y-%m-%d)"
echo "(paste into docs/gpus.md):"
echo
echo "| step | result |"
echo "|---|---|"
printf '%s\n' "${steps_run[@]}"
if [ -f "$work/gpu.xml" ]; then
  echo
  python - "$work/gpu.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

print("| test | result |")
print("|---|---|")
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    outcome = "passed"
    for kind in ("failure", "error", "skipped"):
        node = case.find(kind)
        if node is not None:
            outcome = f"{kind}: {(node.get('message') or '').splitlines()[0][:100]}"
    print(f"| {case.get('name')} | {outcome} |")
EOF
fi
exit $failed
