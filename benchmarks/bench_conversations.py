"""Conversation text stage: ConversationBuilder with a Hugging Face tokenizer, against the
tokenizer's own batch encode of the same text.

Run: ``python benchmarks/bench_conversations.py [--n 20000] [--repeats 3] [--seed 0]
[--out results/conversations.md]``

A byte-level BPE ``tokenizer.json`` is trained with ``speechdata.text.hf.train_hf_tokenizer`` for
the ``qwen`` format (its special tokens, ``<|im_end|>`` as EOS, a ChatML chat template) on the
benchmark's own text. ``--n`` examples of random words (seeded numpy generator) are built, pinned
to one core (``os.sched_setaffinity``; the tokenizers package's thread pool limited to one):

* ``single-turn``: a context/answer example (one audio first, a 4-15 word context, a 3-40 word
  answer) as ``prompt_format: qwen``;
* ``3-turn, 2 audios``: user (words + audio), assistant, user (audio + words), assistant, user,
  assistant, as ``prompt_format: qwen`` and as ``prompt_format: chat_template``.

The baseline, measured in the same run, is the ``tokenizers`` package's own
``Tokenizer.encode_batch`` (the same ``tokenizer.json``, one thread) of the text each example is
written as (ChatML, each audio's locator removed), in batches of 1,000: the cost of tokenizing
the same strings with no formatting and no bookkeeping. Reported: examples per
second and the ratio baseline time / builder time, medians over interleaved repeats.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from speechdata.config import make_dataset_config
from speechdata.lines import Message, Record
from speechdata.text.dialog import ConversationBuilder, record_messages
from speechdata.text.hf import train_hf_tokenizer

_WORD_TEXT = (
    "the a of and to in is was that for it with as his on be at by had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do "
    "transcribe audio speech speaker recording question answer translate summarize the following"
)
WORDS = _WORD_TEXT.split()
LOC = "<|audio|>"


def _words(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi + 1))))


def make_records(n: int, seed: int) -> tuple[list[Record], list[Record]]:
    """``n`` single-turn and ``n`` three-turn examples, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    single, multi = [], []
    for i in range(n):
        where = f"bench:{i + 1}"
        single.append(Record(["a.wav"], [0.0], [2.0], _words(rng, 4, 15), _words(rng, 3, 40), {}, where, i))
        messages: list[Message] = [
            ("user", (_words(rng, 2, 8) + " ", 0)),
            ("assistant", (_words(rng, 3, 30),)),
            ("user", (1, " " + _words(rng, 2, 8))),
            ("assistant", (_words(rng, 3, 30),)),
            ("user", (_words(rng, 2, 8),)),
            ("assistant", (_words(rng, 3, 30),)),
        ]
        multi.append(
            Record(["a.wav", "b.wav"], [0.0] * 2, [2.0] * 2, None, "", {}, where, i, messages=messages)
        )
    return single, multi


def run_builder(builder: ConversationBuilder, records: list[Record]) -> float:
    t = time.perf_counter()
    build = builder.build_record
    for rec in records:
        build(rec)
    return time.perf_counter() - t


def run_raw(tok: RustTokenizer, texts: list[str]) -> float:
    t = time.perf_counter()
    for k in range(0, len(texts), 1000):
        tok.encode_batch(texts[k : k + 1000], add_special_tokens=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    load_before = os.getloadavg()[0]
    single, multi = make_records(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        text = [r.context or "" for r in single[:5000]] + [r.answer for r in single[:5000]]
        tok = train_hf_tokenizer(text, tmp, 2000, [LOC], prompt_format="qwen")
        rust = RustTokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
    base = {"manifest_filepath": "bench.jsonl", "max_seq_length": 100_000, "audio_locator": LOC}
    qwen = ConversationBuilder(make_dataset_config({**base, "prompt_format": "qwen"}), tok)
    chat = ConversationBuilder(make_dataset_config({**base, "prompt_format": "chat_template"}), tok)
    runs = [("single-turn, qwen", qwen, single), ("3-turn, 2 audios, qwen", qwen, multi)]
    runs.append(("3-turn, 2 audios, chat_template", chat, multi))
    # the baseline strings: each conversation written by the tokenizer's ChatML template (the same
    # text as prompt_format qwen: tests/test_conversations.py), the audio locators taken out
    strings = {}
    for name, _, records in runs:
        texts = []
        for rec in records:
            chat = [
                {"role": role, "content": "".join(p if isinstance(p, str) else LOC for p in parts)}
                for role, parts in record_messages(rec, LOC, None)
            ]
            texts.append(tok.render_chat(chat).replace(LOC, ""))
        strings[name] = texts

    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    raws: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.repeats):
        for name, builder, records in runs:
            raw = run_raw(rust, strings[name])
            secs = run_builder(builder, records)
            raws[name].append(raw)
            times[name].append(secs)
            ratios[name].append(raw / secs)
    lines = [
        f"# conversation text stage, {args.n} examples per run, HF byte-level BPE (vocab {tok.vocab_size}), one core",
        "",
        "| run | examples/s | batch encode of the same text, examples/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, _, _ in runs:
        rate = args.n / statistics.median(times[name])
        raw_rate = args.n / statistics.median(raws[name])
        lines.append(f"| {name} | {rate:,.0f} | {raw_rate:,.0f} | {statistics.median(ratios[name]):.2f} |")
    lines += [
        "",
        f"medians over {args.repeats} interleaved repeats; ratio = batch-encode time / builder time, per repeat",
        f"machine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after",
        f"command: python benchmarks/bench_conversations.py {' '.join(sys.argv[1:])}".rstrip(),
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
