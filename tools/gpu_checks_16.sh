#!/usr/bin/env bash
# Issue #16 §3-§4 in one run, for a lent GPU machine (the `device` tool): worker scaling of the loader
# against lhotse and the decode floor, and the real `speechdata tune` with the loader reading its YAML.
#
# That machine has python3 (3.12) with torch, lightning, sentencepiece, tensorboard, numpy, pyyaml,
# click, packaging, tabulate, tqdm, toolz and sortedcontainers, but cannot reach a package index, so
# the rest travels as wheels in .whl/ (carry `.whl`):
#   * the wheels of tools/gpu_checks.sh (braceexpand cffi omegaconf orjson pycparser soundfile soxr
#     webdataset), and
#   * lhotse and its needs that the machine lacks: lhotse==1.33.0 (the venv's version)
#     audioread==3.1.0 cytoolz==1.2.0 intervaltree==3.2.1 (all four exist as py3.12 x86-64 wheels:
#     `pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
#     -d .whl lhotse==1.33.0 audioread==3.1.0 cytoolz==1.2.0 intervaltree==3.2.1` found them).
# Without lhotse the bench still runs; its lhotse column then says skipped.
#
# Writes into $OUT (at most 8 files come back):
#   bench_workers.{md,json,log}  benchmarks/bench_workers.py: FLAC and WAV, $WORKERS workers, loaders
#                                delivering to CUDA, GPU finalisation per batch
#   tune.log, tuned.yaml         `speechdata tune configs/salm_tiny.yaml` on the GPU: per bucket the
#                                shapes tried, peak memory, chosen size; the tuned keys
#   tuned_loader.log             build_dataloader on salm_tiny merged with tuned.yaml: the buckets use
#                                the tuned sizes and cut full batches of them
#   tune_2d.log, tuned_2d.yaml   the same tune with 2D bins ([seconds, output tokens] pairs)
#
# Sizing, for the whole script to end well under 9 minutes on the 16-core H200 host: each bench run
# decodes (1 + 15 x workers) batches of 120 s (FLAC) or 300 s (WAV), one epoch of a manifest cycling
# over 0.5 h of files per format, 2 repeats: 60 child processes. Estimated from a run here (2-core
# CPU, workers 1 and 2, 20 batches per worker, 2 repeats: 77 s for 24 runs whose timed parts took
# 20 s): about 2 s per child beyond its timed part (imports, per-count preparation: 60 x 2 s = 120 s);
# the floor decodes in one process whatever the count, about 0.03 s per FLAC and 0.017 s per WAV
# batch (2 x 440 batches per format: 41 s); speechdata and lhotse at their 1-worker cost per batch
# over 0.8 x workers (9 s and 22 s), worker start-up (about 16 s), corpora, index, tokenizer and the
# finalisation timings (about 20 s): about 230 s for the bench; the tune of a 0.5 M-parameter model
# on four buckets, up to 13 probes each, well under its 120 s limit. Expected about 5-6 minutes;
# the step limits (330 + 30 + 120 + 30 s) bound it at 8.5 minutes plus the wheels' install.
#
# CPU dry mode (no GPU, e.g. here): DRY=1 skips the wheels and nvidia-smi, delivers to the CPU and
# runs tune as `--estimate-cpu 128MiB` (labelled CPU ESTIMATE) so the YAML and the loader check still
# run; SMALL=1 shrinks the bench; PY picks the interpreter:
#   DRY=1 SMALL=1 WORKERS="1 2" PY=.venv/bin/python OUT=/tmp/g16 tools/gpu_checks_16.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks_16}
PY=${PY:-python3}
DRY=${DRY:-0}
SMALL=${SMALL:-0}
WORKERS=${WORKERS:-1 2 4 8 14}
WORK=${WORK:-/tmp/gpu_checks_16_work}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  TUNE_MODE=(trainer.precision=32 --estimate-cpu 128MiB)  # float32: bf16 autocast is slow on CPUs
  echo "CPU DRY MODE: loaders deliver to the CPU; tune is a CPU estimate, not a GPU measurement"
