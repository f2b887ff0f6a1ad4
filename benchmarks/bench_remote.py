"""Object storage by byte range against local disk: one worker, FLAC shards, same run.

Builds (once) a single-audio 16 kHz FLAC corpus of about ``--hours`` hours, writes it as tar
shards, and serves the shards from an S3 API server (moto) behind the fault proxy of
``tests/servers.py`` with a fixed latency per request (``--latency``, 30 ms by default, no
faults), both in a separate process. Then, interleaved, ``--repeats`` times, one epoch each:

* **local** — ``build_dataloader`` on the shards on local disk (members read with ``os.pread``);
* **s3** — the same config with ``s3://`` manifest and shards: members read by byte range, read
  ahead with the default knobs (``SPEECHDATA_REMOTE_*``), through presigned URLs;
* **s3, through s3fs** — the same with ``SPEECHDATA_REMOTE_PRESIGN=0``: every range through
  s3fs (aiobotocore signs and parses each request);
* **http** — the same shards over HTTP (``tests/servers.py``'s ``RangeHTTPServer``);
* **s3, within batches** and **http, within batches** — read ahead only within a batch (the
  source's ``read_ahead`` switched off, so the worker does not announce its next batch while
  the current one decodes): what reading ahead across batch boundaries gains, in the same run;
* **s3, 1 in flight** (``--serial``) — the same with ``SPEECHDATA_REMOTE_IN_FLIGHT=1``: what the
  latency costs when it is not hidden.

Throughput is steady state (examples after the first batch over the time from the first batch to
the last); each figure is the median of the repeats and ratios are quotients of medians. Requests
and bytes per example are counted by the proxy (GETs and their body bytes during the epoch), with
the members' own bytes per example beside them; the loader's CPU seconds (its process and
worker, from ``/proc``) and the server's beside the time. Writes ``<out>.json`` and ``<out>.md``.

``--plain`` measures plain manifests instead of shards: the corpus's own FLAC files and
manifest, on local disk, on S3 (``s3://.../corpus/manifest.jsonl``, clips by relative path) and
over HTTP, each clip read whole through the storage layer (results in ``<out>_plain.*``).

``--profile`` instead runs each loader (not the 1-in-flight one) without workers, so one process
does all of its work, and reports its CPU seconds and the seconds its range reader waited for
bytes (``RangeReader.waited``: the latency reading ahead did not hide) beside the wall time of the
steady part: ``<out>_profile.json`` and ``<out>_profile.md``.

``--server-core`` puts the server process (moto, the HTTP server, the proxies) on the last CPU
and this process with every loader's workers (the local one too) on the others, as if the
storage were another machine; without it the server's CPU competes with the loader's (moto
costs about 6 ms of CPU per request). Results in ``<out>_server_core.*``.

    python benchmarks/bench_remote.py [--hours 2] [--repeats 3] [--latency 0.03] [--serial | --profile | --plain] [--server-core]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

MEAN_CLIP_S = 7.0
TARGET = 0.8
BUCKET = "speech"


def build_corpus(root: Path, hours: float) -> tuple[Path, int]:
    """FLAC corpus and its shards (made once per size); returns the shards folder, shard count."""
    from speechdata.shards.write import ShardOptions, write_shards
    from speechdata.testing import make_corpus

    n = math.ceil(hours * 3600 / MEAN_CLIP_S * 1.05)
    out = root / f"flac-{n}"
    shards = out / "shards"
    num_shards = 8
    if not (shards / "tarred_audio_manifest.json").is_file():
        corpus = make_corpus(
            out / "corpus",
            n,
            seed=0,
            formats=("flac",),
            sample_rates=(16000,),
            stereo_fraction=0.0,
            multi_audio_fraction=0.0,
            shared_source_fraction=0.1,
            locator=None,
        )
        write_shards(
            [corpus.manifest], shards, ShardOptions(num_shards=num_shards, codec="keep", progress=False)
        )
    return shards, num_shards


def serve(shards: str, latency: float, conn: Any, plain: bool = False, cores: set[int] | None = None) -> None:
    """Child process: moto S3 holding the shards (with ``plain``, the corpus's files and manifest
    under ``corpus/`` too) and an HTTP server of the shards' parent folder, each behind a proxy
    adding ``latency``; sends both proxies' URLs, then answers ``counts`` (GETs, bytes and this
    process's CPU seconds since the last ``counts``) until ``stop``. ``cores``: run on these CPUs
    only (set before any thread starts, so the servers' threads keep to them)."""
    import logging

    if cores:
        os.sched_setaffinity(0, cores)

    from servers import FaultProxy, RangeHTTPServer, s3_serving

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    files: dict[str, Path | bytes] = {f"ds/{p.name}": p for p in Path(shards).iterdir() if p.is_file()}
    if plain:
        root = Path(shards).parent
        files.update({str(p.relative_to(root)): p for p in (root / "corpus").rglob("*") if p.is_file()})
    with (
        s3_serving(BUCKET, files) as endpoint,
        RangeHTTPServer(Path(shards).parent) as http,
        FaultProxy(endpoint, latency=latency) as s3p,
        FaultProxy(http.url, latency=latency) as httpp,
    ):
        conn.send((s3p.url, httpp.url))
        cpu = time.process_time()
        while True:
            msg = conn.recv()
            if msg == "counts":
                counts = {k: s3p.counts[k] + httpp.counts[k] for k in ("requests:GET", "bytes:GET")}
                now = time.process_time()
                conn.send({**counts, "server_cpu_s": now - cpu})
                cpu = now
                s3p.reset_counts()
                httpp.reset_counts()
            elif msg == "stop":
                return


#: What every run's dataset config sets besides its data (600 s dynamic batches, 1 worker).
RUN: dict[str, Any] = {
    "batch_duration": 600.0,
    "num_buckets": 10,
    "max_duration": 40.0,
    "min_duration": 0.1,
    "num_workers": 1,
    "drop_last": False,
    "seed": 0,
}


def config(base: str, n_shards: int, **kw: Any) -> Any:
    """The dataset config of one run over the shards at ``base``."""
    from speechdata.config import make_dataset_config

    return make_dataset_config(
        {
            "manifest_filepath": f"{base}/tarred_audio_manifest.json",
            "is_tarred": True,
            "tarred_audio_filepaths": f"{base}/audio_{{0..{n_shards - 1}}}.tar",
            **RUN,
            **kw,
        }
    )


def plain_config(manifest: str) -> Any:
    """The dataset config of one ``--plain`` run over a plain manifest."""
    from speechdata.config import make_dataset_config

    return make_dataset_config({"manifest_filepath": manifest, **RUN})


def _no_read_ahead() -> Any:
    """Switch reading ahead across batches off for every source (``within batches`` rows);
    returns what puts it back."""
    from speechdata.sources import ManifestSource, TarredSource

    saved = (TarredSource.read_ahead, ManifestSource.read_ahead)
    TarredSource.read_ahead = ManifestSource.read_ahead = None  # type: ignore[assignment,method-assign]

    def undo() -> None:
        TarredSource.read_ahead, ManifestSource.read_ahead = saved  # type: ignore[method-assign]

    return undo


def one_epoch(cfg: Any, tokenizer: Any, ahead: bool = True) -> dict[str, float]:
    """Time one epoch: first batch, then steady-state examples and audio per second.
    ``ahead=False``: the source reads ahead within each batch only (no ``read_ahead``)."""
    from speechdata import build_dataloader

    undo = _no_read_ahead() if not ahead else None
    try:
        return _timed_epoch(cfg, tokenizer, build_dataloader)
    finally:
        if undo is not None:
            undo()


def _workers_cpu(skip: set[int]) -> float:
    """CPU seconds (user + system) of this process's live child processes other than ``skip``
    (the DataLoader workers, their range-reading threads included), from ``/proc``."""
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in skip:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


#: Child processes that are not DataLoader workers (the server process), for :func:`_workers_cpu`.
NOT_WORKERS: set[int] = set()


def _timed_epoch(cfg: Any, tokenizer: Any, build_dataloader: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    loader = build_dataloader(cfg, tokenizer, device="cpu")
    first = None
    n = audio = 0.0
    for batch in loader:
        now = time.perf_counter()
        if first is None:
            first = now
            cpu0 = time.process_time() + _workers_cpu(NOT_WORKERS)
            continue
        n += len(batch["sample_ids"])
        audio += float(batch["audio_signal_length"].sum()) / 16000
        last = now
        cpu1 = time.process_time() + _workers_cpu(NOT_WORKERS)
    assert first is not None
    span = last - first
    del loader
    return {
        "first_batch_s": first - t0,
        "examples_per_s": n / span,
        "audio_s_per_s": audio / span,
        "examples": n,
        "loader_cpu_s": cpu1 - cpu0,
        "steady_s": span,
    }


def profile_epoch(cfg: Any, tokenizer: Any, ahead: bool = True) -> dict[str, float]:
    """One epoch without workers (``--profile``): all the loader's work in this process, so
    its CPU seconds (decoding, collating, and the range reads' threads) and the seconds its
    range reader waited for bytes can be read beside the wall time of the steady part."""
    from speechdata import build_dataloader
    from speechdata.sources import TarredSource

    undo = _no_read_ahead() if not ahead else None
    try:
        loader = build_dataloader(replace(cfg, num_workers=0), tokenizer, device="cpu")
        source = loader.source
        # the reader of a tarred source on object storage (its ``waited`` counter)
        reader = source.tarred._reader if isinstance(source, TarredSource) else None
        first = None
        n = 0
        for batch in loader:
            now = time.perf_counter()
            if first is None:
                first, cpu0 = now, time.process_time()
                waited0 = reader.waited if reader is not None else 0.0
                continue
            n += len(batch["sample_ids"])
            last, cpu1 = now, time.process_time()
        assert first is not None
        return {
            "examples_per_s": n / (last - first),
            "steady_s": last - first,
            "loader_cpu_s": cpu1 - cpu0,
            "waited_s": (reader.waited if reader is not None else 0.0) - waited0,
        }
    finally:
        if undo is not None:
            undo()


def measure(
    kinds: dict[str, tuple[Any, dict[str, str]]], epoch: Any, tokenizer: Any, parent: Any, repeats: int
) -> dict[str, list[dict[str, float]]]:
    """Each loader of ``kinds`` (config, environment set for its runs) once to warm (the index
    cache, the manifest's local copy, the page cache), then ``repeats`` rounds of all of them,
    interleaved: ``epoch(cfg, tokenizer, ahead=...)`` (reading ahead across batches except for
    the ``within batches`` rows), each result with the server's counts of that epoch beside it
    (``requests:GET``, ``bytes:GET``, ``server_cpu_s``). Returns the results per loader."""

    def run(kind: str, cfg: Any, env: dict[str, str]) -> dict[str, float]:
        os.environ.update(env)
        try:
            return epoch(cfg, tokenizer, ahead="within" not in kind)
        finally:
            for k in env:
                os.environ.pop(k)

    for kind, (cfg, env) in kinds.items():
        run(kind, cfg, env)
    parent.send("counts")
    parent.recv()
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(repeats):
        for kind, (cfg, env) in kinds.items():
            r = run(kind, cfg, env)
            parent.send("counts")
            r.update(parent.recv())
            runs[kind].append(r)
            print(kind, {k: round(v, 3) for k, v in r.items()}, file=sys.stderr)
    return runs


def write_results(out: str, result: dict[str, Any], lines: list[str]) -> None:
    """``result`` to ``<out>.json`` and the report ``lines``, closed by the command that made
    them (``result["command"]``), to ``<out>.md``; prints the report."""
    lines = [*lines, "", f"Command: `{result['command']}`", ""]
    Path(out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


def _sizes(v: int | list[int]) -> int:
    return sum(v) if isinstance(v, list) else int(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.03)
    ap.add_argument("--serial", action="store_true", help="also run with 1 request in flight")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "speechdata-bench-remote"))
    ap.add_argument("--out", default=str(HERE / "results" / "remote"))
    ap.add_argument(
        "--profile",
        action="store_true",
        help="where the time goes: each loader without workers, CPU and waiting seconds (<out>_profile.*)",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="plain manifests of the FLAC files instead of shards (<out>_plain.*)",
    )
    ap.add_argument(
        "--server-core",
        action="store_true",
        help="the server process on the last CPU and every loader (local too) on the others, "
        "as if the storage were another machine (<out>_server_core.*)",
    )
    args = ap.parse_args()
    if args.plain:
        args.out += "_plain"
    if args.server_core:
        args.out += "_server_core"

    import torch
    from servers import fake_aws_env

    from speechdata.manifest import load_index
    from speechdata.shards.read import MANIFEST
    from speechdata.storage import reset_filesystems
    from speechdata.text.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    shards, n_shards = build_corpus(Path(args.root), args.hours)
    index = load_index([shards / MANIFEST])
    tok_dir = Path(args.root) / "tokenizer"
    if not (tok_dir / "tokenizer.model").is_file():
        from speechdata.text.tokenizer import train_tokenizer

        texts = [index.record(i).answer for i in range(len(index))]
        train_tokenizer(texts, tok_dir, 256, byte_fallback=False)
    tokenizer = load_tokenizer(tok_dir / "tokenizer.model")
    member_bytes = sum(_sizes(index.record(i).extra["tar_size"]) for i in range(len(index)))
    corpus_manifest = shards.parent / "corpus" / "manifest.jsonl"
    if args.plain:  # bytes of each example's files (a file shared by examples counted for each)
        plain = load_index([corpus_manifest])
        member_bytes = sum(os.path.getsize(a) for i in range(len(plain)) for a in plain.record(i).audio)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[-1]} if args.server_core else None
    server = ctx.Process(
        target=serve, args=(str(shards), args.latency, child, args.plain, server_cpus), daemon=True
    )
    server.start()
    if server_cpus is not None:  # this process, and the workers it starts from now on
        os.sched_setaffinity(0, set(cpus[:-1]))
    NOT_WORKERS.add(server.pid)
    s3_url, http_url = parent.recv()
    os.environ.update(fake_aws_env())
    os.environ["AWS_ENDPOINT_URL"] = s3_url
    reset_filesystems()

    kinds: dict[str, tuple[Any, dict[str, str]]] = {
        "local": (config(str(shards), n_shards), {}),
        "s3": (config(f"s3://{BUCKET}/ds", n_shards), {}),
        "http": (config(f"{http_url}/{shards.name}", n_shards), {}),
        "s3, through s3fs": (config(f"s3://{BUCKET}/ds", n_shards), {"SPEECHDATA_REMOTE_PRESIGN": "0"}),
        "s3, within batches": (config(f"s3://{BUCKET}/ds", n_shards), {}),
        "http, within batches": (config(f"{http_url}/{shards.name}", n_shards), {}),
    }
    if args.plain:
        remote = {"s3": f"s3://{BUCKET}/corpus/manifest.jsonl", "http": f"{http_url}/corpus/manifest.jsonl"}
        kinds = {"local": (plain_config(str(corpus_manifest)), {})}
        kinds.update({k: (plain_config(m), {}) for k, m in remote.items()})
        kinds.update({f"{k}, within batches": (plain_config(m), {}) for k, m in remote.items()})
    if args.serial and not args.profile and not args.plain:
        kinds["s3, 1 in flight"] = (
            config(f"s3://{BUCKET}/ds", n_shards),
            {"SPEECHDATA_REMOTE_IN_FLIGHT": "1"},
        )
    command = "python benchmarks/bench_remote.py " + " ".join(sys.argv[1:])
    runs = measure(kinds, profile_epoch if args.profile else one_epoch, tokenizer, parent, args.repeats)
    parent.send("stop")
    server.join(10)
    if args.profile:
        profile(runs, args, command)
        return
    for r in (r for kind_runs in runs.values() for r in kind_runs):
        r["requests_per_example"] = r.pop("requests:GET", 0) / len(index)
        r["bytes_per_example"] = r.pop("bytes:GET", 0) / len(index)
        r["epoch_s"] = r["examples"] / r["examples_per_s"]

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    local = med("local", "examples_per_s")
    rows = []
    for kind in kinds:
        rows.append(
            {
                "loader": kind,
                "examples_per_s": med(kind, "examples_per_s"),
                "audio_s_per_s": med(kind, "audio_s_per_s"),
                "ratio_to_local": med(kind, "examples_per_s") / local,
                "first_batch_s": med(kind, "first_batch_s"),
                "requests_per_example": med(kind, "requests_per_example"),
                "bytes_per_example": med(kind, "bytes_per_example"),
                "server_cpu_s": med(kind, "server_cpu_s"),
                "loader_cpu_s": med(kind, "loader_cpu_s"),
                "steady_s": med(kind, "steady_s"),
                "epoch_s": med(kind, "epoch_s"),
                "spread_examples_per_s": [
                    min(r["examples_per_s"] for r in runs[kind]),
                    max(r["examples_per_s"] for r in runs[kind]),
                ],
            }
        )
    result = {
        "command": command,
        "corpus": {
            "examples": len(index),
            "hours": float(index.duration.sum()) / 3600,
            "shards": n_shards,
            "member_bytes_per_example": member_bytes / len(index),
        },
        "latency_s": args.latency,
        "repeats": args.repeats,
        "target_ratio": TARGET,
        "rows": rows,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    lines = [
        f"Corpus: {len(index)} FLAC examples, {result['corpus']['hours']:.2f} h, "
        + (
            "a plain manifest of the FLAC files (clips read whole), "
            f"{member_bytes / len(index):,.0f} file bytes per example; "
            if args.plain
            else f"{n_shards} shards, {member_bytes / len(index):,.0f} member bytes per example; "
        )
        + "1 worker, 600 s batches; "
        f"S3 (moto) or an HTTP server (tests/servers.py) behind a proxy adding {args.latency * 1000:.0f} ms per request; medians of {args.repeats} runs, "
        f"{os.cpu_count()} CPUs"
        + (
            f"; the server on CPU {cpus[-1]} only and every loader (local too) on the other "
            f"{len(cpus) - 1}, as if the storage were another machine."
            if args.server_core
            else "."
        ),
        "",
        "| loader | examples/s | audio s/s | ratio to local | first batch s | GET requests / example "
        "| GET bytes / example | server CPU s / epoch s | loader CPU s / steady s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['loader']} | {r['examples_per_s']:,.1f} | {r['audio_s_per_s']:,.0f} | {r['ratio_to_local']:.2f}× | "
            f"{r['first_batch_s']:.3f} | {r['requests_per_example']:.2f} | {r['bytes_per_example']:,.0f} | "
            f"{r['server_cpu_s']:.1f} / {r['epoch_s']:.1f} | {r['loader_cpu_s']:.1f} / {r['steady_s']:.1f} |"
        )
    lines.append("")
    for r in rows[1:3]:
        met = "met" if r["ratio_to_local"] >= TARGET else "not met"
        lines.append(
            f"Target: {r['loader']} ≥ {TARGET}× local — measured {r['ratio_to_local']:.2f}× ({met})."
        )
    lines += [
        "",
        "Server CPU: CPU seconds of the process serving the shards (moto or the HTTP server, and the proxy) "
        + (
            "over the whole epoch, on its own core; "
            if args.server_core
            else "over the whole epoch, on the same cores as the loader; "
        )
        + "epoch s: examples / examples per s. "
        "Loader CPU: CPU seconds of the loader's process and its DataLoader worker (decoding, and "
        "the range reads' threads) over the timed part of the epoch (steady s, first batch to last).",
    ]
    write_results(args.out, result, lines)


def profile(runs: dict[str, list[dict[str, float]]], args: Any, command: str) -> None:
    """``--profile``: the runs of :func:`profile_epoch` (each loader without workers) with the
    server's CPU seconds per epoch beside them; medians to ``<out>_profile.json`` and ``.md``."""
    for r in (r for kind_runs in runs.values() for r in kind_runs):
        for k in ("requests:GET", "bytes:GET"):
            r.pop(k, None)
    kinds = list(runs)
    rows = [
        {"loader": kind, **{k: statistics.median(r[k] for r in runs[kind]) for k in runs[kind][0]}}
        for kind in kinds
    ]
    local = rows[0]["examples_per_s"]
    lines = [
        "Where the time goes: each loader without DataLoader workers (all its work in one process), "
        f"the same corpus, {args.latency * 1000:.0f} ms per request, medians of {args.repeats} runs, {os.cpu_count()} CPUs.",
        "",
        "| loader | examples/s | ratio to local | steady s | loader CPU s | waiting for bytes s | server CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['loader']} | {r['examples_per_s']:,.1f} | {r['examples_per_s'] / local:.2f}× | {r['steady_s']:.1f} | "
            f"{r['loader_cpu_s']:.1f} | {r['waited_s']:.2f} | {r['server_cpu_s']:.1f} |"
        )
    lines += [
        "",
        "Loader CPU: CPU seconds of the loader's process (decoding, collating, the range reads' threads) over "
        "the steady part; waiting for bytes: seconds the range reader blocked on a range not yet read "
        "(latency not hidden); server CPU: the serving process (moto or the HTTP server, and the proxy) over "
        "the whole epoch, on the same cores.",
    ]
    write_results(args.out + "_profile", {"command": command, "rows": rows, "runs": runs}, lines)


if __name__ == "__main__":
    main()
