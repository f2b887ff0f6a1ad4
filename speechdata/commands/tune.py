"""``speechdata tune CONFIG [key=value ...]``: the largest batch per duration bucket whose training
step fits in a fraction of GPU memory, measured with the config's model and optimiser on
worst-case batches (:mod:`speechdata.tune`; docs/tuning.md). 2D ``bucket_duration_bins``
(``[seconds or input tokens, output tokens]`` pairs) are tuned per pair; their tokens are bounded
by the manifests' prompts when ``manifest_filepath`` is set, else by ``max_seq_length``.

Prints one line per probe on stderr and a table on stdout (per bucket: the worst-case shape, the
probes with their peak memory, the chosen size), then the tuned ``bucket_duration_bins`` and
``bucketing_batch_size`` as YAML (written to ``--out`` too) and as overrides.

Without a CUDA device, or with ``--dry-run``, it is a dry run: the shapes it would try are shown,
nothing is measured and nothing is written. ``--estimate-cpu MEMORY`` searches on the CPU against
MEMORY with an estimate of the step's memory (weights, gradients, optimiser state, the batch and
the tensors saved for backward): for planning, not a GPU measurement.

Example::

    $ speechdata tune configs/salm_tiny.yaml model.tokenizer.model=tok/tokenizer.model \\
        model.train_ds.bucket_duration_bins=[2,4,6] --out tuned.yaml
    $ speechdata train configs/salm_tiny.yaml ... $(speechdata tune ... --print-overrides)
"""

from __future__ import annotations

import argparse
import sys

