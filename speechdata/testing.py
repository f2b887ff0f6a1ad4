"""Deterministic synthetic corpora for tests, benchmarks and ``speechdata demo``.

:func:`make_corpus` writes a folder of audio files plus a NeMo-style JSONL manifest whose answers
can be recovered from the audio, so a small model can learn the mapping and a test can prove that
the right audio reached the right text.

* ``speech="tones"`` (default): every character of :data:`ALPHABET` is a sinusoid of its own
  frequency (:data:`TONE_FREQUENCIES`, evenly spaced on the mel scale between 300 and 3500 Hz, so
  it survives 8 kHz files and log-mel features alike) lasting ``seconds_per_char`` seconds with
  5 ms fades, plus a little seeded noise. Each clip has :data:`TONE_PADDING` seconds of silence on
  both sides; :func:`decode_tones` reads the text back (one windowed DFT per character).
* ``speech="espeak"``: the text is spoken by ``espeak-ng`` and converted with soundfile + soxr.
* ``speech="auto"``: espeak when ``espeak-ng`` is on ``PATH``, else tones.

The corpus mixes WAV (PCM16) and FLAC, several sample rates, mono and stereo files, multi-audio
examples (2-3 clips; the ``context`` holds one locator per clip and the answer is the clips'
texts joined by spaces) and long source files cut into segments that several entries share
through ``offset``/``duration``. Same arguments give byte-identical files.

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

import functools
import gzip as gzip_module
import math
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import soundfile as sf
import soxr

from speechdata.errors import ConfigError

if TYPE_CHECKING:
    from speechdata.text.tokenizer import Tokenizer

#: Characters the tone alphabet can spell (index = tone number).
ALPHABET = " abcdefghijklmnopqrstuvwxyz"


def _mel_spaced(lo: float, hi: float, n: int) -> np.ndarray:
    mel = np.linspace(2595.0 * np.log10(1 + lo / 700.0), 2595.0 * np.log10(1 + hi / 700.0), n)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


#: Frequency (Hz) of each character of :data:`ALPHABET`.
TONE_FREQUENCIES: np.ndarray = _mel_spaced(300.0, 3500.0, len(ALPHABET))
#: Default seconds per character (12.5 characters per second, close to read speech).
SECONDS_PER_CHAR = 0.08
#: Silence before and after the characters of a tone clip, in seconds.
TONE_PADDING = 0.05
_FADE = 0.005
_AMPLITUDE = 0.3
_NOISE = 0.002
_CHAR_INDEX = {c: i for i, c in enumerate(ALPHABET)}

#: Built-in word list (every length from 1 to 12 letters occurs, so any text length can be met).
_WORD_TEXT = """a i an as at be by do go he if in is it me my no of on or so to up we
    all and are but can day for get has her him his how its let man new not now old one our out
    say see she the two use was way who you also back been call come down each even find from
    give good have here into just know like long look make many more most much must name only
    over part said same some such take than that them then they this time very want well went
    what when will with word work year about after again audio being below could every first
    found great house large learn never other place plant point right river small sound spell
    still study their there these thing think three water where which world would write answer
    before change letter listen little number people should another
    because between country example thought through children different important language
    sentence mountain questions understand information development environment
    neighborhood relationship conversation"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
_WORDS_BY_LEN: dict[int, list[str]] = {}
for _w in WORDS:
    _WORDS_BY_LEN.setdefault(len(_w), []).append(_w)
_MAX_WORD = max(_WORDS_BY_LEN)
_SHORT_WORDS = tuple(w for w in WORDS if len(w) < _MAX_WORD)

_SINGLE_CONTEXTS = (
    "Transcribe {0}",
    "{0} What is being said?",
    "Write down what you hear: {0}",
    "Listen to {0} and repeat it.",
)
_MULTI_CONTEXTS = (
    "Transcribe {clips} in order.",
    "Repeat {clips} one after the other.",
    "What is said in {clips}?",
)
_PLAIN_CONTEXTS = ("Transcribe the audio.", "What is being said?", "Write down what you hear.")
_SPEAKERS = 8
_ESPEAK_CHARS_PER_SECOND = 17.0

# Duration model of make_corpus: log-normal with median 6 s and sigma 0.6 (about 90 % of clips
# between 2 and 15 s), truncated to [min_duration, max_duration] by inverse-CDF sampling.
DURATION_MEDIAN = 6.0
DURATION_SIGMA = 0.6


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


# ----------------------------------------------------------------------------------- tones


