"""Sequence packing against padded batches: tokens per second of the tiny SALM training step.

Run: ``python benchmarks/bench_packing.py [--n 1200] [--repeats 3] [--row-tokens 1024] [--rows 2]
[--speech auto] [--no-llm-dominant] [--out benchmarks/results/packing.md]``

The corpus is built by the benchmark (:func:`speechdata.testing.make_corpus`: espeak-ng speech
when installed, else the tone alphabet; 16 kHz WAV, 0.5-12 s clips, 15% of the examples with 2-3
clips; seeded), with a SentencePiece tokenizer trained on its text. Three loaders read the same
examples (``configs/salm_tiny.yaml``'s prompt keys, ``token_equivalent_duration: 0.08``, the
tiny SALM's 80 ms encoder frames; ``drop_last: false``, so every example is in every epoch):

* ``fixed``: NeMo-style fixed micro-batches, ``micro_batch_size`` examples without bucketing,
  the size chosen so that a batch holds about as many tokens as a packed batch;
* ``bucketed``: NeMo 2.x 2D buckets (``use_multimodal_sampling``, 2D ``bucket_duration_bins``
  estimated as ``speechdata inspect`` suggests them) with dynamic batches of ``batch_tokens`` =
  ``rows × row-tokens``;
* ``packed``: ``packing: true``, ``rows`` rows of ``packed_sequence_size`` = ``row-tokens``.

Each loader's epoch is built once (``num_workers: 0``). Then the tiny SALM (the config's model,
float32, one torch thread, the same initial weights for every run) trains one pass over each
epoch's batches: forward, backward, AdamW step, timed in CPU seconds of the process
(``time.process_time``: with one torch thread it is the step's own work, which a machine shared
with other jobs does not stretch as it stretches wall time; wall time is reported beside it);
the passes are interleaved (fixed, bucketed, packed, fixed, ...) ``--repeats`` times. Reported
per loader: the median tokens per CPU second (the LLM's real positions, text tokens plus spliced
audio frames, over the step time), the ratio to ``bucketed`` per repeat (median, min, max),
steps, and the padding fractions of the LLM input (positions the model computes that hold no
example), of the text tokens (``tokens``), of the audio (``audio_signal``) and of what the
encoder computes (it encodes each batch's audios in groups of similar length,
:func:`~speechdata.train.models.blocks.length_groups`).

A second model proportion, labelled ``LLM-dominant`` (skipped with ``--no-llm-dominant``): the
same encoder with a larger LLM (:data:`LLM_DOMINANT`: 256 wide, 4 layers, about 3.3 M parameters
against the encoder's 0.3 M), so that the LLM is most of the step (about 70% on the CPU), as in
speech LLMs whose LLM outweighs the encoder (NeMo's Canary-Qwen-2.5B: Qwen3-1.7B as its LLM, most
of the rest its FastConformer encoder); whole steps only, bucketed and packed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCATOR = "|audio|"
NAMES = ("fixed", "bucketed", "packed")
#: The LLM-dominant proportion's ``model.llm`` keys (the encoder is the tiny config's).
LLM_DOMINANT = {"hidden_size": 256, "num_layers": 4, "num_attention_heads": 4, "ffn_hidden_size": 1024}
#: The loaders timed with the LLM-dominant model.
DOMINANT_NAMES = ("bucketed", "packed")


def build_corpus(work: Path, n: int, speech: str, seed: int) -> tuple[str, str, int]:
    """The corpus's manifest, its tokenizer and the vocabulary size."""
    from speechdata.testing import make_corpus
    from speechdata.text.tokenizer import train_tokenizer

    corpus = make_corpus(
        work / "corpus",
        n=n,
        seed=seed,
        speech=speech,
        formats=("wav",),
        sample_rates=(16000,),
        stereo_fraction=0.0,
        multi_audio_fraction=0.15,
        shared_source_fraction=0.0,
        min_duration=0.5,
        max_duration=12.0,
        locator=LOCATOR,
    )
    texts = [f"Q: {e['context']}\nA: {e['answer']}" for e in corpus.entries]
    tok = train_tokenizer(texts, work / "tok", vocab_size=512, user_symbols=[LOCATOR], seed=seed)
    return str(corpus.manifest), str(work / "tok" / "tokenizer.model"), tok.vocab_size


