"""``speechdata shard`` killed at random points, then rerun, gives the bytes of an uninterrupted run.

SPEC §7: writes are atomic per shard and rerunning after a crash completes the job. Each seed
starts ``python -m speechdata shard`` in its own process group, waits until it has started
writing, SIGKILLs the whole group (pool workers included) after a seeded random delay, reruns the
same command to completion and compares every file of the output folder with a reference run.
``benchmarks/`` is not needed for this: three seeds, one with a process pool, keep it short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from speechdata.testing import make_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = make_corpus(tmp_path_factory.mktemp("kill_src"), n=24, seed=9, max_duration=4.0)
    return corpus.manifest


def _command(manifest: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "speechdata",
        "shard",
        str(manifest),
        "--out",
        str(out),
        "--num-shards",
        "6",
        "--codec",
        "flac",
        "--shuffle",
        "--seed",
        "3",
        "--workers",
        str(workers),
        "--no-progress",
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, caches excluded."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any("cache" in part for part in p.relative_to(root).parts)
    }


def _run(manifest: Path, out: Path, workers: int) -> float:
    """Run the command to completion; returns the seconds from the first output folder to exit."""
    proc = subprocess.Popen(_command(manifest, out, workers), env=_env(), stderr=subprocess.PIPE)
    started = _wait_for_start(proc, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - started


def _wait_for_start(proc: subprocess.Popen[bytes], out: Path) -> float:
    while not (out / "sharded_manifests").is_dir() and proc.poll() is None:
        time.sleep(0.005)
    return time.monotonic()


@pytest.fixture(scope="module")
def reference(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], float]:
    out = tmp_path_factory.mktemp("kill_ref") / "out"
    seconds = _run(manifest, out, workers=1)
    files = _files(out)
    assert sum(name.endswith(".tar") for name in files) == 6
    return files, seconds


@pytest.mark.parametrize(("seed", "workers"), [(0, 1), (1, 1), (2, 2)])
def test_killed_shard_run_completes_to_the_same_bytes(
    tmp_path: Path, manifest: Path, reference: tuple[dict[str, bytes], float], seed: int, workers: int
) -> None:
    files, write_seconds = reference
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(manifest, out, workers),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the pool workers die with it
    )
    _wait_for_start(proc, out)
    delay = float(np.random.default_rng([seed, 0xC0DE]).uniform(0.0, 0.8 * write_seconds))
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    if killed:
        assert proc.returncode == -signal.SIGKILL
    _run(manifest, out, workers)
    got = _files(out)
    assert sorted(got) == sorted(files)
    for name, data in files.items():
        assert got[name] == data, f"{name} differs after the killed run was resumed"