@functools.lru_cache(maxsize=64)
def _tone_table(sample_rate: int, length: int) -> np.ndarray:
    """``[len(ALPHABET), length]`` float32: every character's tone with its fades (read-only)."""
    t = np.arange(length)
    fade = max(1.0, _FADE * sample_rate)
    env = np.minimum(1.0, np.minimum(t + 1, length - t) / fade)
    table = _AMPLITUDE * env * np.sin((2 * np.pi / sample_rate) * TONE_FREQUENCIES[:, None] * t)
    table = table.astype(np.float32)
    table.flags.writeable = False
    return table


def synthesize_tones(
    text: str,
    sample_rate: int,
    seconds_per_char: float = SECONDS_PER_CHAR,
    *,
    rng: np.random.Generator | None = None,
    noise: float = _NOISE,
) -> np.ndarray:
    """Float32 mono signal spelling ``text`` in the tone alphabet.

    Length: ``round((2 * TONE_PADDING + len(text) * seconds_per_char) * sample_rate)`` samples.
    Character ``i`` spans samples ``round((TONE_PADDING + i * seconds_per_char) * sample_rate)``
    up to the start of the next one. Gaussian noise of std ``noise`` is added when ``rng`` is given.
    """
    try:
        codes = np.fromiter((_CHAR_INDEX[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the tone alphabet {ALPHABET!r}") from None
    total = round((2 * TONE_PADDING + len(text) * seconds_per_char) * sample_rate)
    bounds = np.round((TONE_PADDING + np.arange(len(text) + 1) * seconds_per_char) * sample_rate).astype(
        np.int64
    )
    out = np.zeros(total, dtype=np.float32)
    if len(text):
        lengths = np.diff(bounds)
        tables = {int(n): _tone_table(sample_rate, int(n)) for n in np.unique(lengths)}
        if len(tables) == 1:
            body = next(iter(tables.values()))[codes].ravel()
        else:
            body = np.concatenate(
                [tables[n][c] for c, n in zip(codes.tolist(), lengths.tolist(), strict=True)]
            )
        out[bounds[0] : bounds[-1]] = body
    if rng is not None and noise > 0:
        out += noise * rng.standard_normal(total, dtype=np.float32)
    return out


def decode_tones(audio: np.ndarray, sample_rate: int, seconds_per_char: float = SECONDS_PER_CHAR) -> str:
    """Read back the text of a tone clip (mono ``[T]`` or ``[T, channels]``, any sample rate).

    The number of characters follows from the length (``TONE_PADDING`` silence on both sides);
    each character's middle 80 % is projected onto every alphabet frequency through a Hann window
    and the strongest one wins.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    n = round((len(x) / sample_rate - 2 * TONE_PADDING) / seconds_per_char)
    if n <= 0:
        return ""
    starts = np.round((TONE_PADDING + np.arange(n) * seconds_per_char) * sample_rate).astype(np.int64)
    width = max(4, int(0.8 * seconds_per_char * sample_rate))
    first = starts + int(0.1 * seconds_per_char * sample_rate)
    first = np.clip(first, 0, max(0, len(x) - width))
    x = np.pad(x, (0, max(0, width - len(x))))
    segments = x[first[:, None] + np.arange(width)] * np.hanning(width)
    t = np.arange(width) / sample_rate
    basis = np.exp(-2j * np.pi * t[:, None] * TONE_FREQUENCIES[None, :])
    best = np.abs(segments @ basis).argmax(axis=1)
    return "".join(ALPHABET[i] for i in best)


# ----------------------------------------------------------------------------------- espeak


def _espeak(text: str, sample_rate: int, speaker: int, workdir: Path) -> np.ndarray:
    """Speak ``text`` with espeak-ng (pitch from ``speaker``) and resample to ``sample_rate``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("speech='espeak': espeak-ng is not installed (not found on PATH)")
    wav = workdir / "espeak.wav"
    pitch = 20 + 60 * speaker // max(1, _SPEAKERS - 1)
    cmd = [exe, "-v", "en-us", "-s", "170", "-p", str(pitch), "-w", str(wav), text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(f"espeak-ng failed ({proc.returncode}): {err[0] if err else 'no message'}")
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if sr != sample_rate:
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


# ------------------------------------------------------------------------------ distributions


def _truncated_lognormal(
    rng: np.random.Generator, n: int, lo: float, hi: float, median: float, sigma: float
) -> np.ndarray:
    """``n`` draws of a log-normal (``median``, ``sigma``) restricted to ``[lo, hi]`` (inverse CDF)."""
    dist = NormalDist(math.log(median), sigma)
    c_lo, c_hi = dist.cdf(math.log(lo)), dist.cdf(math.log(hi))
    u = c_lo + rng.random(n) * (c_hi - c_lo)
    u = np.clip(u, 1e-12, 1 - 1e-12)
    z = np.array([dist.inv_cdf(float(p)) for p in u])
    return np.clip(np.exp(z), lo, hi)


def librispeech_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """``n`` utterance durations (float32 seconds) spread like LibriSpeech's training sets.

    An approximation, not fitted data: LibriSpeech segments cluster just below its ~16-17 s
    segmentation target with a long tail of short utterances and a thin tail up to ~35 s. This is
    modelled as a mixture of 70 % normal(14.8 s, 1.4 s), 24 % log-normal (median 6 s, sigma 0.6)
    and 6 % 17 s + exponential(4 s), clipped to [1, 35] s: mostly 10-17 s, mean about 12.5 s.
    """
    rng = np.random.default_rng([int(seed), 0x11B5])
    part = rng.choice(3, size=n, p=[0.70, 0.24, 0.06])
    main = rng.normal(14.8, 1.4, n)
    short = np.exp(rng.normal(math.log(6.0), 0.6, n))
    tail = 17.0 + rng.exponential(4.0, n)
    out = np.where(part == 0, main, np.where(part == 1, short, tail))
    return np.clip(out, 1.0, 35.0).astype(np.float32)


# ----------------------------------------------------------------------------------- manifest


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


# ------------------------------------------------------------------------------------ corpus


def _seconds(samples: int, rate: int) -> float:
    """``samples / rate``, nudged up an ulp where needed so ``int(x * rate)`` and ``round(x * rate)``
    both give back ``samples`` (NeMo truncates ``offset * sr``; a float a hair low would lose one)."""
    x = samples / rate
    while x * rate < samples:
        x = math.nextafter(x, math.inf)
    return x


def _make_text(rng: np.random.Generator, n_chars: int) -> str:
    """Words from :data:`WORDS` joined by single spaces, exactly ``n_chars`` characters long."""
    words: list[str] = []
    length = 0
    while length < n_chars:
        room = n_chars - length - (1 if words else 0)
        # Never leave a gap of exactly one character: it could not hold " word".
        if room <= _MAX_WORD:
            choice: Sequence[str] = _WORDS_BY_LEN[room]
        elif room - 1 == _MAX_WORD:
            choice = _SHORT_WORDS
        else:
            choice = WORDS
        words.append(choice[int(rng.integers(len(choice)))])
        length += len(words[-1]) + (1 if len(words) > 1 else 0)
    return " ".join(words)


def _spread(rng: np.random.Generator, values: Sequence[Any], n: int) -> list[Any]:
    """``n`` items cycling through ``values`` (each occurs when ``n >= len(values)``), shuffled."""
    items = [values[i % len(values)] for i in range(n)]
    return [items[i] for i in rng.permutation(n)]


def _context(rng: np.random.Generator, locator: str | None, k: int) -> str:
    if locator is None:
        return _PLAIN_CONTEXTS[int(rng.integers(len(_PLAIN_CONTEXTS)))]
    if k == 1:
        return _SINGLE_CONTEXTS[int(rng.integers(len(_SINGLE_CONTEXTS)))].format(locator)
    clips = ", ".join([locator] * (k - 1)) + f" and {locator}"
    return _MULTI_CONTEXTS[int(rng.integers(len(_MULTI_CONTEXTS)))].format(clips=clips)


def _check_args(
    n: int,
    formats: Sequence[str],
    sample_rates: Sequence[int],
    fractions: Mapping[str, float],
    min_duration: float,
    max_duration: float,
    speech: str,
    locator: str | None,
    seconds_per_char: float,
) -> str:
    if n < 0:
        raise ConfigError(f"make_corpus: n must be >= 0, got {n}")
    if not formats or any(f not in ("wav", "flac") for f in formats):
        raise ConfigError(f"make_corpus: formats must be a non-empty list of 'wav'/'flac', got {formats!r}")
    if not sample_rates or any(int(r) <= 0 for r in sample_rates):
        raise ConfigError(f"make_corpus: sample_rates must be positive, got {sample_rates!r}")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"make_corpus: {name} must be in [0, 1], got {value}")
    if not 0 < min_duration <= max_duration:
        raise ConfigError(
            f"make_corpus: need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}"
        )
    if seconds_per_char <= 0:
        raise ConfigError(f"make_corpus: seconds_per_char must be positive, got {seconds_per_char}")
    if fractions["multi_audio_fraction"] > 0 and not locator:
        raise ConfigError("make_corpus: multi_audio_fraction > 0 needs a locator (e.g. '|audio|')")
    if speech == "auto":
        speech = "espeak" if shutil.which("espeak-ng") else "tones"
    if speech not in ("tones", "espeak"):
        raise ConfigError(f"make_corpus: speech must be 'tones', 'espeak' or 'auto', got {speech!r}")
    if speech == "tones" and min(sample_rates) < 2 * TONE_FREQUENCIES[-1] * 1.1:
        raise ConfigError(f"make_corpus: tones need sample rates >= 8000, got {min(sample_rates)}")
    if speech == "espeak" and shutil.which("espeak-ng") is None:
        raise ConfigError("make_corpus: speech='espeak' needs espeak-ng on PATH")
    return speech


def make_corpus(
    out_dir: str | Path,
    n: int = 200,
    *,
    seed: int = 0,
    formats: Sequence[str] = ("wav", "flac"),
    sample_rates: Sequence[int] = (8000, 16000, 22050, 44100),
    stereo_fraction: float = 0.1,
    multi_audio_fraction: float = 0.1,
    shared_source_fraction: float = 0.1,
    min_duration: float = 0.5,
    max_duration: float = 30.0,
    speech: str = "tones",
    locator: str | None = "|audio|",
    seconds_per_char: float = SECONDS_PER_CHAR,
    with_duration: bool = True,
    manifest_name: str = "manifest.jsonl",
    audio_subdir: str = "audio",
    gzip: bool = False,
) -> Corpus:
    """Write ``n`` examples (audio files + JSONL manifest) into ``out_dir``; same arguments give
    byte-identical files.

    Clip durations follow a log-normal with median :data:`DURATION_MEDIAN` s and sigma
    :data:`DURATION_SIGMA` truncated to ``[min_duration, max_duration]`` (most clips 2-15 s); a
    tone clip's text length is chosen to meet its duration (``len(text) * seconds_per_char`` plus
    ``2 * TONE_PADDING``), espeak clips are measured. Each audio file gets a format, a sample rate
    (both cycled so that every value occurs once there are enough files) and mono or stereo
    (``stereo_fraction`` of the files, rounded up).

    ``multi_audio_fraction`` of the examples (rounded up) have 2-3 clips: ``audio_filepath``,
    ``duration`` and ``offset`` are lists, the context holds one ``locator`` per clip and the
    answer is the clips' texts joined by spaces. About ``shared_source_fraction`` of the
    single-audio examples are segments of long source files (2-4 segments per file, back to back)
    addressed by ``offset``/``duration``; those need a duration, so there are none when
    ``with_duration`` is false (then no line has ``duration``). Every line also has ``lang`` and
    ``speaker``. ``gzip`` appends ``.gz`` to ``manifest_name`` and compresses it. Offsets and
    durations are exact sample counts over the file's rate. Files are named by number under
    ``audio_subdir``; existing files of those names are overwritten, other files are left alone.
    """
    fractions = {
        "stereo_fraction": stereo_fraction,
        "multi_audio_fraction": multi_audio_fraction,
        "shared_source_fraction": shared_source_fraction,
    }
    speech = _check_args(
        n, formats, sample_rates, fractions, min_duration, max_duration, speech, locator, seconds_per_char
    )
    root = Path(out_dir)
    (root / audio_subdir).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 0x5D])

    # Plan: clips per example, which single-audio examples share a source file.
    n_multi = min(n, math.ceil(multi_audio_fraction * n - 1e-9))
    multi = set(rng.choice(n, size=n_multi, replace=False).tolist()) if n_multi else set()
    clips_per = [int(rng.integers(2, 4)) if i in multi else 1 for i in range(n)]
    singles = [i for i in range(n) if i not in multi]
    n_shared = min(len(singles), math.ceil(shared_source_fraction * len(singles) - 1e-9))
    if not with_duration or n_shared < 2:
        n_shared = 0
    shared = [singles[j] for j in rng.permutation(len(singles))[:n_shared]]
    groups: list[list[int]] = []
    while shared:
        size = min(len(shared), int(rng.integers(2, 5)))
        if len(shared) - size == 1:
            size += 1
        groups.append(shared[:size])
        shared = shared[size:]
    group_of = {i: g for g, members in enumerate(groups) for i in members}

    # Files, each a list of the clips it holds back to back: one per group, else one per clip.
    files: list[list[tuple[int, int]]] = []
    for i in range(n):
        if i in group_of:
            if groups[group_of[i]][0] == i:
                files.append([(m, 0) for m in groups[group_of[i]]])
        else:
            files.extend([(i, c)] for c in range(clips_per[i]))
    n_files = len(files)
    file_format = _spread(rng, list(formats), n_files)
    file_rate = _spread(rng, [int(r) for r in sample_rates], n_files)
    n_stereo = min(n_files, math.ceil(stereo_fraction * n_files - 1e-9))
    stereo = set(rng.permutation(n_files)[:n_stereo].tolist())

    # Durations and texts per clip.
    hi_multi = max_duration / 2 if max_duration / 2 >= min_duration else max_duration
    speakers = rng.integers(_SPEAKERS, size=n)
    durations: dict[tuple[int, int], float] = {}
    for i in range(n):
        hi = hi_multi if clips_per[i] > 1 else max_duration
        d = _truncated_lognormal(rng, clips_per[i], min_duration, hi, DURATION_MEDIAN, DURATION_SIGMA)
        for c in range(clips_per[i]):
            durations[(i, c)] = float(d[c])
    chars_per_second = 1 / seconds_per_char if speech == "tones" else _ESPEAK_CHARS_PER_SECOND
    pad = 2 * TONE_PADDING if speech == "tones" else 0.0
    lo_chars = max(1, math.ceil((min_duration - pad) * chars_per_second - 1e-9))
    hi_chars = max(lo_chars, math.floor((max_duration - pad) * chars_per_second + 1e-9))
    texts = {
        key: _make_text(rng, int(np.clip(round((d - pad) * chars_per_second), lo_chars, hi_chars)))
        for key, d in durations.items()
    }

    with tempfile.TemporaryDirectory(prefix="speechdata-espeak-") as tmp:

        def clip_audio(key: tuple[int, int], rate: int) -> np.ndarray:
            noise_rng = np.random.default_rng([int(seed), 0xA0D, key[0], key[1]])
            if speech == "tones":
                return synthesize_tones(texts[key], rate, seconds_per_char, rng=noise_rng)
            audio = _espeak(texts[key], rate, int(speakers[key[0]]), Path(tmp))
            # Too long: speak fewer words (the text must stay what is said); too short: pad silence.
            while len(audio) > max_duration * rate and " " in texts[key]:
                texts[key] = texts[key].rsplit(" ", 1)[0]
                audio = _espeak(texts[key], rate, int(speakers[key[0]]), Path(tmp))
            return np.pad(audio, (0, max(0, math.ceil(min_duration * rate) - len(audio))))

        # Synthesize and write every file; remember (path, first sample, samples, rate) per clip.
        spans: dict[tuple[int, int], tuple[str, int, int, int]] = {}
        for f, keys in enumerate(files):
            rate = file_rate[f]
            rel = f"{audio_subdir}/{f:06d}.{file_format[f]}"
            pieces, start = [], 0
            for key in keys:
                audio = clip_audio(key, rate)
                spans[key] = (rel, start, len(audio), rate)
                pieces.append(audio)
                start += len(audio)
            signal = np.concatenate(pieces)
            if f in stereo:
                echo_rng = np.random.default_rng([int(seed), 0x57E, f])
                right = 0.8 * signal + echo_rng.normal(0.0, _NOISE, len(signal)).astype(np.float32)
                signal = np.stack([signal, right], axis=1)
            pcm = np.round(np.clip(signal, -1.0, 32767 / 32768) * 32768).astype(np.int16)
            sf.write(root / rel, pcm, rate, subtype="PCM_16", format=file_format[f].upper())

    entries: list[dict[str, Any]] = []
    seconds = 0.0
    for i in range(n):
        paths, offsets, durs = [], [], []
        for c in range(clips_per[i]):
            rel, start, length, rate = spans[(i, c)]
            paths.append(rel)
            offsets.append(_seconds(start, rate))
            durs.append(_seconds(length, rate))
        seconds += sum(durs)
        entry: dict[str, Any] = {"audio_filepath": paths if len(paths) > 1 else paths[0]}
        if with_duration:
            entry["duration"] = durs if len(durs) > 1 else durs[0]
        entry["offset"] = offsets if len(offsets) > 1 else offsets[0]
        entry["context"] = _context(rng, locator, clips_per[i])
        entry["answer"] = " ".join(texts[(i, c)] for c in range(clips_per[i]))
        entry["lang"] = "en"
        entry["speaker"] = f"spk{int(speakers[i]):02d}"
        entries.append(entry)

    name = manifest_name + ".gz" if gzip and not manifest_name.endswith(".gz") else manifest_name
    manifest = write_manifest(root / name, entries)
    return Corpus(manifest=manifest, root=root, entries=entries, hours=seconds / 3600.0)
