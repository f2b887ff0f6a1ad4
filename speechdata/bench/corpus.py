"""What ``speechdata bench`` measures: the dataset config, its Index, its clip spans, their summary.

* :func:`load_dataset` reads the input (a YAML config, a manifest, or a folder of manifests or of a
  tarred dataset) into a :class:`~speechdata.config.DatasetConfig`;
* :func:`dataset_index` indexes it and :func:`train_default_tokenizer` trains the small tokenizer
  used when none is given;
* :func:`corpus_clips` lists the clip spans of the examples the loader keeps: spans of plain audio
  files, or of the members of a tarred dataset's tars located by byte offset, which every peer
  then reads; :func:`corpus_summary` sums them up;
* :func:`small_corpus_warning` says when a run would time too few batches to mean something.

Example::

    >>> cfg, tok = load_dataset("shards/", ["num_workers=1"])
    >>> clips = corpus_clips(dataset_index(cfg), cfg)
    >>> corpus_summary(clips)["audios"]
    1081
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speechdata.audio import AudioInfo, audio_info, check_span
from speechdata.bench.clips import Clip
from speechdata.config import DatasetConfig, dataset_config, load_config
from speechdata.errors import ConfigError, DataError, DropCounter, SpeechDataError, handle
from speechdata.inspect import resolve_manifests
from speechdata.manifest import Index, Record, load_index, manifest_keys
from speechdata.sampling.filters import filter_mask
from speechdata.sampling.plan import plan_epoch
from speechdata.shards.read import TarredDataset, local_path, tarred_dataset_folders
from speechdata.storage import is_remote
from speechdata.text.prompt import PromptBuilder
from speechdata.text.tokenizer import load_tokenizer

#: Dataset settings of a manifest given on its own (overridable).
MANIFEST_DEFAULTS: dict[str, Any] = {
    "batch_duration": 600.0,
    "max_duration": None,
    "min_duration": None,
    "num_workers": 1,
    "default_context": "Transcribe the audio.",
}
#: Batches after the first that a run must time, per DataLoader worker (and at least this many
#: without workers), for its steady-state figures to mean something: while the clock waits for
#: the first batch every worker is already decoding its own first batch, so up to one batch per
#: worker arrives almost free afterwards; with 10 timed batches per worker that head start moves
#: the rate by about 10% at most, and 10 batches average out one slow batch.
MIN_TIMED_BATCHES = 10


# ------------------------------------------------------------------------------- the input


def _prefixed(overrides: Sequence[str], prefix: str) -> list[str]:
    return [o if o.startswith(("model.", f"{prefix}.")) else f"{prefix}.{o}" for o in overrides]


def _local_only(path: str) -> None:
    """A :class:`ConfigError` for an object-storage URL: bench measures local data."""
    if is_remote(path):
        raise ConfigError(
            f"{path}: speechdata bench measures data on local disk against the decode floor of the "
            "same files; for object storage run benchmarks/bench_remote.py (docs/object-storage.md)"
        )


def load_dataset(
    source: str | Path, overrides: Sequence[str] = (), section: str = "train_ds"
) -> tuple[DatasetConfig, str | None]:
    """The dataset config ``bench`` measures, and the config's tokenizer path (if it names one).

    ``source`` is a YAML config, a manifest, or a folder of manifests / a tarred dataset (or the
    ``bucket*`` datasets of one).
    """
    _local_only(str(source))
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        whole = load_config(path, overrides)
        from omegaconf import OmegaConf

        tok = OmegaConf.select(whole, "model.tokenizer.model", default=None)
        cfg = dataset_config(whole, section)
        for m in cfg.manifests:
            _local_only(m)
        return cfg, (str(tok) if tok else None)
    manifests, tarred = resolve_manifests([str(path)])
    values: dict[str, Any] = {**MANIFEST_DEFAULTS, "manifest_filepath": manifests}
    if tarred:
        specs = []
        for folder in tarred_dataset_folders(path):  # one dataset, or its bucket* datasets
            tars = sorted(folder.glob("audio_*.tar"))
            if not tars:
                raise SpeechDataError(f"{folder}: tarred_audio_manifest.json but no audio_*.tar beside it")
            specs.append(str(folder / f"audio__OP_0..{len(tars) - 1}_CL_.tar"))
        values.update(
            is_tarred=True, tarred_audio_filepaths=specs[0] if len(specs) == 1 else [[s] for s in specs]
        )
    whole = load_config({"model": {section: values}}, _prefixed(overrides, f"model.{section}"))
    return dataset_config(whole, section), None


def dataset_index(cfg: DatasetConfig, tokenizer: str | Path | None = None) -> Index:
    """The Index of ``cfg``'s manifests: with the loader's key settings when ``tokenizer`` is given
    (so the loader finds it cached), else with lenient ones (no context required, bad lines
    skipped), which is enough to read the text for a tokenizer."""
    if tokenizer is None:
        return load_index(cfg.manifests, manifest_keys(cfg), on_error="skip", cache_dir=cfg.cache_dir)
    builder = PromptBuilder(cfg, load_tokenizer(tokenizer))
    return load_index(
        cfg.manifests,
        manifest_keys(cfg, builder.needs_context),
        on_error=cfg.on_error,
        cache_dir=cfg.cache_dir,
    )


def train_default_tokenizer(index: Index, cfg: DatasetConfig, out_dir: str | Path) -> str:
    """A small SentencePiece model (no byte fallback) on the manifests' text; returns its path."""
    from speechdata.text.tokenizer import train_tokenizer
    from speechdata.text.train_cli import tokenizer_texts

    symbols = [s for s in (cfg.audio_locator, cfg.end_string) if s]
    texts = list(tokenizer_texts(index, cfg.default_context, progress=False))
    train_tokenizer(texts, out_dir, 1024, user_symbols=symbols, byte_fallback=False)
    return str(Path(out_dir) / "tokenizer.model")


