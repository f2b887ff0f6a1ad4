"""lhotse Shar datasets as sources (input_cfg type lhotse_shar, a section's shar_path): written
here with lhotse's own writer from a generated corpus, read as a tarred dataset by offset (or
streamed), and compared with the corpus' own manifest; broken shards are one-line errors naming
the file."""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lhotse")

from lhotse import CutSet, Recording, SupervisionSegment

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, SpeechDataError
from speechdata.lines import ORIGIN_KEY
from speechdata.testing import make_corpus

#: Cuts per Shar shard (30 cuts: 4 shards, the last one short).
SHARD_SIZE = 8
COMMON = {"max_duration": None, "drop_last": False, "micro_batch_size": 4}


@pytest.fixture(scope="module")
def shar(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A corpus of single-audio mono examples (some are spans of a shared file), its cuts written as Shar (flac, lossless) with
    ``CutSet.to_shar``, and a tokenizer."""
    root = tmp_path_factory.mktemp("shar")
    corpus = make_corpus(
        root / "c", n=30, seed=11, max_duration=4.0, multi_audio_fraction=0.0, stereo_fraction=0.0
    )
    cuts = []
    for k, e in enumerate(corpus.entries):
        rec = Recording.from_file(corpus.root / e["audio_filepath"], recording_id=f"rec{k}")
        # the example's span of its file (the corpus shares some files between examples)
        span = {"offset": float(e.get("offset", 0.0)), "duration": float(e["duration"])}
        cut = rec.to_cut().truncate(**span, preserve_id=True)
        cut.supervisions = [
            SupervisionSegment(
                id=f"sup{k}",
                recording_id=rec.id,
                start=0.0,
                duration=cut.duration,
                text=e["answer"],
                language="en",
            )
        ]
        if e.get("context"):
            cut.custom = {"context": e["context"]}  # a NeMo line's context, as a custom field
        cuts.append(cut)
    out = root / "shar"
    out.mkdir()
    written = CutSet.from_cuts(cuts).to_shar(out, fields={"recording": "flac"}, shard_size=SHARD_SIZE)
    tok = corpus.train_tokenizer(vocab_size=90, out_dir=root / "tok")
    return {"root": root, "dir": out, "written": written, "corpus": corpus, "tok": tok}


def _examples(section: dict[str, Any], tok: Any) -> dict[tuple[int, ...], list[np.ndarray]]:
    """Per token sequence: the audio of each example that has it."""
    out: dict[tuple[int, ...], list[np.ndarray]] = {}
    for batch in build_dataloader(make_dataset_config({**COMMON, **section}), tok):
        for b in range(len(batch["sample_ids"])):
            tokens = tuple(batch["tokens"][b, : int(batch["tokens_length"][b])].tolist())
            out.setdefault(tokens, []).append(
                batch["audio_signal"][b, : batch["audio_signal_length"][b]].numpy()
            )
    return out


def _same(got: dict, want: dict) -> None:
    """The same examples: token sequences, and for each its audio (flac is lossless)."""
    assert got.keys() == want.keys() and sum(map(len, got.values())) == sum(map(len, want.values()))
    for tokens, clips in got.items():
        ref = sorted(want[tokens], key=lambda a: (a.size, float(a.sum())))
        for audio, expected in zip(sorted(clips, key=lambda a: (a.size, float(a.sum()))), ref, strict=True):
            np.testing.assert_allclose(audio, expected, atol=1e-6)


@pytest.mark.parametrize(("streaming", "workers"), [(False, 0), (False, 2), (True, 0)])
def test_shar_loads_like_the_original_manifest(shar: dict[str, Any], streaming: bool, workers: int) -> None:
    want = _examples({"manifest_filepath": str(shar["corpus"].manifest)}, shar["tok"])
    source = {"type": "lhotse_shar", "shar_path": str(shar["dir"])}
    section = {"input_cfg": [source], "streaming": streaming, "num_workers": workers}
    _same(_examples(section, shar["tok"]), want)


def test_shar_path_forms(shar: dict[str, Any]) -> None:
    """A section's shar_path (a folder) and NeMo 2.x's mapping of fields to shard lists."""
    want = _examples({"manifest_filepath": str(shar["corpus"].manifest)}, shar["tok"])
    ds = make_dataset_config({"shar_path": str(shar["dir"])})
    assert ds.is_tarred and ds.manifests == [f"lhotse_shar:{shar['dir']}"]
    _same(_examples({"shar_path": str(shar["dir"])}, shar["tok"]), want)
    fields = {
        "cuts": shar["written"]["cuts"],
        "recording": str(shar["dir"] / "recording.{000000..000003}.tar"),
    }
    _same(_examples({"input_cfg": [{"type": "lhotse_shar", "shar_path": fields}]}, shar["tok"]), want)
    loader = build_dataloader(make_dataset_config({**COMMON, "shar_path": str(shar["dir"])}), shar["tok"])
    line = loader.source.record(0)
    assert line.shard_id == 0 and line.audio == ["rec0.flac"] and line.extra["lang"] == "en"


def test_broken_shar_shards_are_named(
    shar: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(path: Path) -> None:
        build_dataloader(make_dataset_config({**COMMON, "shar_path": str(path)}), shar["tok"])

    def copy(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(shar["dir"], out)
        return out

    missing = copy("missing")
    (missing / "recording.000002.tar").unlink()
    with pytest.raises(ConfigError, match=r"4 cuts shard\(s\) but 3 recording tar\(s\)"):
        load(missing)
    fields = {
        "cuts": [str(missing / "cuts.000000.jsonl.gz")],
        "recording": [str(missing / "recording.000002.tar")],
    }
    with pytest.raises(SpeechDataError, match=r"recording\.000002\.tar: Shar shard not found$"):
        build_dataloader(make_dataset_config({**COMMON, "shar_path": fields}), shar["tok"])

    truncated = copy("truncated")
    tar = truncated / "recording.000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(
        SpeechDataError,
        match=rf"^{truncated}/cuts\.000001\.jsonl\.gz:\d+: cut 'rec\d+': no audio member rec\d+\.\* in {tar} "
        r"\(missing, or the tar is truncated\)$",
    ):
        load(truncated)

    corrupt = copy("corrupt")
    cuts = corrupt / "cuts.000003.jsonl.gz"
    cuts.write_bytes(gzip.compress(b"x" * 4000)[:-30])
    with pytest.raises(SpeechDataError, match=rf"^{cuts}: cannot read after line \d+ \("):
        load(corrupt)

    with pytest.raises(ConfigError, match=r"shar_path: .*nowhere: not a folder$"):
        load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"a list of Shar folders is not supported"):
        make_dataset_config({"shar_path": [str(shar["dir"])]})

    monkeypatch.setitem(sys.modules, "lhotse.serialization", None)  # as if lhotse were not installed
    with pytest.raises(
        ConfigError, match=r"reading lhotse cuts needs lhotse \(pip install 'speechdata\[lhotse\]'\)$"
    ):
        load(copy("nolhotse"))


def test_shar_sources_mix_by_weight(shar: dict[str, Any]) -> None:
    """Two Shar sources in input_cfg are two tarred datasets mixed by their weights."""
    fields = {"cuts": shar["written"]["cuts"][:2], "recording": shar["written"]["recording"][:2]}
    sources = [
        {"type": "lhotse_shar", "shar_path": str(shar["dir"]), "weight": 3},
        {"type": "lhotse_shar", "shar_path": fields, "weight": 1},
    ]
    loader = build_dataloader(make_dataset_config({**COMMON, "input_cfg": sources}), shar["tok"])
    datasets = [sid >> 32 for batch in loader for sid in batch["sample_ids"].tolist()]
    total = len(shar["corpus"].entries) + 2 * SHARD_SIZE  # the epoch has as many entries as examples
    assert len(datasets) == total and abs(datasets.count(0) - 0.75 * total) < 1  # within one example


def test_messages_name_the_cuts_shard_line_and_cut(shar: dict[str, Any]) -> None:
    """A Shar example's place (batch metadata, messages) is its cuts shard's line and the cut
    (cut k: shard k // SHARD_SIZE, line k % SHARD_SIZE + 1), never the cached manifest's line;
    the origin itself never reaches a batch."""
    loader = build_dataloader(make_dataset_config({**COMMON, "shar_path": str(shar["dir"])}), shar["tok"])
    metadata = [m for batch in loader for m in batch["metadata"]]
    assert len(metadata) == 30 and all(ORIGIN_KEY not in m for m in metadata)
    want = {
        f"{shar['dir']}/cuts.{k // SHARD_SIZE:06d}.jsonl.gz:{k % SHARD_SIZE + 1}: cut 'rec{k}'"
        for k in range(30)
    }
    assert {m["where"] for m in metadata} == want
    assert loader.index.where(0) == f"{shar['dir']}/cuts.000000.jsonl.gz:1: cut 'rec0'"


def test_shar_on_object_storage(shar: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Shar folder on S3 (moto): listed through s3fs, the cuts downloaded once, the recording
    tars' member tables read remotely and their members read by range; the same examples as the
    local folder, and messages name the cuts shard's URL and line."""
    from servers import s3_serving

    from speechdata.storage import reset_filesystems

    want = _examples({"shar_path": str(shar["dir"])}, shar["tok"])
    files: dict[str, Path | bytes] = {f"shar/{p.name}": p for p in sorted(shar["dir"].iterdir())}
    with s3_serving("shar-input", files) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        reset_filesystems()
        try:
            for spec in (
                "s3://shar-input/shar",
                {
                    "cuts": ["s3://shar-input/shar/cuts.{000000..000003}.jsonl.gz"],
                    "recording": ["s3://shar-input/shar/recording.{000000..000003}.tar"],
                },
            ):
                for workers in (0, 2):
                    section = {
                        "input_cfg": [{"type": "lhotse_shar", "shar_path": spec}],
                        "num_workers": workers,
                    }
                    _same(_examples(section, shar["tok"]), want)
            loader = build_dataloader(
                make_dataset_config({**COMMON, "shar_path": "s3://shar-input/shar"}), shar["tok"]
            )
            assert loader.index.where(0) == "s3://shar-input/shar/cuts.000000.jsonl.gz:1: cut 'rec0'"
            with pytest.raises(ConfigError, match=r"shar_path: s3://shar-input/nowhere: not a folder"):
                build_dataloader(
                    make_dataset_config({**COMMON, "shar_path": "s3://shar-input/nowhere"}), shar["tok"]
                )
        finally:
            reset_filesystems()
