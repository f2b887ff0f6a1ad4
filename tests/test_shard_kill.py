"""``speechdata shard`` killed in the middle of a shard, then rerun, gives the bytes of an
uninterrupted run.

docs/shards.md: writes are atomic per shard and rerunning after a crash completes the job. Each case
starts ``python -m speechdata shard`` in its own process group and watches the output folder;
the kill moment is chosen from progress, not from a timer: once at least ``done`` shards have
their completion marker and a shard's ``audio_i.tar.tmp`` holds data, the whole group (pool
workers included) is frozen with SIGSTOP and the folder looked at again (if the partial tar was
renamed meanwhile, the group continues with SIGCONT and is watched again), then SIGKILLed. So the
kill always lands mid-shard, after the first shard and before the last. The rerun must reuse
exactly the finished shards, and every file of the output folder must equal a reference run's. ``benchmarks/`` is not needed for this: three cases, one with a process pool.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechdata.shards.write import MARKER_DIR
from speechdata.testing import make_corpus

REPO = Path(__file__).resolve().parents[1]
SHARDS = 6


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
        str(SHARDS),
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


def _run(manifest: Path, out: Path, workers: int) -> str:
    """Run the command to completion; returns its standard output (the summary line)."""
    proc = subprocess.run(_command(manifest, out, workers), env=_env(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def _progress(out: Path) -> tuple[int, int]:
    """``(finished shards, partial tars holding data)`` in the output folder right now."""
    markers = len(list((out / MARKER_DIR).glob("audio_*.done")))
    partial = 0
    for p in out.glob("audio_*.tar.tmp"):
        with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
            partial += p.stat().st_size > 0
    return markers, partial


@pytest.fixture(scope="module")
def reference(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("kill_ref") / "out"
    assert "(0 reused)" in _run(manifest, out, workers=1)
    files = _files(out)
    assert sum(name.endswith(".tar") for name in files) == SHARDS
    return files


@pytest.mark.parametrize(("done", "workers"), [(1, 1), (4, 1), (2, 2)])
def test_shard_run_killed_mid_shard_completes_to_the_same_bytes(
    tmp_path: Path, manifest: Path, reference: dict[str, bytes], done: int, workers: int
) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(manifest, out, workers),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the pool workers die with it
    )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"the run ended before {done} shards were done and another begun"
        assert time.monotonic() < deadline, "no progress"
        markers, partial = _progress(out)
        if markers >= done and partial:
            os.killpg(proc.pid, signal.SIGSTOP)  # freeze the group, then look again
            markers, partial = _progress(out)
            if markers >= done and partial:
                break
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the kill landed mid-shard: some shards finished, not all, and a partial tar left behind
    assert _progress(out) == (markers, partial)
    assert done <= markers < SHARDS and partial >= 1
    assert not (out / "metadata.yaml").exists()

    summary = _run(manifest, out, workers)
    assert f"({markers} reused)" in summary, summary
    got = _files(out)
    assert sorted(got) == sorted(reference)
    for name, data in reference.items():
        assert got[name] == data, f"{name} differs after the killed run was resumed"
