"""Security properties (docs/errors.md): manifests never run commands, ``speechdata shard`` writes only
under ``--out``, tar member names never reach the file system, YAML is loaded safely, and nothing
in the package unpickles untrusted bytes (``torch.load`` only with ``weights_only=True``).

Each "nothing happened" check has a positive control showing the detector would have seen it.
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest

import speechdata
from speechdata import build_dataloader, load_config, load_index
from speechdata.cli import main
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, DataError, SpeechDataError
from speechdata.shards.read import TarredDataset
from speechdata.shards.validate import validate
from speechdata.shards.write import ShardOptions, write_shards
from speechdata.testing import make_corpus
from speechdata.text.tokenizer import Tokenizer

LOCATOR = "|audio|"
PACKAGE = Path(speechdata.__file__).resolve().parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(
        tmp_path_factory.mktemp("sec"), n=6, seed=2, max_duration=3.0, multi_audio_fraction=0.0
    )


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return corpus.train_tokenizer(vocab_size=100, locator=LOCATOR)


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sec_shards")
    write_shards([corpus.manifest], out, ShardOptions(num_shards=2, progress=False))
    return out


def _cfg(manifest: Path, **kw: Any):
    return make_dataset_config(
        {
            "manifest_filepath": str(manifest),
            "audio_locator": LOCATOR,
            "micro_batch_size": 2,
            "drop_last": False,
            "min_duration": None,
            "max_duration": None,
            "shuffle": False,
            **kw,
        }
    )


def _write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    return path


def _run_all(manifest: Path, tokenizer: Tokenizer, **kw: Any) -> None:
    """Index and iterate a manifest in both error modes; every failure must be a SpeechDataError."""
    for on_error in ("raise", "skip"):
        try:
            for _ in build_dataloader(_cfg(manifest, on_error=on_error, **kw), tokenizer):
                pass
        except SpeechDataError:
            pass


# ------------------------------------------------------------------------------- pipe: paths


def test_pipe_path_in_a_manifest_is_never_executed(tmp_path: Path, corpus, tokenizer, capsys) -> None:
    marker = tmp_path / "pwned"
    cmd = f"pipe:touch {marker}"
    good = [dict(e, audio_filepath=str(corpus.root / e["audio_filepath"])) for e in corpus.entries[:3]]
    with_duration = _write(tmp_path / "a.jsonl", [good[0], dict(good[1], audio_filepath=cmd), good[2]])
    no_duration = dict(good[1], audio_filepath=cmd)
    no_duration.pop("duration")
    without = _write(tmp_path / "b.jsonl", [good[0], no_duration, good[2]])

    _run_all(with_duration, tokenizer)
    _run_all(without, tokenizer)
    with pytest.raises(DataError, match="audio file not found"):
        list(build_dataloader(_cfg(with_duration), tokenizer))
    for m in (with_duration, without):
        assert main(["shard", str(m), "--out", str(tmp_path / f"o_{m.stem}"), "--no-progress"]) == 1
        assert main(["inspect", str(m)]) == 0
    capsys.readouterr()
    assert not marker.exists()


def test_pipe_member_names_in_a_tarred_manifest_are_never_executed(
    tmp_path: Path, shards: Path, tokenizer
) -> None:
    marker = tmp_path / "pwned"
    d = tmp_path / "ds"
    shutil.copytree(shards, d, ignore=shutil.ignore_patterns(".speechdata*"))
    entries = [orjson.loads(x) for x in (d / "tarred_audio_manifest.json").read_bytes().splitlines()]
    entries[1] = {k: v for k, v in entries[1].items() if k not in ("tar_offset", "tar_size")}
    entries[1]["audio_filepath"] = f"pipe:touch {marker}"
    entries[2]["shard_id"] = f"pipe:touch {marker}"
    manifest = _write(d / "tarred_audio_manifest.json", entries)
    local = str(d / "audio_{0..1}.tar")
    _run_all(manifest, tokenizer, is_tarred=True, tarred_audio_filepaths=local)
    # streamed through a pipe: the config's command runs, the manifest's names are only looked up
    streamed = f"pipe:cat {d}/audio__OP_0..1_CL_.tar"
    _run_all(manifest, tokenizer, is_tarred=True, tarred_audio_filepaths=streamed, shuffle_n=4)
    assert not validate(d, progress=False).ok
    assert not marker.exists()
    # positive control: a pipe: command in the config is run (so the marker check can see one)
    control = f"pipe:touch {marker} && cat {d}/audio__OP_0..1_CL_.tar"
    _run_all(manifest, tokenizer, is_tarred=True, tarred_audio_filepaths=control)
    assert marker.exists()


# --------------------------------------------------------------------- writes outside --out


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` but ``skip``: files with (size, mtime), folders with (0, 0)."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
        for p in root.rglob("*")
        if skip not in p.parents and p != skip
    }


def test_shard_writes_nothing_outside_out(tmp_path: Path, corpus, capsys) -> None:
    src = tmp_path / "data" / "src"
    shutil.copytree(corpus.root / "audio", src)
    files = sorted(p.name for p in src.iterdir())
    mdir = tmp_path / "data" / "manifests" / "deep"
    mdir.mkdir(parents=True)
    entries = []
    for k, e in enumerate(corpus.entries):
        name = Path(e["audio_filepath"]).name
        path = [f"../../src/{name}", str(src / name), f"./../x/../../src/./{name}"][k % 3]
        entries.append(dict(e, audio_filepath=path))
    entries.append(dict(corpus.entries[0], audio_filepath="../../src/../../../" * 3 + "etc/hostname"))
    manifest = _write(mdir / "m.jsonl", entries)
    out = tmp_path / "data" / "out"
    before = _snapshot(tmp_path, out)
    rc = main(
        [
            "shard",
            str(manifest),
            "--out",
            str(out),
            "--num-shards",
            "2",
            "--no-progress",
            "--on-error",
            "skip",
        ]
    )
    capsys.readouterr()
    assert rc == 0
    assert _snapshot(tmp_path, out) == before  # not even an index cache beside the manifest
    assert sorted(p.name for p in src.iterdir()) == files
    names = []
    for tar in sorted(out.glob("audio_*.tar")):
        with tarfile.open(tar) as tf:
            names += tf.getnames()
    assert len(names) == len(corpus.entries)
    for name in names:
        assert "/" not in name and not name.startswith(".") and ".." not in name, name


def _evil_tar(path: Path, names: list[str], payload: bytes) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))


def test_member_names_of_a_crafted_tar_never_touch_the_file_system(tmp_path: Path, corpus, tokenizer) -> None:
    wav = (corpus.root / corpus.entries[0]["audio_filepath"]).read_bytes()
    escape = tmp_path / "escaped.wav"
    names = ["../escaped.wav", "../../escaped.wav", str(escape), "ok/../../escaped.wav"]
    d = tmp_path / "ds" / "inner"
    d.mkdir(parents=True)
    _evil_tar(d / "audio_0.tar", names, wav)
    entry = {k: v for k, v in corpus.entries[0].items() if k != "audio_filepath"}
    manifest = _write(
        d / "tarred_audio_manifest.json", [dict(entry, audio_filepath=n, shard_id=0) for n in names]
    )
    before = _snapshot(tmp_path, d)
    for on_error in ("raise", "skip"):
        cfg = _cfg(manifest, is_tarred=True, tarred_audio_filepaths=str(d / "audio_0.tar"), on_error=on_error)
        loader = build_dataloader(cfg, tokenizer)
        assert sum(len(b["sample_ids"]) for b in loader) == len(names)  # read by name, in memory
        ds = TarredDataset(cfg)
        for i in range(len(ds.index)):
            assert ds.read_audio_bytes(ds.index.record(i)) == [wav]
    validate(d, progress=False)
    load_index(manifest, cache=False)
    assert not escape.exists()
    assert _snapshot(tmp_path, d) == before


# ------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object:os.system {{}}",
        "!!python/name:os.system",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    ],
)
def test_yaml_python_tags_are_rejected(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    value = tag.format(marker=marker)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  train_ds:\n    manifest_filepath: {value}\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml:3: YAML error: could not determine a constructor"
    ) as info:
        load_config(cfg)
    assert "\n" not in str(info.value)
    # an override is either rejected or kept as the literal text: never constructed
    try:
        cfg = load_config({"model": {}}, [f"model.x={value}"])
    except ConfigError as e:
        assert "\n" not in str(e) and "YAML error" in str(e)
    else:
        assert cfg.model.x == value
    assert not marker.exists()


# --------------------------------------------------------------------- unpickling / loading


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of ``<module>.<name>(...)`` in the package source."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append((path, node))
    return found


def _keyword(call: ast.Call, key: str) -> Any:
    for kw in call.keywords:
        if kw.arg == key:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_torch_load_only_with_weights_only() -> None:
    for path, call in _calls("load"):
        owner = call.func.value  # type: ignore[attr-defined]
        if isinstance(owner, ast.Name) and owner.id == "torch":
            assert _keyword(call, "weights_only") is True, (
                f"{path}:{call.lineno}: torch.load without weights_only=True"
            )
        if isinstance(owner, ast.Name) and owner.id in ("np", "numpy"):
            assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}: np.load may unpickle"
        if isinstance(owner, ast.Name) and owner.id == "yaml":
            loader = _keyword(call, "Loader")
            assert isinstance(loader, ast.Name) and loader.id in ("_Loader", "SafeLoader"), (
                f"{path}:{call.lineno}"
            )
    for banned in ("unsafe_load", "full_load", "loads"):
        for path, call in _calls(banned):
            owner = call.func.value  # type: ignore[attr-defined]
            assert not (isinstance(owner, ast.Name) and owner.id in ("pickle", "yaml", "dill", "marshal")), (
                f"{path}:{call.lineno}: {owner.id}.{banned}"  # type: ignore[attr-defined]
            )


def test_the_scan_sees_an_unsafe_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Positive control for the scan above: an unsafe ``torch.load`` in the package is found."""
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "m.py").write_text("import torch\nstate = torch.load('x.ckpt')\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"torch\.load without weights_only=True"):
        test_torch_load_only_with_weights_only()


def test_index_cache_is_never_unpickled(tmp_path: Path, corpus) -> None:
    """A cache file replaced by a pickle-bearing .npz is ignored (rebuilt), never executed."""
    import numpy as np

    manifest = shutil.copy(corpus.manifest, tmp_path / "m.jsonl")  # durations given: no audio needed
    index = load_index(manifest, cache_dir=tmp_path / "cache")
    caches = list((tmp_path / "cache" / "index").glob("*.npz"))
    assert len(caches) == 1
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    with open(caches[0], "wb") as f:
        np.savez(f, meta=arr, duration=arr)
    again = load_index(manifest, cache_dir=tmp_path / "cache")
    assert len(again) == len(index)
    assert not marker.exists()