# ------------------------------------------------------------------------------- the clips


class _TarMembers:
    """A tarred dataset's members where the loader finds them (:meth:`TarredDataset.member_places`:
    the entry's ``tar_offset``/``tar_size``, else the shard's member table), read by offset."""

    def __init__(self, cfg: DatasetConfig, index: Index) -> None:
        self.tarred = TarredDataset(cfg, index=index)
        if not self.tarred.seekable or self.tarred.remote:
            raise ConfigError(
                "--compare reads a tarred dataset's members by byte offset: its shards must be local "
                "files (not pipe: commands or URLs)"
            )

    def close(self) -> None:
        """Close the tars."""
        self.tarred.close()


def _clip_fields(
    rec: Record, k: int, members: _TarMembers | None, infos: dict[str, AudioInfo]
) -> dict[str, Any]:
    """The :class:`Clip` fields of clip ``k`` of ``rec``: where its audio is, and its span by the
    reader's own rule (:func:`~speechdata.audio.check_span` on the header), so a clip the loader
    cannot read is a :class:`DataError` here too."""
    where = f"{rec.where}: {rec.describe_audio(k)}"
    name = rec.audio[k]
    place: dict[str, Any]
    if members is None:
        info = infos.get(name)
        if info is None:
            info = infos[name] = audio_info(name, where)
        place = {"path": name}
    else:
        at = members.tarred.member_places(rec)[k]
        info = audio_info(members.tarred.read_member(at), where)
        tar = str(local_path(at.tar))
        place = {
            "path": tar,
            "member": at.name,
            "member_offset": at.member.offset,
            "member_size": at.member.size,
        }
    start, frames = check_span(info.sample_rate, info.frames, rec.offset[k], rec.duration[k], where)
    return {
        **place,
        "start": start,
        "frames": frames,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "file_frames": info.frames,
        "format": info.format,
    }


