"""The manifest index cache is bound to the manifest's real path and content (docs/caching.md):
a copied, moved or edited dataset is never served another's rows or another folder's audio."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import speechdata.manifest as manifest_mod
from speechdata import build_dataloader
from speechdata.cache import MAX_PER_SOURCE, FileStamp, cache_root
from speechdata.config import make_dataset_config
from speechdata.errors import DataError
from speechdata.manifest import ManifestKeys, load_index
from speechdata.testing import make_corpus, write_manifest
from speechdata.text.tokenizer import Tokenizer


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The manifests indexed from scratch (cache misses) during the test."""
    seen: list[str] = []
    real = manifest_mod.build_one

    def spy(path, *a, **kw):
        seen.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(manifest_mod, "build_one", spy)
    return seen


def _age(path: Path, seconds: float = 60.0) -> None:
    """Make the file look last changed ``seconds`` ago (so its stamp is not racy)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def _tone(path: Path, freq: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, audio, rate, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def test_copied_dataset_with_edited_audio_loads_its_own_audio(tmp_path: Path) -> None:
    """`cp -a A B`, edit B/a.wav, load B: B's paths and B's samples (was: A's)."""
    a = tmp_path / "copyA"
    corpus = make_corpus(a, n=6, seed=3, max_duration=3.0, multi_audio_fraction=0.0, locator=None)
    tokenizer: Tokenizer = corpus.train_tokenizer(vocab_size=60)
    cfg = {"micro_batch_size": 6, "shuffle": False, "drop_last": False, "min_duration": None}
    list(build_dataloader(make_dataset_config({**cfg, "manifest_filepath": str(corpus.manifest)}), tokenizer))
    b = tmp_path / "copyB"
    shutil.copytree(a, b, copy_function=shutil.copy2)  # cp -a: mtimes kept
    first = json.loads(corpus.manifest.read_text().splitlines()[0])
    edited = b / first["audio_filepath"]
    info = sf.info(edited)
    new = np.zeros((info.frames, info.channels) if info.channels > 1 else info.frames, np.float32)
    new[..., ::2] = 0.25  # same length, different samples ("denoised")
    sf.write(edited, new, info.samplerate, format=info.format, subtype=info.subtype)
    loader = build_dataloader(
        make_dataset_config({**cfg, "manifest_filepath": str(b / corpus.manifest.name)}), tokenizer
    )
    batch = next(iter(loader))
    paths = [p for m in batch["metadata"] for p in m["audio_filepath"]]
    assert all(p.startswith(str(b.resolve())) for p in paths), paths
    row = [k for k, m in enumerate(batch["metadata"]) if m["audio_filepath"][0] == str(edited.resolve())]
    assert len(row) == 1
    got = batch["audio_signal"][row[0], : int(batch["audio_signal_length"][row[0]])].numpy()
    assert got.max() > 0.1 and np.allclose(got[got != 0], got[got != 0].max(), atol=0.05)


def test_two_folders_same_name_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data/train.jsonl in two folders, same size and mtime, loaded by relative and absolute path
    from different working directories: each gets its own lines and its own folder."""
    folders = []
    for name, word in (("one", "alpha"), ("two", "omega")):
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        _tone(root / "data" / "a.wav", 440.0 if name == "one" else 660.0)
        m = write_manifest(
            root / "data" / "train.jsonl", [{"audio_filepath": "a.wav", "duration": 1.0, "text": word}]
        )
        os.utime(m, ns=(10**18, 10**18))
        folders.append(root)
    assert (folders[0] / "data/train.jsonl").stat().st_size == (
        folders[1] / "data/train.jsonl"
    ).stat().st_size
    for root, word in ((folders[0], "alpha"), (folders[1], "omega"), (folders[0], "alpha")):
        monkeypatch.chdir(root)
        for given in ("data/train.jsonl", str(root / "data/train.jsonl")):
            rec = load_index(given).record(0)
            assert rec.answer == word
            assert rec.audio == [str((root / "data" / "a.wav").resolve())]


def test_moved_folder_resolves_against_its_new_place(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    _tone(old / "a.wav", 440.0)
    write_manifest(old / "m.jsonl", [{"audio_filepath": "a.wav", "duration": 1.0, "text": "x"}])
    assert load_index(old / "m.jsonl").record(0).audio == [str((old / "a.wav").resolve())]
    new = tmp_path / "new"
    old.rename(new)
    rec = load_index(new / "m.jsonl").record(0)
    assert rec.audio == [str((new / "a.wav").resolve())]
    assert Path(rec.audio[0]).is_file()


def test_same_size_edit_with_restored_mtime_is_seen(tmp_path: Path, builds: list[str]) -> None:
    path = write_manifest(
        tmp_path / "m.jsonl", [{"audio_filepath": "/x/a.wav", "duration": 1.5, "text": "cat"}]
    )
    _age(path)
    assert load_index(path).record(0).answer == "cat"
    assert load_index(path).record(0).answer == "cat"
    assert len(builds) == 1  # the second load was served by the cache
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(b"cat", b"dog"))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert load_index(path).record(0).answer == "dog"
    assert len(builds) == 2


def test_racy_stamp_is_checked_by_content(tmp_path: Path, builds: list[str]) -> None:
    """An entry made right after the manifest changed is verified by CRC before reuse; a changed
    stamp over unchanged content (a restore, a chmod) keeps the entry."""
    path = write_manifest(
        tmp_path / "m.jsonl", [{"audio_filepath": "/x/a.wav", "duration": 1.5, "text": "cat"}]
    )
    assert FileStamp.of(path).racy
    load_index(path)
    assert load_index(path).record(0).answer == "cat"
    assert len(builds) == 1  # racy, but the CRC matched
    os.chmod(path, 0o600)  # ctime changes, content does not
    assert load_index(path).record(0).answer == "cat"
    assert len(builds) == 1


def test_gzip_manifests_with_the_same_name_do_not_share_their_text(tmp_path: Path) -> None:
    answers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        m = write_manifest(
            tmp_path / name / "m.jsonl", [{"audio_filepath": "/x.wav", "duration": 1.0, "text": name}]
        )
        gz = m.with_suffix(".jsonl.gz")
        import gzip

        gz.write_bytes(gzip.compress(m.read_bytes(), mtime=0))
        m.unlink()
        answers.append(load_index(gz))
    assert [ix.record(0).answer for ix in answers] == ["a", "b"]


def test_cache_location_option_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_manifest(
        tmp_path / "data" / "m.jsonl", [{"audio_filepath": "/x.wav", "duration": 1.0, "text": "x"}]
    )
    monkeypatch.setenv("SPEECHDATA_CACHE_DIR", str(tmp_path / "env"))
    load_index(path)
    assert len(list((tmp_path / "env" / "index").glob("*.npz"))) == 1
    load_index(path, cache_dir=tmp_path / "explicit")
    assert len(list((tmp_path / "explicit" / "index").glob("*.npz"))) == 1
    monkeypatch.delenv("SPEECHDATA_CACHE_DIR")
    monkeypatch.delenv("SPEECHDATA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "speechdata"
    load_index(path)
    assert len(list((tmp_path / "xdg" / "speechdata" / "index").glob("*.npz"))) == 1
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["m.jsonl"]  # nothing beside the data


def test_cache_dir_in_config_and_cli(tmp_path: Path) -> None:
    from speechdata.cli import main

    corpus = make_corpus(
        tmp_path / "c", n=4, seed=1, max_duration=2.0, multi_audio_fraction=0.0, locator=None
    )
    assert main(["inspect", str(corpus.manifest), "--cache-dir", str(tmp_path / "cli")]) == 0
    assert len(list((tmp_path / "cli" / "index").glob("*.npz"))) == 1
    tokenizer = corpus.train_tokenizer(vocab_size=60)
    cfg = make_dataset_config(
        {"manifest_filepath": str(corpus.manifest), "cache_dir": str(tmp_path / "cfg"), "min_duration": None}
    )
    build_dataloader(cfg, tokenizer)
    assert len(list((tmp_path / "cfg" / "index").glob("*.npz"))) == 1


def test_stale_entries_are_bounded(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": "/x.wav", "duration": 1.0, "text": "x"}])
    for k in range(MAX_PER_SOURCE + 3):
        load_index(path, ManifestKeys(answer_key=f"a{k}"), cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c" / "index").glob("*.npz"))) == MAX_PER_SOURCE


def test_relative_audio_path_errors_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One wording for a missing file, found while indexing (no duration) or while reading."""
    (tmp_path / "data" / "manifests").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    m = write_manifest("data/manifests/m.jsonl", [{"audio_filepath": "a.wav", "text": "x"}])
    with pytest.raises(
        DataError,
        match=r"^data/manifests/m\.jsonl:1: a\.wav \(relative to data/manifests/\): audio file not found$",
    ):
        load_index(str(m))
    write_manifest(m, [{"audio_filepath": "a.wav", "duration": 1.0, "text": "x"}])
    index = load_index(str(m))
    from speechdata.collate import pack  # noqa: F401  (the loader's reading path below)

    with pytest.raises(
        DataError,
        match=r"^data/manifests/m\.jsonl:1: a\.wav \(relative to data/manifests/\): audio file not found$",
    ):
        rec = index.record(0)
        from speechdata.audio import load_audio

        load_audio(rec.audio[0], where=f"{rec.where}: {rec.describe_audio(0)}")


def test_home_relative_paths_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _tone(tmp_path / "a.wav", 440.0)
    write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": "~/a.wav", "text": "x"}])
    index = load_index("~/m.jsonl")
    assert index.record(0).audio == [str(tmp_path / "a.wav")]
    assert float(index.duration[0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"audio_filepath": "/a.wav", "duration": NaN, "text": "x"}\n',
            r"m\.jsonl:1: NaN is not valid JSON",
        ),
        (
            b'[\n  {"audio_filepath": "/a.wav", "duration": 1.0, "text": "x"}\n]\n',
            r"expected JSON Lines \(one object per line\)",
        ),
        (
            b'[{"audio_filepath": "/a.wav", "duration": 1.0, "text": "x"}]\n',
            r"expected JSON Lines \(one object per line\)",
        ),
    ],
)
def test_common_mistakes_get_clear_messages(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(content)
    with pytest.raises(Exception, match=message) as info:
        load_index(path)
    assert "\n" not in str(info.value)


def test_utf8_bom_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    line = {"audio_filepath": "/a.wav", "duration": 1.0, "text": "naïve"}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(line, ensure_ascii=False).encode() + b"\n")
    index = load_index(path)
    assert len(index) == 1 and index.record(0).answer == "naïve"


def test_indexing_drops_keep_their_places_through_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio_filepath": "/a.wav", "duration": 1.0, "text": "x"}\n{broken\n')
    first = load_index(path, on_error="skip")
    again = load_index(path, on_error="skip")  # from the cache
    assert again.drops.to_dict() == first.drops.to_dict() == {"bad_line": 1}
    assert again.drops.places == first.drops.places and first.drops.places["bad_line"] == [f"{path}:2"]
    assert again.drops.summary() == first.drops.summary()