HELP = "largest batch per bucket that fits in GPU memory (measured), written as bucketing_batch_size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``speechdata tune``."""
    from speechdata.tune import DEFAULT_FRACTION, DEFAULT_MAX_BATCH

    parser.add_argument("config", help="YAML config (NeMo-shaped, as for speechdata train)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.tokenizer.model=tok.model")
    parser.add_argument(
        "--fraction",
        type=float,
        default=DEFAULT_FRACTION,
        help=f"share of the device's memory a step may use, margins included (default {DEFAULT_FRACTION})",
    )
    parser.add_argument("--out", metavar="YAML", help="write the tuned dataset keys to this file")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show the shapes that would be tried; measure and write nothing",
    )
    parser.add_argument(
        "--estimate-cpu",
        metavar="MEMORY",
        help="search on the CPU against MEMORY (e.g. 80GiB) with an estimate of each step's memory",
    )
    parser.add_argument("--device", default="cuda", help="CUDA device to measure on (default cuda)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"largest size tried (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--no-ddp-margin",
        action="store_true",
        help="leave out the margin for DDP's gradient buckets (one copy of the trainable gradients)",
    )
    parser.add_argument(
        "--print-overrides", action="store_true", help="print only the tuned keys as overrides (for $(...))"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``speechdata tune``."""
    import torch

    from speechdata.config import load_config
    from speechdata.errors import ConfigError
    from speechdata.shards.tarfmt import atomic_write_bytes
    from speechdata.tune import (
        StepRunner,
        cuda_measure,
        estimate_measure,
        human_bytes,
        margin_bytes,
        parse_bytes,
        prepare,
        result_table,
        search_buckets,
        shape_table,
        stderr_progress,
        tuned_overrides,
        tuned_values,
        tuned_yaml,
    )

    if not 0.0 < args.fraction <= 1.0:
        raise ConfigError(f"--fraction: must be in (0, 1]; got {args.fraction}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch: must be at least 1; got {args.max_batch}")
    plan = prepare(load_config(args.config, args.overrides))
    say = _Printer(quiet=args.print_overrides)
    estimate = args.estimate_cpu is not None
    dry = not estimate and (args.dry_run or not torch.cuda.is_available())
    device = "cpu" if dry or estimate else args.device
    if device != "cpu" and torch.device(device).type != "cuda":
        raise ConfigError(
            f"--device: {args.device!r} is not a CUDA device (--estimate-cpu searches on the CPU)"
        )
    runner = StepRunner(plan.cfg, plan.setup, device, plan.precision)
    model = runner.model
    margins = margin_bytes(runner, plan.cfg, ddp=not args.no_ddp_margin)
    margin = sum(margins.values())
    params = runner.parameter_bytes()
    trainable = runner.parameter_bytes(trainable_only=True)
    described = (
        f"{model.cfg.arch.upper()} {sum(p.numel() for p in model.parameters()):,} parameters "
        f"({human_bytes(params)}; trainable {human_bytes(trainable)}), precision {plan.precision}, "
        f"optimizer {type(runner.optimizer).__name__}; margin "
        + (", ".join(f"{k} {human_bytes(v)}" for k, v in margins.items()) or "none")
    )
    if dry:
        why = "--dry-run" if args.dry_run else "no CUDA device"
        say(f"DRY RUN ({why}): nothing is measured and nothing is written")
        say(f"{plan.path}: {described}")
        say(shape_table(plan.shapes, model))
        if plan.note:
            say(plan.note)
        say(
            f"each bucket would be tried at batch 1, 2, 4, ... (up to {args.max_batch}) until a step does not "
            f"fit in {args.fraction:g} of the device's memory, then bisected"
        )
        if args.out:
            say(f"not writing {args.out} (dry run)")
        return 0

    if estimate:
        total = parse_bytes(args.estimate_cpu)
        where = f"CPU ESTIMATE against {human_bytes(total)} (not a GPU measurement)"
        measure = estimate_measure(runner)
    else:
        dev = runner.device
        total = int(torch.cuda.get_device_properties(dev).total_memory)
        where = f"{torch.cuda.get_device_name(dev)} ({human_bytes(total)})"
        measure = cuda_measure(runner)
    budget = int(args.fraction * total)
    if not estimate:  # the allocator refuses beyond the budget: such a step is an out-of-memory probe
        torch.cuda.set_per_process_memory_fraction(min(max(budget - margin, 1) / total, 1.0), runner.device)
    say(f"{plan.path}: {described}")
    say(f"{where}: budget {args.fraction:g} x {human_bytes(total)} = {human_bytes(budget)}")
    shortest = min(plan.shapes, key=lambda s: (s.seconds, s.tokens))
    if measure(shortest, 1) is None:  # warm-up: creates the optimiser state every later probe holds
        raise ConfigError(f"{plan.path}: the model does not fit in memory even at batch 1 ({where})")
    results = search_buckets(plan.shapes, measure, budget, margin, args.max_batch, stderr_progress)
    say(result_table(results, model))
    if plan.note:
        say(plan.note)
    failed = [r for r in results if r.batch_size == 0]
    if failed:
        s = failed[0].shape
        raise ConfigError(
            f"{plan.path}: bucket {s.bucket} ({s.seconds:g} s, {s.tokens} tokens) does not fit at batch 1 within "
            f"{human_bytes(budget)} (margin {human_bytes(margin)}); lower max_duration or max_seq_length, or raise "
            "--fraction"
        )
    values = tuned_values(plan.bins, results, plan.setup.train_ds)
    overrides = tuned_overrides(plan.path, values)
    if args.print_overrides:
        print(" ".join(overrides))
    order = "in the order of the 2D pairs" if plan.shapes[0].bin is not None else "shortest first"
    header = [
        f"speechdata tune {args.config}: {where}, budget {human_bytes(budget)}",
        f"margin {human_bytes(margin)}; per bucket ({order}) the largest batch whose step fits",
    ]
    text = tuned_yaml(plan.path, values, header)
    say(text.rstrip("\n"))
    say("as overrides: " + " ".join(overrides))
    if args.out:
        atomic_write_bytes(args.out, text.encode("utf-8"))
        say(f"wrote {args.out}")
    return 0


class _Printer:
    """Lines for stdout, or for stderr when quiet (``--print-overrides`` keeps stdout for the overrides)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        print(text, file=sys.stderr if self.quiet else sys.stdout, flush=True)
