"""A shard job whose output folder is an object-storage URL (``s3://``, ``gs://``, ...).

The job is written to a local staging folder first (``<cache folder>/shard_staging/<digest of
the URL>``: a rerun on the same machine reuses its finished shards, as a local job does), then
each file is uploaded as one object through fsspec: the tars and per-shard manifests first, then
each dataset folder's ``tarred_audio_manifest.json`` and ``metadata.yaml`` (bucket folders before
the top folder), so a reader never finds a manifest whose shards are not there yet. An object that already holds a file of the same
size is not uploaded again (a rerun after a failed upload sends only the rest). Each upload is
retried like a range read (:mod:`speechdata.storage.retry`); the staging folder's bookkeeping
(``.speechdata/``) stays local.

Example::

    >>> report = write_shards(["train.jsonl"], "s3://bucket/train_tarred", ShardOptions(num_shards=8))
    >>> report.out_dir
    's3://bucket/train_tarred'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from speechdata.cache import cache_folder
from speechdata.errors import SpeechDataError
from speechdata.storage.fs import filesystem
from speechdata.storage.options import RemoteOptions
from speechdata.storage.retry import call_with_retries

__all__ = ["LAST", "staging_folder", "upload_dataset"]

#: Files uploaded after every other file of a dataset folder, in this order (as the local writer
#: writes them): what a reader opens first.
LAST = ("tarred_audio_manifest.json", "metadata.yaml")


def staging_folder(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder a job for output ``url`` is written to before upload."""
    digest = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    return cache_folder("shard_staging", cache_dir) / digest


def _order(local: Path, skip: str) -> list[Path]:
    """Every file under ``local`` but the ``skip`` folder, the :data:`LAST` ones last (nested
    datasets' before the top folder's)."""
    files = [p for p in local.rglob("*") if p.is_file() and skip not in p.relative_to(local).parts]

    def key(p: Path) -> tuple[int, int, int, str]:
        rel = p.relative_to(local)
        if p.name in LAST and rel.parent.name != "sharded_manifests":
            return (1, -len(rel.parts), LAST.index(p.name), str(rel))
        return (0, 0, 0, str(rel))

    return sorted(files, key=key)


def upload_dataset(
    local: Path,
    url: str,
    *,
    skip: str,
    options: RemoteOptions | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[int, int]:
    """Upload the dataset folder ``local`` to ``url`` (see the module docstring); ``skip`` is
    the bookkeeping folder left out. Returns ``(objects uploaded, objects already there)``."""
    options = options or RemoteOptions.from_env()
    fs, root = filesystem(url, options.timeout)
    uploaded = kept = 0
    for path in _order(local, skip):
        rel = path.relative_to(local).as_posix()
        target = f"{root.rstrip('/')}/{rel}"
        size = path.stat().st_size
        try:
            if fs.exists(target) and fs.size(target) == size:
                kept += 1
                progress(size)
                continue
            call_with_retries(
                lambda path=path, target=target: fs.put_file(str(path), target),
                options,
                seed=0,
                url=f"{url.rstrip('/')}/{rel}",
            )
        except OSError as e:
            raise SpeechDataError(f"{url.rstrip('/')}/{rel}: upload failed: {e}") from None
        uploaded += 1
        progress(size)
    return uploaded, kept
