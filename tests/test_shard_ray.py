"""speechdata shard / validate on Ray (--executor ray): one local Ray instance for the module,
output byte-identical to the local executor, a rerun finishes only the missing shards, task errors
stay one line, a missing ray is a one-line error."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import orjson
import pytest

from speechdata.cli import main as cli_main
from speechdata.errors import ConfigError, DataError, DropCounter
from speechdata.shards import ShardOptions, validate, write_shards
from speechdata.shards.executors import RayExecutor, open_executor
from speechdata.shards.plan import plan_dataset, read_entries
from speechdata.shards.write import _write_task
from speechdata.testing import make_corpus


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(
        tmp_path_factory.mktemp("corpus"), n=40, seed=4, max_duration=4.0, shared_source_fraction=0.3
    )


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a written dataset (the index cache aside), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "index_cache" not in p.parts
    }


def test_ray_output_and_validation_equal_local(ray_instance, corpus, tmp_path):
    opts = {"num_shards": 3, "shuffle": True, "seed": 3, "buckets": 2, "progress": False}
    local = write_shards([corpus.manifest], tmp_path / "local", ShardOptions(**opts))
    ray = write_shards([corpus.manifest], tmp_path / "ray", ShardOptions(executor="ray", **opts))
    assert ray.summary().replace("/ray", "/local") == local.summary()
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert sum(k.endswith(".tar") for k in a) == 6 and sum(k.endswith(".done") for k in a) == 6
    assert a == b  # tars, manifests, metadata and markers
    assert ray_instance.is_initialized()  # the test's instance is left running

    # validate: a damaged copy gives the same report on Ray as in this process
    folder = tmp_path / "ray" / "bucket1"
    lines = (folder / "tarred_audio_manifest.json").read_bytes().splitlines()
    e = orjson.loads(lines[0])
    off = e["tar_offset"] if isinstance(e["tar_offset"], int) else e["tar_offset"][0]
    with open(folder / f"audio_{e['shard_id']}.tar", "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * 64)
    (folder / "tarred_audio_manifest.json").write_bytes(b"\n".join([*lines[:-1], b"{broken"]) + b"\n")
    here = validate(tmp_path / "ray", progress=False)
    there = validate(tmp_path / "ray", progress=False, executor="ray")
    assert not here.ok and here.counts().keys() >= {"decode", "bad_line", "orphan"}
    assert (there.entries, there.problems) == (here.entries, here.problems)


def test_ray_rerun_writes_only_the_missing_shards(ray_instance, corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["shard", str(corpus.manifest), "--out", str(out), "--num-shards", "5", "--no-progress"]
    assert cli_main([*args, "--executor", "ray"]) == 0
    first = _files(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("audio_*.tar")}
    # two shards lost with their markers, as when their tasks were killed; one left a partial .tmp
    for k in (1, 3):
        (out / f"audio_{k}.tar").unlink()
        (out / ".speechdata" / f"audio_{k}.done").unlink()
        del kept[f"audio_{k}.tar"]
    (out / "audio_3.tar.tmp").write_bytes(b"partial")
    capsys.readouterr()
    assert cli_main([*args, "--executor", "ray"]) == 0
    assert "in 5 shards (3 reused)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("audio_*.tar") if p.name in kept} == kept
    assert _files(out) == first and not (out / "audio_3.tar.tmp").exists()
    # the local executor recognises the Ray run's shards as its own: nothing is rewritten
    assert cli_main([*args, "--workers", "2"]) == 0
    assert "(5 reused)" in capsys.readouterr().out


def test_ray_tasks_read_clips_named_by_url(ray_instance, corpus, tmp_path):
    """Clips on an HTTP server (no shared folder): each Ray task reads its clips by URL, and the
    shards are those the local executor writes from the same manifest."""
    from helpers_remote import url_manifest
    from servers import RangeHTTPServer

    opts = {"num_shards": 3, "codec": "flac", "progress": False}
    with RangeHTTPServer(corpus.root) as server:
        manifest = url_manifest(corpus.entries, server.url, tmp_path / "urls.json")
        local = write_shards([manifest], tmp_path / "local", ShardOptions(**opts))
        ray = write_shards([manifest], tmp_path / "ray", ShardOptions(executor="ray", **opts))
    assert ray.entries == local.entries == len(corpus.entries)
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert sum(k.endswith(".tar") for k in a) == 3 and a == b


def test_ray_task_error_is_one_line(ray_instance, corpus, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(corpus.root, src)
    opts = ShardOptions(num_shards=2, progress=False)
    entries, sources = read_entries([src / corpus.manifest.name], opts, DropCounter())
    jobs = plan_dataset(tmp_path / "out", entries, sources, opts, 0)
    (tmp_path / "out" / "sharded_manifests").mkdir(parents=True)
    (tmp_path / "out" / ".speechdata").mkdir()
    gone = jobs[1].sources[next(iter(jobs[1].sources))].path
    os.unlink(gone)  # removed after planning: the task finds it missing
    with RayExecutor() as ex, pytest.raises(DataError) as err:
        ex.map(_write_task, jobs)
    assert err.value.reason == "missing_audio" and gone in str(err.value)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "out").glob("audio_1.tar*"))


def test_missing_ray_and_bad_executor_are_one_line(monkeypatch, corpus, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"^--executor ray: the ray package is not installed"):
        open_executor("ray")
    with pytest.raises(ConfigError, match=r"^--executor: must be local, ray or ray://ADDRESS, got 'dask'$"):
        ShardOptions(executor="dask").check()
    assert cli_main(["validate", str(tmp_path), "--executor", "ray://"]) == 1