def section(manifest: str, kind: str, rows: int, row_tokens: int, micro: int) -> dict[str, Any]:
    """The ``train_ds`` keys of one loader (see the module docstring)."""
    base: dict[str, Any] = {
        "manifest_filepath": manifest,
        "shuffle": True,
        "seed": 7,
        "num_workers": 0,
        "drop_last": False,
        "max_seq_length": 512,
        "add_bos": True,
        "add_eos": True,
        "prompt_template": "Q: {context}\nA: {answer}",
        "audio_locator": LOCATOR,
        "max_duration": 12.0,
        "min_duration": 0.1,
        "token_equivalent_duration": 0.08,
    }
    if kind == "fixed":
        return {**base, "micro_batch_size": micro}
    if kind == "bucketed":
        return {**base, "use_multimodal_sampling": True, "batch_tokens": rows * row_tokens}
    return {**base, "packing": True, "packed_sequence_size": row_tokens, "micro_batch_size": rows}


def epoch_batches(ds: dict[str, Any], tokenizer: str) -> list[dict[str, Any]]:
    """One epoch of the loader's batches."""
    from speechdata import build_dataloader

    return list(build_dataloader({"model": {"train_ds": ds}}, tokenizer))


def bins_2d(manifest: str, tokenizer: str, ds: dict[str, Any]) -> list[list[float]]:
    """2D bins over (input tokens, output tokens) as ``speechdata inspect`` suggests them."""
    from speechdata import build_dataloader
    from speechdata.sampling import estimate_bins_2d

    probe = build_dataloader(
        {"model": {"train_ds": {**ds, "batch_tokens": None, "micro_batch_size": 4}}}, tokenizer
    )
    assert probe.measures is not None
    first, second = probe.measures.axes()
    keep = probe.keep
    return estimate_bins_2d(first[keep], second[keep], 6, 2).tolist()


