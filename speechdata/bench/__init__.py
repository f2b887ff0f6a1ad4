"""``speechdata bench``: how fast the loader delivers batches, against the decode floor and peers.

The input is a YAML config (its ``train_ds`` section, under ``model.`` or at the top level;
``--section`` picks another), a manifest (a dataset config with ``batch_duration`` 600 s, no
duration filters and one worker), or a folder (manifests, or a tarred dataset or the ``bucket*``
datasets of one). Dotted overrides follow the input (``model.train_ds.num_buckets=16``; for a
manifest, bare dataset keys such as ``num_buckets=16``).

Every run happens in a fresh process (:mod:`speechdata.bench.peers`) and is repeated
``--repeats`` times, peers interleaved; each figure is the median over the repeats. Measured for
speechdata's loader: audio seconds per second and examples per second (steady state, after the
first batch), padding fraction (``1 - valid samples / (A × T)`` summed over batches), time to first
batch (from the start of ``build_dataloader`` to the first batch in hand), peak RSS (the process
plus its largest worker) and the drops of ``loader.report()``. ``--compare`` adds, on the same clip
spans and batch budget: the soundfile decode floor, lhotse (DynamicBucketingSampler +
``collate_audio``) and webdataset + soundfile (fixed-size batches of
``floor(batch_duration / mean clip duration)``). On a tarred dataset the floor decodes the same
tar members, read by byte offset, webdataset reads the same tars, and lhotse (no reader for NeMo
tarred datasets) is skipped. Peers that cannot be imported are reported as skipped, with the
reason. A corpus too small for steady-state figures (see :func:`small_corpus_warning`) is measured
anyway, with a warning in the log and the table.

The modules: :mod:`~speechdata.bench.corpus` (the input, its clip spans and summary),
:mod:`~speechdata.bench.clips` (a clip span and how it is decoded), :mod:`~speechdata.bench.peers`
(the timed runs, one per child process), :mod:`~speechdata.bench.measure` (the runs of one
benchmark), :mod:`~speechdata.bench.report` (medians, table, chart) and
:mod:`~speechdata.bench.command` (the command's options). Names are imported on first use, so a
peer's child process (``python -m speechdata.bench.peers``) imports only what its peer needs.

Example::

    $ speechdata bench train.jsonl --compare --repeats 3 --md bench.md --png bench.png --json bench.json

    >>> from speechdata.bench import load_dataset, run_benchmark
    >>> cfg, tok = load_dataset("shards/")
    >>> run_benchmark(cfg, tok, compare=True).markdown()
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "HELP": "speechdata.bench.command",
    "add_arguments": "speechdata.bench.command",
    "run": "speechdata.bench.command",
    "run_benchmark": "speechdata.bench.measure",
    "run_child": "speechdata.bench.measure",
    "BenchResult": "speechdata.bench.report",
    "PeerResult": "speechdata.bench.report",
    "FIGURES": "speechdata.bench.report",
    "summarize": "speechdata.bench.report",
    "plot": "speechdata.bench.report",
    "machine_info": "speechdata.bench.report",
    "MANIFEST_DEFAULTS": "speechdata.bench.corpus",
    "MIN_TIMED_BATCHES": "speechdata.bench.corpus",
    "load_dataset": "speechdata.bench.corpus",
    "dataset_index": "speechdata.bench.corpus",
    "train_default_tokenizer": "speechdata.bench.corpus",
    "corpus_clips": "speechdata.bench.corpus",
    "corpus_summary": "speechdata.bench.corpus",
    "small_corpus_warning": "speechdata.bench.corpus",
    "Clip": "speechdata.bench.clips",
    "Job": "speechdata.bench.peers",
    "Meter": "speechdata.bench.peers",
    "RunFigures": "speechdata.bench.peers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speechdata.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
