"""The runs of ``speechdata bench``: every peer, ``repeats`` times, each run in a fresh process.

:func:`run_benchmark` prepares the input once (the tokenizer, the Index cached for the loader, the
clip spans, the page cache, webdataset tars of plain files), then runs each peer's :class:`Job`
through ``python -m speechdata.bench.peers`` (:func:`run_child`), peers interleaved, and returns
the :class:`~speechdata.bench.report.BenchResult`.

Example::

    >>> cfg, _ = load_dataset("train.jsonl")
    >>> result = run_benchmark(cfg, compare=True, repeats=3)
    >>> result.peers["speechdata"].figures["ratio_to_floor"]
    0.93
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speechdata.bench.clips import save_clips, write_wds_shards
from speechdata.bench.corpus import (
    corpus_clips,
    corpus_summary,
    dataset_index,
    index_summary,
    small_corpus_warning,
    train_default_tokenizer,
    warm_page_cache,
)
from speechdata.bench.peers import LABELS, LHOTSE_BUCKETS, NO_TARRED, ON_REQUEST, PEERS, Job
from speechdata.bench.report import BenchResult, PeerResult, machine_info, summarize
from speechdata.config import DatasetConfig
from speechdata.errors import ConfigError, SpeechDataError
from speechdata.shards.read import TarredDataset


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(job: Job, workdir: Path, tag: str) -> dict[str, Any]:
    """Run one job in a fresh Python process; returns its result dict (``error`` if it died)."""
    job_file, out_file = workdir / f"{tag}.job.json", workdir / f"{tag}.out.json"
    job.save(job_file)
    proc = subprocess.run(
        [sys.executable, "-m", "speechdata.bench.peers", str(job_file), str(out_file)],
        env=_child_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out_file.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"process exited with {proc.returncode}: {tail}"}
    return dict(json.loads(out_file.read_text()))


def run_benchmark(
    cfg: DatasetConfig,
    tokenizer: str | Path | None = None,
    *,
    compare: bool = False,
    repeats: int = 3,
    epochs: int = 1,
    device: str = "cpu",
    max_batches: int | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
    peers: Sequence[str] | None = None,
) -> BenchResult:
    """Measure speechdata's loader on ``cfg`` (and, with ``compare``, its peers) in fresh processes.

    ``tokenizer`` defaults to a small model trained on the manifests' text. ``max_batches`` stops
    every run after that many batches. ``log`` receives one line per run. A tarred dataset is
    compared on its own tars: the floor reads its members by offset, webdataset reads the tars
    front to back, and lhotse, which has no reader for them, is skipped. ``peers`` names the
    peers ``compare`` runs (speechdata always runs); by default all but
    :data:`~speechdata.bench.peers.ON_REQUEST`.
    """
    if repeats < 1 or epochs < 1:
        raise ConfigError("--repeats and --epochs must be at least 1")
    if max_batches is not None and max_batches < 1:
        raise ConfigError("--max-batches must be at least 1")
    unknown = sorted(set(peers or ()) - set(PEERS))
    if unknown:
        raise ConfigError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    with tempfile.TemporaryDirectory(prefix="speechdata-bench-") as tmp:
        work = Path(tmp)
        tok = str(tokenizer) if tokenizer else train_default_tokenizer(dataset_index(cfg), cfg, work / "tok")
        index = dataset_index(cfg, tok)  # the loader's keys: its runs find the index cached
        small = small_corpus_warning(index, cfg, epochs=epochs, max_batches=max_batches)
        if small is not None:
            logging.getLogger("speechdata").warning("bench: %s", small)
        # streamed shards (pipe: commands, URLs) are not read ahead; --compare needs them read
        streamed = cfg.is_tarred and not TarredDataset(cfg, index=index).seekable
        clips = [] if streamed and not compare else corpus_clips(index, cfg)
        warm_page_cache([c.path for c in clips])
        save_clips(clips, work / "clips.json")
        mean_clip = float(np.mean([c.seconds for c in clips])) if clips else 0.0
        wds_batch = (
            max(1, math.floor(cfg.batch_duration / mean_clip))
            if cfg.batch_duration and mean_clip
            else cfg.micro_batch_size
        )
        base = Job(
            peer="speechdata",
            clips_file=str(work / "clips.json"),
            workers=cfg.num_workers,
            epochs=epochs,
            batch_duration=cfg.batch_duration,
            batch_size=cfg.micro_batch_size,
            quadratic_duration=cfg.quadratic_duration,
            seed=cfg.seed,
            sample_rate=cfg.sample_rate,
            device=device,
            max_batches=max_batches,
            dataset={**cfg.to_dict(), "manifest_filepath": cfg.manifests},
            tokenizer=tok,
            wds_batch_size=wds_batch,
            tarred=cfg.is_tarred,
        )
        names = tuple(
            n
            for n in PEERS
            if n == "speechdata" or (compare and (n in peers if peers is not None else n not in ON_REQUEST))
        )
        if "webdataset" in names:
            base.wds_urls = (
                sorted({c.path for c in clips})  # the dataset's own tars
                if cfg.is_tarred
                else write_wds_shards(clips, work / "wds", max(1, cfg.num_workers), cfg.seed)
            )
        peers = {n: PeerResult(n, LABELS[n]) for n in names}
        if cfg.is_tarred:
            for name, why in NO_TARRED.items():
                if name in peers:
                    peers[name].skipped = why
        for r in range(repeats):
            for name in names:
                peer = peers[name]
                if peer.skipped is not None:
                    continue
                out = run_child(dataclasses.replace(base, peer=name), work, f"{name}-{r}")
                if "figures" in out:
                    peer.runs.append(out["figures"])
                    peer.drops = out["figures"].get("drops", {})
                    if log is not None:
                        f = out["figures"]
                        first = (
                            "" if f["first_batch_s"] is None else f", first batch {f['first_batch_s']:.3f} s"
                        )
                        log(f"run {r + 1}/{repeats} {peer.label}: {f['audio_s_per_s']:,.0f} audio s/s{first}")
                elif name == "speechdata":
                    raise SpeechDataError(f"speechdata loader: {out.get('error') or out.get('skipped')}")
                else:
                    peer.skipped = out.get("skipped") or f"failed: {out.get('error')}"
                    if log is not None:
                        log(f"{peer.label}: skipped ({peer.skipped})")
    summarize(peers)
    settings = {
        "workers": cfg.num_workers,
        "batch_duration": cfg.batch_duration,
        "batch_size": cfg.micro_batch_size,
        "webdataset_batch_size": wds_batch,
        "lhotse_buckets": min(LHOTSE_BUCKETS, len(clips)),
        "epochs": epochs,
        "repeats": repeats,
        "device": device,
        "max_batches": max_batches,
        "seed": cfg.seed,
        "sample_rate": cfg.sample_rate,
        "manifests": cfg.manifests,
        "throughput": "steady state: audio after the first batch / time from first to last batch",
    }
    corpus = index_summary(index, cfg) if streamed else corpus_summary(clips)
    return BenchResult(command, machine_info(), settings, corpus, peers, [small] if small else [])
