"""Writing a synthetic corpus: audio files and a NeMo-style JSONL manifest from a plan.

:func:`make_corpus` is :func:`~speechdata.synth.plan.plan_corpus` then :func:`write_corpus`: it
writes a folder of audio files plus a manifest whose answers can be recovered from the audio, so a
small model can learn the mapping and a test can prove that the right audio reached the right
text. Same arguments give byte-identical files.

Example::

    >>> corpus = make_corpus(tmp_path, n=20, seed=1)
    >>> line = corpus.entries[0]            # a single-audio line: one path, offset, duration
    >>> sr = soundfile.info(corpus.root / line["audio_filepath"]).samplerate
    >>> audio, sr = soundfile.read(corpus.root / line["audio_filepath"],
    ...     start=round(line["offset"] * sr), frames=round(line["duration"] * sr))
    >>> decode_tones(audio, sr) == line["answer"]
    True
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import soundfile as sf

from speechdata.synth.plan import ClipKey, CorpusPlan, plan_corpus
from speechdata.synth.synthesize import render_file

if TYPE_CHECKING:
    from speechdata.text.tokenizer import Tokenizer


@dataclass
class Corpus:
    """A corpus written by :func:`make_corpus`.

    ``manifest`` is the JSONL file, ``root`` the folder holding it (audio paths in the manifest are
    relative to it), ``entries`` the manifest lines as dicts in file order, ``hours`` the total
    audio duration of all entries (every clip counted, shared sources once per entry).
    """

    manifest: Path
    root: Path
    entries: list[dict[str, Any]]
    hours: float

    def train_tokenizer(
        self, vocab_size: int = 100, *, out_dir: str | Path | None = None, locator: str = "|audio|"
    ) -> Tokenizer:
        """A SentencePiece tokenizer trained on the answers and contexts, with ``locator`` as a
        user symbol and no byte fallback (written under ``root/tok`` unless ``out_dir``)."""
        from speechdata.text.tokenizer import train_tokenizer

        texts = [str(e[k]) for e in self.entries for k in ("answer", "context") if e.get(k)]
        out = self.root / "tok" if out_dir is None else Path(out_dir)
        return train_tokenizer(texts, out, vocab_size=vocab_size, user_symbols=[locator], byte_fallback=False)


def write_manifest(path: str | Path, entries: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``entries`` as JSONL to ``path`` (gzip-compressed, reproducibly, when it ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(orjson.dumps(dict(e)) + b"\n" for e in entries)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _seconds(samples: int, rate: int) -> float:
    """``samples / rate``, nudged up an ulp where needed so ``int(x * rate)`` and ``round(x * rate)``
    both give back ``samples`` (NeMo truncates ``offset * sr``; a float a hair low would lose one)."""
    x = samples / rate
    while x * rate < samples:
        x = math.nextafter(x, math.inf)
    return x


def _one_or_list(values: list[Any]) -> Any:
    return values if len(values) > 1 else values[0]


def write_corpus(plan: CorpusPlan, out_dir: str | Path) -> Corpus:
    """Synthesize and write every file of ``plan`` under ``out_dir``, then the manifest.

    Each line has ``audio_filepath``, ``duration`` (unless the plan has ``with_duration`` false),
    ``offset``, ``context``, ``answer`` (the clips' texts joined by spaces), ``lang`` and
    ``speaker``; a multi-audio line has lists of paths, durations and offsets. Offsets and
    durations are exact sample counts over the file's rate. Existing files of the planned names
    are overwritten, other files are left alone.
    """
    root = Path(out_dir)
    (root / plan.audio_subdir).mkdir(parents=True, exist_ok=True)
    # where each clip landed: (file path, first sample, samples, rate) and what it says
    spans: dict[ClipKey, tuple[str, int, int, int]] = {}
    said: dict[ClipKey, str] = {}
    workdir = tempfile.TemporaryDirectory(prefix="speechdata-espeak-") if plan.speech == "espeak" else None
    with workdir if workdir is not None else contextlib.nullcontext():
        for number, file in enumerate(plan.files):
            rendered = render_file(plan, number, workdir=Path(workdir.name) if workdir else None)
            for key, (start, length, text) in rendered.spans.items():
                spans[key] = (file.path, start, length, file.sample_rate)
                said[key] = text
            sf.write(
                root / file.path, rendered.pcm, file.sample_rate, subtype="PCM_16", format=file.format.upper()
            )

    entries: list[dict[str, Any]] = []
    seconds = 0.0
    for example in plan.examples:
        paths, offsets, durs = [], [], []
        for key in example.clips:
            path, start, length, rate = spans[key]
            paths.append(path)
            offsets.append(_seconds(start, rate))
            durs.append(_seconds(length, rate))
        seconds += sum(durs)
        entry: dict[str, Any] = {"audio_filepath": _one_or_list(paths)}
        if plan.with_duration:
            entry["duration"] = _one_or_list(durs)
        entry["offset"] = _one_or_list(offsets)
        entry["context"] = example.context
        entry["answer"] = " ".join(said[key] for key in example.clips)
        entry["lang"] = "en"
        entry["speaker"] = f"spk{example.speaker:02d}"
        entries.append(entry)
    manifest = write_manifest(root / plan.manifest_name, entries)
    return Corpus(manifest=manifest, root=root, entries=entries, hours=seconds / 3600.0)


def make_corpus(out_dir: str | Path, n: int = 200, **options: Any) -> Corpus:
    """Write ``n`` examples (audio files + JSONL manifest) into ``out_dir``: the corpus that
    :func:`~speechdata.synth.plan.plan_corpus` plans with these ``options`` (``seed``, ``formats``,
    ``sample_rates``, the fractions, durations, ``speech``, ``locator``, ``with_duration``,
    ``manifest_name``, ``audio_subdir``, ``gzip``: see there), written by :func:`write_corpus`.
    Same arguments give byte-identical files."""
    return write_corpus(plan_corpus(n, **options), out_dir)
