"""What the two trainer learning checks (``learning_check_corpus.py``, tones; and
``learning_check_speech.py``, espeak-ng speech) share: the trainer overrides of a budgeted run
that only trains (no checkpoints, no resume, no validation until the end) and the process pool
that runs the matched and control runs side by side."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def run_overrides(job: dict[str, Any]) -> list[str]:
    """Trainer overrides of one learning-check run: train until the budget stops it, validate
    once at the end over the whole held-out set, nothing saved; the job's ``exp_dir``,
    ``tokenizer``, ``seed`` and ``warmup``."""
    return [
        "trainer.max_steps=1000000",
        "trainer.val_check_interval=1000000",
        "trainer.limit_val_batches=1.0",
        "trainer.enable_progress_bar=False",
        "trainer.enable_model_summary=False",
        f"exp_manager.exp_dir={job['exp_dir']}",
        "exp_manager.create_checkpoint_callback=False",
        "exp_manager.resume_if_exists=False",
        f"model.tokenizer.model={job['tokenizer']}",
        f"model.seed={job['seed']}",
        f"optim.sched.warmup_steps={job['warmup']}",
    ]


def run_jobs(
    run: Callable[[dict[str, Any]], dict[str, Any]], jobs: list[dict[str, Any]], parallel: int
) -> list[dict[str, Any]]:
    """``run(job)`` for every job, ``parallel`` at a time, each in a fresh spawned process (not a
    ``multiprocessing.Pool``: its daemonic workers could not start DataLoader workers)."""
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(parallel, mp_context=ctx, max_tasks_per_child=1) as pool:
        return list(pool.map(run, jobs))