def figures(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Real LLM positions, LLM slots, text tokens and slots, audio samples and slots (in the batch,
    and those the encoder computes: each length group cut to its longest audio)."""
    from speechdata.batch import is_packed
    from speechdata.train.models.base import RowLayout
    from speechdata.train.models.blocks import length_groups
    from speechdata.train.models.encoder import subsampled_lengths

    hop = round(model.cfg.features.window_stride * model.cfg.sample_rate)
    keys = ("llm", "llm_slots", "text", "text_slots", "audio", "audio_slots", "encoder_slots", "examples")
    out = dict.fromkeys(keys, 0.0)
    for b in batches:
        frames = subsampled_lengths(1 + b["audio_signal_length"] // hop)
        per_example = model.example_lengths(b["tokens_length"], frames, b["num_audios"])
        if is_packed(b):
            layout = RowLayout.of(b)
            rows = torch.zeros(b["tokens"].shape[0], dtype=torch.long).index_add_(
                0, layout.example_row, per_example
            )
        else:
            rows = per_example
        out["llm"] += float(per_example.sum())
        out["llm_slots"] += float(rows.numel() * rows.max())
        out["text"] += float(b["tokens_length"].sum())
        out["text_slots"] += float(b["tokens"].numel())
        out["audio"] += float(b["audio_signal_length"].sum())
        out["audio_slots"] += float(b["audio_signal"].numel())
        lengths = b["audio_signal_length"]
        out["encoder_slots"] += float(
            sum(idx.numel() * int(lengths[idx].max()) for idx in length_groups(lengths))
        )
        out["examples"] += float(b["sample_ids"].numel())
    return out


def train_pass(
    model: Any,
    state: dict[str, Any],
    batches: list[dict[str, Any]],
    audio: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[float, float]:
    """CPU seconds of the process and wall seconds of one training pass over ``batches`` from the
    initial weights ``state``. With
    ``audio`` (each batch's audio embeddings, computed beforehand) the encoder is left out: the
    pass trains the LLM side only (embeddings spliced in, LLM, loss, AdamW on the LLM)."""
    model.load_state_dict(state)
    model.train()
    params = model.llm.parameters() if audio is not None else model.parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)
    started, cpu = time.perf_counter(), time.process_time()
    for k, b in enumerate(batches):
        if audio is not None:
            model.encode_audio = lambda _batch, k=k: audio[k]  # this pass: precomputed
        loss, _ = model.loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - started
    if audio is not None:
        del model.encode_audio  # the class's method again
    return cpu, wall


def audio_embeddings(model: Any, batches: list[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch's audio embeddings and lengths (no gradient), for the LLM-only passes."""
    with torch.no_grad():
        return [tuple(t.detach() for t in model.encode_audio(b)) for b in batches]  # type: ignore[misc]


Times = dict[str, list[tuple[float, float]]]  # per loader: (CPU seconds, wall seconds) per repeat


def build(cfg: Any, tok: Any, vocab: int, llm: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The config's model (``llm``: other ``model.llm`` keys), float32, dropout off, and its
    initial weights (every pass starts from them)."""
    from omegaconf import OmegaConf

    from speechdata.train.models import build_model, model_config

    section = cfg.model if llm is None else OmegaConf.merge(cfg.model, {"llm": llm})
    mcfg = model_config(section, vocab_size=vocab, pad_id=tok.pad_id, eos_id=tok.eos_id, bos_id=tok.bos_id)
    torch.manual_seed(0)
    model = build_model(mcfg).float()
    for m in model.modules():  # dropout off: every run computes the same thing per example
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout") and isinstance(m.dropout, float):  # attention dropout
            m.dropout = 0.0
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--row-tokens", type=int, default=1024)
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--speech", default="auto", choices=("auto", "espeak", "tones"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-llm-dominant", action="store_true", help="time the tiny model only")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        manifest, tokenizer, vocab = build_corpus(work, args.n, args.speech, args.seed)
        corpus_s = time.perf_counter() - t0
        probe = section(manifest, "packed", args.rows, args.row_tokens, 1)
        from speechdata import build_dataloader

        loader = build_dataloader({"model": {"train_ds": probe}}, tokenizer)
        assert loader.measures is not None
        mean_tokens = float(loader.measures.tokens[loader.keep].mean())
        micro = max(1, round(args.rows * args.row_tokens / mean_tokens))
        sections = {k: section(manifest, k, args.rows, args.row_tokens, micro) for k in NAMES}
        sections["bucketed"]["bucket_duration_bins"] = bins_2d(manifest, tokenizer, sections["bucketed"])
        batches = {k: epoch_batches(v, tokenizer) for k, v in sections.items()}

        cfg = OmegaConf.load(ROOT / "configs" / "salm_tiny.yaml")
        model, state = build(cfg, loader.tokenizer, vocab)
        figs = {k: figures(model, v) for k, v in batches.items()}
        ids = {k: sorted(int(i) for b in v for i in b["sample_ids"].tolist()) for k, v in batches.items()}
        if not ids["fixed"] == ids["bucketed"] == ids["packed"]:
            raise SystemExit("the three loaders did not read the same examples")
        train_pass(model, state, batches["packed"][:2])  # warm-up
        embeddings = {k: audio_embeddings(model, v) for k, v in batches.items()}
        big = None if args.no_llm_dominant else build(cfg, loader.tokenizer, vocab, LLM_DOMINANT)
        if big is not None:
            train_pass(*big, batches["packed"][:2])
        times: Times = {k: [] for k in NAMES}
        llm_times: Times = {k: [] for k in NAMES}
        big_times: Times = {k: [] for k in DOMINANT_NAMES}
        for _ in range(args.repeats):
            for k in NAMES:
                times[k].append(train_pass(model, state, batches[k]))
            for k in NAMES:
                llm_times[k].append(train_pass(model, state, batches[k], embeddings[k]))
            for k in DOMINANT_NAMES if big is not None else ():
                big_times[k].append(train_pass(*big, batches[k]))
        params = {
            "encoder": sum(p.numel() for p in model.perception.parameters()),
            "llm": sum(p.numel() for p in model.llm.parameters()),
            "big_llm": sum(p.numel() for p in big[0].llm.parameters()) if big is not None else 0,
        }

    steps = {k: len(v) for k, v in batches.items()}
    lines = report(args, figs, times, llm_times, big_times, steps, micro, corpus_s, mean_tokens, params)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


def _speech(option: str) -> str:
    """What ``--speech`` made: espeak-ng speech or tones."""
    from speechdata.synth.espeak import available

    return "espeak-ng speech" if option == "espeak" or (option == "auto" and available()) else "tones"


def _cells(f: dict[str, float], t: Times, k: str) -> str:
    """Median tokens per CPU second and the per-repeat ratio to ``bucketed`` (median, min-max)."""
    rates = [f["llm"] / cpu for cpu, _ in t[k]]
    ratios = [b[0] / x[0] for b, x in zip(t["bucketed"], t[k], strict=True)]
    return (
        f"{statistics.median(rates):,.0f} | {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )


def _wall_ratios(t: Times, names: tuple[str, ...]) -> str:
    """Each loader's median wall-time ratio to ``bucketed`` (min-max)."""
    parts = []
    for k in names:
        ratios = [b[1] / x[1] for b, x in zip(t["bucketed"], t[k], strict=True)]
        parts.append(f"{k} {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    return ", ".join(parts)


def _passes(t: Times, names: tuple[str, ...]) -> str:
    """Pass times per loader in run order: CPU seconds (wall seconds)."""
    return "; ".join(k + " " + ", ".join(f"{c:.2f} ({w:.2f})" for c, w in t[k]) for k in names)


def _share(whole: Times, part: Times) -> float:
    """Median over loaders and repeats of ``1 - part / whole`` (CPU seconds)."""
    return statistics.median(1 - p[0] / w[0] for k in part for p, w in zip(part[k], whole[k], strict=True))


def report(
    args: argparse.Namespace,
    figs: dict[str, dict[str, float]],
    times: Times,
    llm_times: Times,
    big_times: Times,
    steps: dict[str, int],
    micro: int,
    corpus_s: float,
    mean_tokens: float,
    params: dict[str, int],
) -> list[str]:
    """The results file's lines (markdown)."""
    cmd = " ".join(["python benchmarks/bench_packing.py", *sys.argv[1:]])
    lines = [
        "# Sequence packing: tiny SALM training step, packed vs padded",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} cores, one torch thread, torch {torch.__version__}; corpus of "
        f"{args.n} examples built in {corpus_s:.0f} s (`--speech {args.speech}`: {_speech(args.speech)}), mean "
        f"{mean_tokens:.0f} tokens per example (text + audio tokens at 0.08 s).",
        "",
        f"Budgets: packed = {args.rows} rows of {args.row_tokens} tokens; bucketed = batch_tokens "
        f"{args.rows * args.row_tokens} over 2D bins; fixed = {micro} examples per batch.",
        "",
        f"Tiny SALM (`configs/salm_tiny.yaml`: encoder {params['encoder'] / 1e6:.2f} M parameters, "
        f"LLM {params['llm'] / 1e6:.2f} M):",
        "",
        "| loader | steps | examples | LLM padding | text padding | audio padding | encoder padding | whole step: LLM tokens/s | vs bucketed | LLM side only: tokens/s | vs bucketed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in NAMES:
        f = figs[k]
        lines.append(
            f"| {k} | {steps[k]} | {int(f['examples'])} | {1 - f['llm'] / f['llm_slots']:.1%} | "
            f"{1 - f['text'] / f['text_slots']:.1%} | {1 - f['audio'] / f['audio_slots']:.1%} | "
            f"{1 - f['audio'] / f['encoder_slots']:.1%} | {_cells(f, times, k)} | {_cells(f, llm_times, k)} |"
        )
    lines += [
        "",
        "Tokens/s: per CPU second of the process (one torch thread). Ratios: the median over "
        "repeats of the bucketed pass's CPU time over the loader's in the same repeat (min-max in "
        "brackets). Whole step: encoder (log-mel, convolutions, transformer, adapter), LLM, loss, "
        "backward, AdamW. LLM side only: the same passes with each batch's audio embeddings "
        "computed beforehand (no encoder, AdamW on the LLM).",
        f"The encoder's share of the whole step (1 - LLM-side time / whole time, median): "
        f"{_share(times, llm_times):.0%}.",
        "",
        f"The same ratios in wall time (whole step): {_wall_ratios(times, NAMES)}; LLM side only: "
        f"{_wall_ratios(llm_times, NAMES)}.",
        "",
        "Pass times, CPU seconds (wall seconds), in run order per loader: whole step: "
        + _passes(times, NAMES)
        + "; LLM side only: "
        + _passes(llm_times, NAMES)
        + ".",
        "",
        "Work computed, relative to bucketed (the same examples): LLM input positions "
        + ", ".join(f"{k} {figs[k]['llm_slots'] / figs['bucketed']['llm_slots']:.3f}" for k in NAMES)
        + "; encoder audio samples "
        + ", ".join(f"{k} {figs[k]['encoder_slots'] / figs['bucketed']['encoder_slots']:.3f}" for k in NAMES)
        + ".",
    ]
    if big_times["bucketed"]:
        llm = LLM_DOMINANT
        lines += [
            "",
            f"LLM-dominant (the same encoder; LLM {llm['hidden_size']} wide, {llm['num_layers']} layers, "
            f"{llm['num_attention_heads']} heads, feed-forward {llm['ffn_hidden_size']}: "
            f"{params['big_llm'] / 1e6:.2f} M parameters), whole step:",
            "",
            "| loader | steps | whole step: LLM tokens/s | vs bucketed |",
            "|---|---|---|---|",
        ]
        for k in DOMINANT_NAMES:
            lines.append(f"| {k} | {steps[k]} | {_cells(figs[k], big_times, k)} |")
        lines += [
            "",
            f"Wall-time ratios: {_wall_ratios(big_times, DOMINANT_NAMES)}. Pass times, CPU seconds (wall "
            f"seconds): {_passes(big_times, DOMINANT_NAMES)}.",
        ]
    lines += [
        "",
        "LLM padding: positions of the LLM input (rows x longest spliced row, text tokens and 80 ms "
        "audio frames) that hold no example. Text padding: `tokens` slots without a token. Audio "
        "padding: `audio_signal` samples beyond each clip. Encoder padding: samples beyond each clip "
        "that the encoder computes (it encodes each audio on its own, in groups of similar length, "
        "each group cut to its longest audio).",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
