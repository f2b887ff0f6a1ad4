"""lhotse CutSet manifests as sources (input_cfg types lhotse / lhotse_as_conversation, a section's
cuts_path): converted once into a NeMo manifest, read like any manifest; what a NeMo manifest
cannot hold is a one-line error naming the cuts file's line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lhotse")

from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

from speechdata import build_dataloader
from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError, SpeechDataError
from speechdata.lines import ORIGIN_KEY
from speechdata.sources.cuts import cuts_manifest, resolve_cuts
from speechdata.testing import make_corpus

LOCATOR = "<|audioplaceholder|>"


def _cut(
    k: int,
    path: str,
    duration: float,
    text: str,
    kind: str = "file",
    channels: int = 1,
    custom: dict[str, Any] | None = None,
) -> MonoCut:
    rec = Recording(
        id=f"rec{k}",
        sources=[AudioSource(type=kind, channels=list(range(channels)), source=path)],
        sampling_rate=16000,
        num_samples=round(duration * 16000),
        duration=duration,
    )
    sup = SupervisionSegment(
        id=f"sup{k}", recording_id=rec.id, start=0.0, duration=duration, text=text, language="en"
    )
    return MonoCut(
        id=f"cut{k}",
        start=0.0,
        duration=duration,
        channel=0,
        recording=rec,
        supervisions=[sup],
        custom=custom,
    )


@pytest.fixture(scope="module")
def cuts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CutSet of the single-audio, mono examples of a synthetic corpus (relative audio paths,
    resolved against the cuts file's folder), and a tokenizer."""
    root = tmp_path_factory.mktemp("cuts")
    corpus = make_corpus(
        root / "c", n=30, seed=8, max_duration=5.0, multi_audio_fraction=0.0, stereo_fraction=0.0
    )
    made = [
        _cut(k, e["audio_filepath"], float(e["duration"]), e["answer"])
        for k, e in enumerate(corpus.entries)
        if isinstance(e["audio_filepath"], str)
    ]
    path = corpus.root / "cuts.jsonl.gz"
    CutSet.from_cuts(made).to_file(path)
    tok = corpus.train_tokenizer(vocab_size=90, locator=LOCATOR, out_dir=root / "tok")
    return {"path": path, "cuts": made, "corpus": corpus, "tok": tok}


def test_cuts_become_a_nemo_manifest(cuts: dict[str, Any]) -> None:
    import json

    out = cuts_manifest(str(cuts["path"]))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(cuts["cuts"])
    first, cut = lines[0], cuts["cuts"][0]
    assert first["audio_filepath"] == str(cuts["corpus"].root / cut.recording.sources[0].source)
    assert first["duration"] == pytest.approx(cut.duration) and first["text"] == cut.supervisions[0].text
    assert first["lang"] == "en" and "offset" not in first
    assert cuts_manifest(str(cuts["path"])) == out  # converted once

    src = str(cuts["corpus"].root / cut.recording.sources[0].source)
    part = _cut(5, src, float(cut.duration), "a b", custom={"context": "Say it.", "speaker": "s1", "n": [1]})
    path = cuts["path"].parent / "more.jsonl"
    CutSet.from_cuts([part.truncate(offset=0.25, duration=0.5), part]).to_file(path)
    one, two = [json.loads(line) for line in cuts_manifest(str(path)).read_text().splitlines()]
    assert (one["offset"], one["duration"], one["audio_filepath"]) == (0.25, 0.5, src)
    assert two["context"] == "Say it." and two["speaker"] == "s1" and "n" not in two  # plain values only