else
  python3 -m pip install -q --no-index --find-links .whl braceexpand omegaconf orjson soundfile soxr webdataset \
    lhotse audioread cytoolz intervaltree >"$OUT/pip.log" 2>&1 || { tail -3 "$OUT/pip.log"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  DEVICE=cuda
  TUNE_MODE=()
fi
if [ "$SMALL" = 1 ]; then
  BENCH=(--hours 0.05 --batch-duration 20 --batches-per-worker 3 --repeats 1 --finalize-repeats 3)
else
  BENCH=(--hours 0.5 --batch-duration 120 wav=300 --batches-per-worker 15 --repeats 2 --finalize-repeats 30)
fi
[ "$DEVICE" = cpu ] && BENCH+=(--finalize)
nproc
# shellcheck source=tools/gpu_step.sh
source "$(dirname "$0")/gpu_step.sh"

# §4: worker scaling (makes the corpora in $WORK, reused by the steps below)
# shellcheck disable=SC2086  # WORKERS is a list of counts
step bench_workers 330 "$PY" benchmarks/bench_workers.py --workers $WORKERS --formats flac wav "${BENCH[@]}" \
  --device "$DEVICE" --corpus-dir "$WORK" --md "$OUT/bench_workers.md" --json "$OUT/bench_workers.json"
cat "$OUT/bench_workers.md" 2>/dev/null

# §3: the real tune on salm_tiny (its max_duration 8 s, bins 2/4/6 s: four buckets)
MANIFEST=$(ls "$WORK"/flac-*/manifest.jsonl 2>/dev/null | head -1)
[ -n "$MANIFEST" ] || { echo "no FLAC corpus in $WORK: the bench made none"; exit 1; }
step tokenizer 30 "$PY" -m speechdata tokenizer train "$MANIFEST" --audio-locator '|audio|' --vocab-size 512 \
  --out "$WORK/tok_salm"
TUNE_ARGS=(configs/salm_tiny.yaml "model.tokenizer.model=$WORK/tok_salm/tokenizer.model"
  "model.train_ds.bucket_duration_bins=[2,4,6]")
step tune 120 "$PY" -m speechdata tune "${TUNE_ARGS[@]}" "${TUNE_MODE[@]}" --out "$OUT/tuned.yaml"
cat "$OUT/tune.log"

# the loader reads the tuned YAML: merged into the config, the buckets batch with the tuned sizes
cat >"$WORK/check_tuned.py" <<'EOF'
"""Merge tuned.yaml into the tune's config and build the loader: its buckets use the tuned sizes."""
import sys

import numpy as np
from omegaconf import OmegaConf

from speechdata import build_dataloader
from speechdata.config import dataset_config, load_config
from speechdata.text.tokenizer import load_tokenizer

tuned_path, manifest, tokenizer, *config = sys.argv[1:]
tuned = OmegaConf.load(tuned_path)
merged = OmegaConf.merge(load_config(config[0], config[1:]), tuned)
merged.model.train_ds.manifest_filepath = manifest
merged.model.train_ds.num_workers = 0
merged.model.train_ds.drop_last = False  # the last batch of each bucket counts too
ds = dataset_config(merged, "train_ds")
sizes = list(tuned.model.train_ds.bucketing_batch_size)
loader = build_dataloader(ds, load_tokenizer(tokenizer))
assert list(loader.sampler.buckets.sizes) == sizes, (list(loader.sampler.buckets.sizes), sizes)
plan = loader.sampler.plan(0)
counts = loader.sampler.buckets.counts(loader.keep)
lengths = np.diff(plan.offsets)
print(f"tuned sizes {sizes}; bins {list(ds.bucket_duration_bins)}; examples per bucket {[int(c) for c in counts]}")
for b, size in enumerate(sizes):
    mine = lengths[plan.bucket == b]
    biggest = int(mine.max()) if len(mine) else 0
    print(f"bucket {b}: {len(mine)} batches, largest {biggest} (tuned {size}, examples {int(counts[b])})")
    assert (mine <= size).all() and (not len(mine) or biggest == min(size, counts[b]))
batch = next(iter(loader))
print(f"first batch: {batch['audio_signal'].shape[0]} audios, tokens {tuple(batch['tokens'].shape)}")
print("the loader reads the tuned YAML")
EOF
# the bench's cycled FLAC manifest (more examples per bucket), else the corpus's own
LOADER_MANIFEST=$(ls -S "$WORK"/flac-*-x*.jsonl 2>/dev/null | head -1)
if [ -f "$OUT/tuned.yaml" ]; then
  step tuned_loader 30 "$PY" "$WORK/check_tuned.py" "$OUT/tuned.yaml" "${LOADER_MANIFEST:-$MANIFEST}" \
    "$WORK/tok_salm/tokenizer.model" "${TUNE_ARGS[@]}"
  cat "$OUT/tuned_loader.log"
else
  summary+=("tuned_loader: not run (no tuned.yaml)")
  status=1
fi

# §3 with 2D bins (seconds, output tokens): the prompt part of each bucket's tokens from the manifest
step tune_2d 120 "$PY" -m speechdata tune "${TUNE_ARGS[@]:0:2}" "model.train_ds.manifest_filepath=$MANIFEST" \
  "model.train_ds.bucket_duration_bins=[[2,24],[4,48],[8,96]]" "${TUNE_MODE[@]}" --out "$OUT/tuned_2d.yaml"
cat "$OUT/tune_2d.log"

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