def corpus_clips(index: Index, cfg: DatasetConfig) -> list[Clip]:
    """Every clip span of the examples the loader keeps (filters applied), in manifest order.

    A tarred dataset's clips are spans of tar members: each member is located in its tar (by the
    tar's member table) and its header read from its bytes, read by offset. An example with a clip
    the loader could not read either is dropped or raised per ``cfg.on_error``, as the loader does.
    """
    keep = filter_mask(index, cfg, DropCounter())
    drops = DropCounter()
    members = _TarMembers(cfg, index) if cfg.is_tarred else None
    infos: dict[str, AudioInfo] = {}  # plain files: one header per file
    clips: list[Clip] = []
    examples = 0
    try:
        for i in np.flatnonzero(keep):
            try:
                rec = index.record(int(i))
                fields = [_clip_fields(rec, k, members, infos) for k in range(len(rec.audio))]
            except DataError as err:
                handle(err, cfg.on_error, drops)
                continue
            clips += [Clip(example=examples, clip=k, text=rec.answer, **f) for k, f in enumerate(fields)]
            examples += 1
    finally:
        if members is not None:
            members.close()
    return clips


def corpus_summary(clips: Sequence[Clip]) -> dict[str, Any]:
    """Examples, clips, hours, formats and sample rates of a clip list."""
    seconds = [c.seconds for c in clips]
    return {
        "examples": len({c.example for c in clips}),
        "audios": len(clips),
        "hours": sum(seconds) / 3600.0,
        "mean_clip_s": float(np.mean(seconds)) if seconds else 0.0,
        "multi_audio_examples": len({c.example for c in clips if c.clip > 0}),
        "formats": dict(Counter(c.format for c in clips)),
        "sample_rates": dict(Counter(str(c.sample_rate) for c in clips)),
    }


def index_summary(index: Index, cfg: DatasetConfig) -> dict[str, Any]:
    """:func:`corpus_summary`'s counts from the Index alone (the kept examples), for a dataset whose
    clips are not read before the runs (streamed shards)."""
    keep = filter_mask(index, cfg, DropCounter())
    seconds = float(index.duration[keep].sum())
    audios = index.num_audios[keep]
    return {
        "examples": int(keep.sum()),
        "audios": int(audios.sum()),
        "hours": seconds / 3600.0,
        "mean_clip_s": seconds / int(audios.sum()) if audios.sum() else 0.0,
        "multi_audio_examples": int((audios > 1).sum()),
        "formats": {},
        "sample_rates": {},
    }


def warm_page_cache(paths: Sequence[str]) -> None:
    """Read each file once (so the first timed run does not pay for the disk)."""
    for p in dict.fromkeys(paths):
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def small_corpus_warning(
    index: Index, cfg: DatasetConfig, *, epochs: int = 1, max_batches: int | None = None
) -> str | None:
    """A one-line warning when a run would time fewer than ``MIN_TIMED_BATCHES`` batches per
    worker (at least ``MIN_TIMED_BATCHES``) after its first, else ``None``.

    The batches per run are epoch 0's plan for one rank (filters applied) times ``epochs``,
    capped by ``max_batches``. A corpus with nothing kept is left to the loader's own error.
    """
    keep = filter_mask(index, cfg, DropCounter())
    if not keep.any():
        return None
    per_epoch = len(plan_epoch(index, keep, cfg, epoch=0))
    per_run = per_epoch * epochs if max_batches is None else min(per_epoch * epochs, max_batches)
    need = MIN_TIMED_BATCHES * max(1, cfg.num_workers)
    timed = max(0, per_run - 1)
    if timed >= need:
        return None
    seconds = float(index.duration[keep].sum())
    capped = max_batches is not None and max_batches < per_epoch * epochs
    fix = "raise --max-batches" if capped else "give more data or --epochs, or a smaller --batch-duration"
    return (
        f"the corpus is too small to measure: a run times {timed} batch(es) after the first "
        f"({int(keep.sum())} examples, {seconds:.0f} s of audio, {per_epoch} batch(es) per epoch, "
        f"{epochs} epoch(s)), and steady-state figures need at least {need} "
        f"({MIN_TIMED_BATCHES} per worker: each worker decodes its first batch while the clock waits "
        f"for the first one); {fix}"
    )