def test_salm_lhotse_as_conversation_source_loads(cuts: dict[str, Any]) -> None:
    """NeMo's SALM input: lhotse_as_conversation with the context tag; the batches hold every cut
    once per epoch, with its transcript as the answer."""
    section = {
        "input_cfg": [
            {
                "type": "lhotse_as_conversation",
                "cuts_path": str(cuts["path"]),
                "audio_locator_tag": LOCATOR,
                "tags": {"context": "Repeat after me, typing in lowercase."},
            }
        ],
        "micro_batch_size": 4,
        "drop_last": False,
        "min_duration": None,
        "max_duration": None,
        "token_equivalent_duration": 0.08,
        "batch_tokens": 800,
        "batch_size": None,
        "num_buckets": 2,
    }
    ds = make_dataset_config(section, "train_ds")
    assert ds.manifests == [f"lhotse:{cuts['path']}"] and ds.default_context.startswith("Repeat after me")
    loader = build_dataloader(ds, cuts["tok"])
    assert loader.index.datasets[0].path.endswith(".jsonl") and len(loader.index) == len(cuts["cuts"])
    seen = 0
    for batch in loader:
        seen += len(batch["sample_ids"])
    assert seen == len(cuts["cuts"])
    rec = loader.source.record(0)
    assert rec.answer == cuts["cuts"][0].supervisions[0].text
    assert rec.context == "Repeat after me, typing in lowercase."  # the tag, as default_context
    assert make_dataset_config({"cuts_path": str(cuts["path"])}).manifests == [f"lhotse:{cuts['path']}"]
    assert resolve_cuts(ds).manifests[0] == loader.index.datasets[0].path


def test_cuts_a_manifest_cannot_hold_are_one_line_errors(tmp_path: Path, cuts: dict[str, Any]) -> None:
    good = cuts["cuts"][0]
    url = _cut(1, "https://example.com/x.wav", 1.0, "hi", kind="url")
    stereo = _cut(2, "y.wav", 1.0, "hi", channels=2)
    mixed = good.mix(good, offset_other_by=0.5)
    for bad, message in (
        (url, r"cut 'cut1': audio source\(s\) of type url are not supported"),
        (stereo, r"cut 'cut2': selects channel\(s\) \[0\] of a 2-channel recording"),
        (mixed, r"a MixedCut is not supported"),
    ):
        path = tmp_path / "bad.jsonl"
        CutSet.from_cuts([good, bad]).to_file(path)
        with pytest.raises(SpeechDataError, match=rf"^{path}:2: .*{message}"):
            cuts_manifest(str(path))
    with pytest.raises(SpeechDataError, match=r"nowhere\.jsonl: cuts manifest not found$"):
        cuts_manifest(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(ConfigError, match=r"^ds: give input_cfg or cuts_path, not both$"):
        make_dataset_config(
            {"cuts_path": "a", "input_cfg": [{"type": "nemo", "manifest_filepath": "b"}]}, "ds"
        )
    with pytest.raises(ConfigError, match=r"^ds: give cuts_path or shar_path, not both$"):
        make_dataset_config({"cuts_path": "a", "shar_path": "s"}, "ds")
    with pytest.raises(
        ConfigError, match=r"input_cfg\[0\]\.shar_path: only sources of type lhotse_shar read Shar datasets"
    ):
        make_dataset_config({"input_cfg": [{"type": "lhotse", "cuts_path": "c", "shar_path": "s"}]}, "ds")


def test_messages_name_the_cuts_line_and_cut(cuts: dict[str, Any]) -> None:
    """Messages about a converted line name the cuts file's line and the cut, never the cached
    manifest: a duration filter's drop and each example's place in the batch metadata; the
    origin itself never reaches a batch."""
    made, path = cuts["cuts"], cuts["path"]
    bound = sorted(c.duration for c in made)[-3] + 1e-3  # those longer than the third longest
    section = {
        "manifest_filepath": f"lhotse:{path}",
        "max_duration": float(bound),
        "min_duration": None,
        "micro_batch_size": 4,
        "drop_last": False,
    }
    places = {f"{path}:{j + 1}: cut {c.id!r}": c.duration > bound for j, c in enumerate(made)}
    loader = build_dataloader(make_dataset_config(section), cuts["tok"])
    dropped = [p for p, long in places.items() if long]
    assert 0 < len(dropped) == loader.report()["too_long_audio"]
    assert loader.filter_drops.places["too_long_audio"] == dropped[:5]
    metadata = [m for batch in loader for m in batch["metadata"]]
    assert {m["where"] for m in metadata} == {p for p, long in places.items() if not long}
    assert all(ORIGIN_KEY not in m for m in metadata)
