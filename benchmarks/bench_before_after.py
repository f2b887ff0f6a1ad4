"""speechdata's loader before and after a change, interleaved in one run, against the decode floor.

Extracts ``speechdata/`` of ``--before`` (a git revision) into a temporary folder and runs
``speechdata bench``'s timed runs (:mod:`speechdata.bench.peers`, one fresh process each) in
rounds of: the loader as it is in this tree, the loader at ``--before``, the decode floor, on the
same clip spans, config and tokenizer. Each ratio to the floor uses the floor run of its own
round, so machine load that changes between rounds moves both; the report gives every round and
the medians, wall clock and CPU time per example (the whole child process and its workers,
start-up included, measured the same way for both versions).

    python benchmarks/bench_before_after.py MANIFEST --before REV [--workers 0,1] [--epochs 6] \\
        [--rounds 3] [--out results/x.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from speechdata.bench import Job, dataset_index, load_dataset, train_default_tokenizer
from speechdata.bench.clips import save_clips
from speechdata.bench.corpus import corpus_clips, corpus_summary, warm_page_cache
from speechdata.config import DatasetConfig, make_dataset_config

REPO = Path(__file__).resolve().parents[1]


def run(job: Job, root: Path, work: Path, tag: str) -> dict[str, Any]:
    """One timed run of ``job`` with the ``speechdata`` package found under ``root``."""
    job_file, out_file = work / f"{tag}.job.json", work / f"{tag}.out.json"
    job.save(job_file)
    cpu0 = _children_cpu()
    proc = subprocess.run(
        [sys.executable, "-m", "speechdata.bench.peers", str(job_file), str(out_file)],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        cwd=work,
    )
    result = json.loads(out_file.read_text()) if out_file.is_file() else {}
    if "figures" not in result:
        raise SystemExit(f"{tag}: {result or proc.stderr.strip().splitlines()[-1:]}")
    # the whole child process (imports and start-up included), the same way for either version
    return {**result["figures"], "process_cpu_s": _children_cpu() - cpu0}


def _changed(cfg: DatasetConfig) -> dict[str, Any]:
    """The dataset keys that differ from their defaults (what both versions know, as long as the
    keys this config sets existed at ``--before``), with the manifests."""
    values, defaults = cfg.to_dict(), make_dataset_config({"manifest_filepath": cfg.manifests}).to_dict()
    return {
        **{k: v for k, v in values.items() if k in defaults and v != defaults[k]},
        "manifest_filepath": cfg.manifests,
    }


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest")
    p.add_argument("--before", required=True, help="git revision of the 'before' loader")
    p.add_argument("--workers", default="0,1")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the markdown report here (and the JSON beside it)")
    args = p.parse_args()
    cfg, _ = load_dataset(args.manifest)
    with tempfile.TemporaryDirectory(prefix="speechdata-ab-") as tmp:
        work = Path(tmp)
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "speechdata"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.before], capture_output=True, text=True
        ).stdout.strip()
        tok = train_default_tokenizer(dataset_index(cfg), cfg, work / "tok")
        clips = corpus_clips(dataset_index(cfg, tok), cfg)
        warm_page_cache([c.path for c in clips])
        save_clips(clips, work / "clips.json")
        base = Job(
            peer="speechdata",
            clips_file=str(work / "clips.json"),
            epochs=args.epochs,
            batch_duration=cfg.batch_duration,
            seed=cfg.seed,
            sample_rate=cfg.sample_rate,
            dataset=_changed(cfg),
            tokenizer=tok,
        )
        rows: list[dict[str, Any]] = []
        for r in range(args.rounds):
            floor = run(dataclasses.replace(base, peer="floor"), REPO, work, f"floor-{r}")
            for w in (int(x) for x in args.workers.split(",")):
                for name, root in (("after", REPO), ("before", before)):
                    job = dataclasses.replace(base, workers=w, dataset={**base.dataset, "num_workers": w})
                    f = run(job, root, work, f"{name}-{w}-{r}")
                    row = {
                        "round": r + 1,
                        "workers": w,
                        "loader": name,
                        "ratio_to_floor": f["audio_s_per_s"] / floor["audio_s_per_s"],
                        "us_over_floor": 1e6 / f["examples_per_s"] - 1e6 / floor["examples_per_s"],
                        "cpu_us_per_example": 1e6 * f["process_cpu_s"] / f["examples"],
                        "floor_cpu_us_per_example": 1e6 * floor["process_cpu_s"] / floor["examples"],
                        "audio_s_per_s": f["audio_s_per_s"],
                        "floor_audio_s_per_s": floor["audio_s_per_s"],
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    summary = corpus_summary(clips)
    lines = [
        f"# Loader before ({rev}) and after, interleaved",
        "",
        f"Corpus: {summary['examples']} examples, {summary['hours']:.2f} h, mean clip "
        f"{summary['hours'] * 3600 / summary['audios']:.2f} s; batch_duration {cfg.batch_duration} s, "
        f"{args.epochs} epochs per run, {args.rounds} rounds (each: floor, then after and before per worker count).",
        "",
        "| workers | loader | ratio to floor (median) | rounds | µs/example over floor (median) | "
        "CPU µs/example (median) | floor CPU µs/example |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for w in sorted({r["workers"] for r in rows}):
        for name in ("before", "after"):
            sel = [r for r in rows if r["workers"] == w and r["loader"] == name]
            ratios = [r["ratio_to_floor"] for r in sel]
            med = {k: statistics.median([r[k] for r in sel]) for k in ("us_over_floor", "cpu_us_per_example")}
            fl = statistics.median([r["floor_cpu_us_per_example"] for r in sel])
            lines.append(
                f"| {w} | {name} | {statistics.median(ratios):.2f}× | "
                f"{', '.join(f'{x:.2f}' for x in ratios)} | {med['us_over_floor']:,.0f} | "
                f"{med['cpu_us_per_example']:,.0f} | {fl:,.0f} |"
            )
    lines += ["", f"Command: `python benchmarks/bench_before_after.py {' '.join(sys.argv[1:])}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({"command": sys.argv, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
