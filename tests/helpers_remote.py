"""Shared pieces of the object-storage tests (tests/test_remote.py, tests/test_remote_plain.py):
the proxy's faults and the readers' fast retries, the dataset config both build loaders from,
clients routed through a proxy, epochs read back as (sample id, audio bytes), a resumed run's
ids, fault counts, and manifests whose clips are URLs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from servers import FaultProxy, fake_aws_env

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.storage import reset_filesystems
from speechdata.synth.corpus import write_manifest

LOCATOR = "|audio|"
#: Latency and faults of the proxy in front of the servers (the issue's 20-50 ms, 503s, resets,
#: truncated bodies); each request is faulted at most twice in a row, readers retry 5 times.
FAULTS: dict[str, Any] = {"latency": (0.02, 0.05), "p_503": 0.06, "p_reset": 0.04, "p_truncate": 0.04}
#: Reader settings that keep the tests quick: short backoff, a timeout that still fails a hang.
FAST = {
    "SPEECHDATA_REMOTE_BACKOFF": "0.01",
    "SPEECHDATA_REMOTE_TIMEOUT": "10",
}


def remote_cfg(manifest: str | Path, workers: int = 0, **kw: Any) -> Any:
    """The dataset config of the object-storage tests over ``manifest`` (3 examples a batch,
    every duration kept, seed 4); ``kw`` adds or overrides keys (``is_tarred``, ``on_error``...)."""
    return make_dataset_config(
        {
            "manifest_filepath": str(manifest),
            "audio_locator": LOCATOR,
            "prompt_template": "Q: {context}\nA: {answer}",
            "micro_batch_size": 3,
            "drop_last": False,
            "min_duration": None,
            "max_duration": None,
            "num_workers": workers,
            "seed": 4,
            **kw,
        }
    )


def through_proxy(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, **env: str) -> FaultProxy:
    """Route this test's S3 clients (and its DataLoader workers') through ``proxy``: its URL as
    ``AWS_ENDPOINT_URL``, fake credentials, :data:`FAST` and ``env`` set for the test, cached
    filesystems dropped and the proxy's counts started again; returns ``proxy``."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    for k, v in {**fake_aws_env(), **FAST, **env}.items():
        monkeypatch.setenv(k, v)
    reset_filesystems()
    proxy.reset_counts()
    return proxy


def faults(proxy: FaultProxy) -> int:
    """How many faults ``proxy`` injected since its counts were last reset."""
    return sum(v for k, v in proxy.counts.items() if k.startswith("fault:"))


def epochs(loader: Any, n: int) -> list[list[tuple[int, bytes]]]:
    """Per batch: (sample_id, the example's audio bytes) for every example, over ``n`` epochs."""
    out = []
    while loader.epoch < n:
        for b in loader:
            sig, lens = b["audio_signal"], b["audio_signal_length"]
            out.append(
                [
                    (int(sid), sig[k, : int(lens[k])].numpy().tobytes())
                    for k, sid in enumerate(b["sample_ids"].tolist())
                ]
            )
    return out


def sample_ids(batches: list[list[tuple[int, bytes]]]) -> list[list[int]]:
    """The sample ids of :func:`epochs`' batches."""
    return [[sid for sid, _ in b] for b in batches]


def resumed_ids(cfg: Any, tokenizer: Any, after: int, n: int) -> list[list[int]]:
    """Sample ids of ``n`` epochs read with a stop: ``after`` batches of one loader, then a new
    loader resumed from its ``state_dict`` reads the rest (equal to an unbroken run's when
    resuming is exact)."""
    loader = build_dataloader(cfg, tokenizer)
    head = []
    for b in loader:
        head.append(b["sample_ids"].tolist())
        if len(head) == after:
            break
    resumed = build_dataloader(cfg, tokenizer)
    resumed.load_state_dict(loader.state_dict())
    return head + sample_ids(epochs(resumed, n))


def as_list(v: Any) -> list[Any]:
    """A manifest field that is one value or a list of them, as a list."""
    return v if isinstance(v, list) else [v]


def url_manifest(
    entries: Iterable[dict[str, Any]], base: str, out: Path, extra: Iterable[dict[str, Any]] = ()
) -> Path:
    """Write ``entries`` to ``out`` with each clip's relative path ``p`` named ``base/p``, then the
    ``extra`` lines as they are; returns ``out``."""
    lines = []
    for e in entries:
        paths = [f"{base}/{a}" for a in as_list(e["audio_filepath"])]
        lines.append({**e, "audio_filepath": paths if len(paths) > 1 else paths[0]})
    return write_manifest(out, [*lines, *extra])
