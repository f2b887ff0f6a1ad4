#!/usr/bin/env bash
# The GPU checks of issues #6 and #7 in one run, for a lent GPU machine (the `device` tool).
#
# That machine has python3 with torch, lightning, sentencepiece and tensorboard but cannot reach a
# package index, so the rest of speechdata's dependencies travel as wheels in .whl/ (fetch them
# here with `pip download --only-binary=:all: --python-version 3.12 -d .whl braceexpand cffi
# omegaconf orjson pycparser soundfile soxr webdataset`, then carry `.whl`). Writes into $OUT:
#   gpu_check.json / .log   collator on CUDA (2 workers, pinned, two epochs kept) vs the CPU
#   demo.log                `speechdata demo`: shard, bench, SALM + BESTOW on CUDA in bf16-mixed
#                           with gradient clipping (Lightning, fused-AdamW rules)
#   learning_check.json     the in-memory learning check on CUDA in bf16, both models
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-index --find-links .whl braceexpand omegaconf orjson soundfile soxr webdataset \
  >"$OUT/pip.log" 2>&1 || { tail -3 "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# shellcheck source=tools/gpu_step.sh
source "$(dirname "$0")/gpu_step.sh"
step gpu_check 150 python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json"
step demo 200 python3 -m speechdata demo --out /tmp/demo --steps 150
grep -E "loss|CER|step|salm|bestow" "$OUT/demo.log" | tail -12
step learning_check 200 python3 benchmarks/learning_check.py --device cuda --precision bf16 --steps 1500 \
  --threads 8 --out "$OUT/learning_check.json"
tail -12 "$OUT/learning_check.log"
exit $status
