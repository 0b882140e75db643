#!/usr/bin/env bash
# The GPU checks, for a machine with CUDA GPUs (none of this can run on a CPU-only machine):
#   1. the tests marked `gpu` (tests/test_gpu.py): every layout on NCCL against one GPU, fp16 + GradScaler,
#      memory per rank, MFU against the peak table, compile + recompute + FSDP, SIGUSR2 -> checkpoint -> resume;
#   2. scripts/bench_parallel.py on the GPUs (bf16): tokens/s of each layout;
#   3. scripts/bench.py on the first GPU: the runner's loop against a bare loop;
#   4. scripts/bench_defaults.py on the first GPU: the defaults against every fixed precision x attention,
#      train.plan=auto and (with --nanogpt) nanoGPT's own train.py, at the baby and 10.6M configs.
# It ends with a Markdown table of the test results to paste into the README ("GPU status").
#
#   bash scripts/gpu_check.sh [--data input.txt] [--nanogpt ../nanoGPT]
#       from the repository root, in the environment of `pip install -e '.[dev]'`; --data: tiny-shakespeare's
#       input.txt (needed with --nanogpt), --nanogpt: a checkout of karpathy/nanoGPT to time beside the runner
set -uo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d -t nanogpt-gpu-check-XXXXXX)"
data=() defaults=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=(--data "$2"); shift 2 ;;
    --nanogpt) defaults=(--nanogpt "$2"); shift 2 ;;
    *) echo "gpu_check: unknown argument $1 (expected --data PATH, --nanogpt PATH)" >&2; exit 2 ;;
  esac
done

python - <<'EOF' || { echo "gpu_check: torch sees no CUDA GPU here; nothing to check" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
names = [f"{torch.cuda.get_device_name(i)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
         for i in range(torch.cuda.device_count())]
print(f"GPUs: {len(names)} x {', '.join(sorted(set(names)))}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
EOF

python -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider --junitxml="$work/gpu.xml"
tests_status=$?

echo
python scripts/bench_parallel.py --device cuda --precision bf16
echo
python scripts/bench.py --device cuda "${data[@]}"
echo
python scripts/bench_defaults.py --device cuda --rounds 2 "${data[@]}" "${defaults[@]}"

echo
echo "GPU test results (paste into the README):"
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
rm -rf "$work"
exit $tests_status
