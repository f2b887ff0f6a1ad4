"""Text-stage benchmark: PromptBuilder (format + tokenize + truncate) against the tokenizer's own encode.

Run: ``python benchmarks/bench_text.py [--n 100000] [--repeats 5] [--vocab-size 2000] [--seed 0]
[--tokenizer sentencepiece|hf] [--out results/text.md]``

``--n`` synthetic examples (a context of 4-15 words, an answer of 3-40 words, from a fixed word
list with a seeded numpy generator) are built with :class:`speechdata.text.PromptBuilder` on one
core, with a tokenizer trained on part of the same text: a unigram SentencePiece model
(:func:`speechdata.text.train_tokenizer`), or with ``--tokenizer hf`` a byte-level BPE
``tokenizer.json`` (:func:`speechdata.text.hf.train_hf_tokenizer`, GPT-2's pre-tokenizer). Three
configurations:

* ``template``: ``"Q: {context}\\nA: {answer}"``, BOS and EOS, no truncation;
* ``locators``: the same with two ``|audio|`` locators per context (two audios per example);
* ``truncation``: ``template`` with ``max_seq_length`` at the median full length, so about half of
  the examples lose answer tokens (those that cannot are counted as ``too_long_text`` drops).

The baseline, measured in the same run on the same model, is the tokenizer's own encode of the
fully formatted string (context part + answer part): SentencePiece's
``SentencePieceProcessor.encode`` called once per example, or the ``tokenizers`` package's
``Tokenizer.encode_batch`` in batches of 1,000 on one thread. It is the cost of tokenizing the same
text with no formatting, no bookkeeping and no truncation. The process is pinned to one core. Reported: examples per second and the ratio to the baseline, medians over
``--repeats`` repeats that interleave the baseline and the runs (each ratio is taken within one
repeat, so that load from other processes hits both sides alike).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizers package's thread pool: one thread
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer as RustTokenizer

from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.text import PromptBuilder, train_tokenizer
from speechdata.text.hf import train_hf_tokenizer
from speechdata.text.tokenizer import TextTokenizer

_WORD_TEXT = (
    "the a of and to in is was that for it with as his on be at by had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do "
    "first any my now such like our over man me even most made after also did many before must through "
    "back years where much your way well down should because each just those people mister how too "
    "little state good very make world still own see men work long get here between both life being "
    "under never day same another know while last might us great old year off come since against go "
    "came right used take three transcribe audio speech speaker recording question answer translate"
)
WORDS = _WORD_TEXT.split()
LOCATOR = "|audio|"
TEMPLATE = "Q: {context}\nA: {answer}"


def make_examples(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` (context, answer) pairs of random words, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    ctx_len = rng.integers(4, 16, size=n)
    ans_len = rng.integers(3, 41, size=n)
    contexts = [" ".join(rng.choice(words, size=k)) for k in ctx_len]
    answers = [" ".join(rng.choice(words, size=k)) for k in ans_len]
    return contexts, answers


def with_locators(contexts: list[str]) -> list[str]:
    """Each context with a locator before its first word and one after its middle word."""
    out = []
    for c in contexts:
        w = c.split(" ")
        mid = len(w) // 2
        out.append(f"{LOCATOR} " + " ".join(w[:mid]) + f" {LOCATOR} " + " ".join(w[mid:]))
    return out


def seconds(fn: Callable[[], int]) -> tuple[float, int]:
    """Seconds one call of ``fn`` took, and the count it returned."""
    t0 = time.perf_counter()
    count = fn()
    return time.perf_counter() - t0, count


def run_builder(
    builder: PromptBuilder, contexts: list[str], answers: list[str], audios: int
) -> Callable[[], int]:
    def go() -> int:
        built = 0
        build = builder.build
        for c, a in zip(contexts, answers, strict=True):
            try:
                build(c, a, audios)
                built += 1
            except DataError:
                pass
        return built

    return go


def run_raw(sp: spm.SentencePieceProcessor, texts: list[str]) -> Callable[[], int]:
    def go() -> int:
        encode = sp.encode
        for t in texts:
            encode(t)
        return len(texts)

    return go


def run_raw_hf(tok: RustTokenizer, texts: list[str]) -> Callable[[], int]:
    def go() -> int:
        for k in range(0, len(texts), 1000):
            tok.encode_batch(texts[k : k + 1000], add_special_tokens=False)
        return len(texts)

    return go


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", choices=("sentencepiece", "hf"), default="sentencepiece")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    load_before = os.getloadavg()[0]

    contexts, answers = make_examples(args.n, args.seed)
    formatted = [f"Q: {c}\nA: {a}" for c, a in zip(contexts, answers, strict=True)]
    train_text = [f"{c}\n{a}" for c, a in zip(contexts[:20_000], answers[:20_000], strict=True)]
    tok: TextTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        if args.tokenizer == "hf":
            tok = train_hf_tokenizer(train_text, tmp, args.vocab_size, [LOCATOR])
            raw = run_raw_hf(RustTokenizer.from_file(str(Path(tmp) / "tokenizer.json")), formatted)
            raw_name = "`tokenizers` `encode_batch`"
        else:
            sp_tok = train_tokenizer(train_text, tmp, args.vocab_size, user_symbols=[LOCATOR], seed=args.seed)
            sp = spm.SentencePieceProcessor()
            sp.LoadFromSerializedProto(sp_tok.model_bytes)
            raw = run_raw(sp, formatted)
            raw_name = "`SentencePieceProcessor.encode`"
            tok = sp_tok

    base = dict(prompt_template=TEMPLATE, add_bos=True, add_eos=True, max_seq_length=100_000)
    full = PromptBuilder(make_dataset_config(base), tok)
    lengths = [len(full.build(c, a, 1).input_ids) for c, a in zip(contexts, answers, strict=True)]
    median_len = int(np.median(lengths))
    loc_contexts = with_locators(contexts)
    configs: list[tuple[str, PromptBuilder, list[str], int]] = [
        ("template", full, contexts, 1),
        (
            "locators",
            PromptBuilder(make_dataset_config({**base, "audio_locator": LOCATOR}), tok),
            loc_contexts,
            2,
        ),
        (
            "truncation",
            PromptBuilder(
                make_dataset_config({**base, "max_seq_length": median_len, "truncation_field": "answer"}), tok
            ),
            contexts,
            1,
        ),
    ]
    runs = [(name, run_builder(builder, ctxs, answers, audios)) for name, builder, ctxs, audios in configs]

    # Repeats interleave the baseline and every run, and each ratio is taken within one repeat, so
    # that load from other processes on a shared machine hits both sides of a ratio alike.
    raw_times: list[float] = []
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    ratios: dict[str, list[float]] = {name: [] for name, _ in runs}
    built: dict[str, int] = {}
    for _ in range(args.repeats):
        raw_s, _ = seconds(raw)
        raw_times.append(raw_s)
        for name, fn in runs:
            secs, built[name] = seconds(fn)
            times[name].append(secs)
            ratios[name].append(raw_s / secs)

    raw_rate = args.n / statistics.median(raw_times)
    lines = [
        f"# text stage, {args.n} examples, {args.tokenizer} vocab {tok.vocab_size}, median {median_len} tokens, "
        "one core",
        "",
        "| run | examples/s | ratio to the tokenizer's own encode | built |",
        "|---|---:|---:|---:|",
        f"| raw {raw_name} of the formatted text | {raw_rate:,.0f} | 1.00 | {args.n} |",
    ]
    for name, _ in runs:
        rate = args.n / statistics.median(times[name])
        ratio = statistics.median(ratios[name])
        lines.append(f"| PromptBuilder.build, {name} | {rate:,.0f} | {ratio:.2f} | {built[name]} |")
    lines += [
        "",
        f"examples/s and ratios: medians over {args.repeats} interleaved repeats",
        f"machine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after",
        f"command: python benchmarks/bench_text.py {' '.join(sys.argv[1:])}".rstrip(),
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
