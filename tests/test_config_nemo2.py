"""NeMo 2.x (speechlm2 / lhotse dataloader) dataset keys: ``input_cfg`` (list, YAML file, groups,
weights, tags), the 2.x names of speechdata keys, the token keys, 2D bins, the seed, and the
lhotse keys speechdata does not implement (one-line "not supported")."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from speechdata.config import (
    NEMO_ALIASES,
    NEMO_UNSUPPORTED_KEYS,
    dataset_config,
    load_config,
    make_dataset_config,
)
from speechdata.errors import ConfigError

# The data section of NeMo's speechlm2 SALM recipe (salm.yaml: top-level ``data.train_ds``, the
# prompt format and locator interpolated from ``model``), with speechdata-readable sources.
SALM_YAML = """\
model:
  pretrained_llm: TinyLlama/TinyLlama_v1.1
  prompt_format: llama2
  audio_locator_tag: "<|audioplaceholder|>"
trainer:
  max_steps: 100
data:
  train_ds:
    sample_rate: 16000
    prompt_format: ${model.prompt_format}
    token_equivalent_duration: 0.08
    input_cfg:
      - type: nemo
        manifest_filepath: {asr}
        audio_locator_tag: ${model.audio_locator_tag}
        weight: 3
        tags:
          context: "Repeat after me, typing in lowercase."
          lang: en
      - type: group
        weight: 1
        tags:
          task: ast
          context: "Repeat after me, typing in lowercase."
        input_cfg:
          - type: multimodal_conversation
            manifest_filepath: {conv}
            audio_locator_tag: ${model.audio_locator_tag}
            weight: 0.25
          - type: nemo
            manifest_filepath: {ast}
            audio_locator_tag: ${model.audio_locator_tag}
            weight: 0.75
            tags:
              lang: de
    seed: 42
    shuffle: true
    shard_seed: "randomized"
    num_workers: 1
    batch_size: null
    batch_duration: 100
    batch_tokens: 4000
    use_multimodal_sampling: true
    bucket_duration_bins: [[50, 10], [50, 40], [150, 30], [150, 90]]
    use_bucketing: true
    bucket_buffer_size: 5000
    shuffle_buffer_size: 1000
    max_tokens: 1024
    min_tokens: 2
    use_lhotse: true
    num_cuts_for_bins_estimate: 10000
    perturb_speed: false
    noise_path: null
"""


def _salm(tmp_path: Path, **paths: str) -> Path:
    names = {"asr": "asr.jsonl", "conv": "conv.jsonl", "ast": "ast.jsonl", **paths}
    path = tmp_path / "salm.yaml"
    path.write_text(
        SALM_YAML.replace("{asr}", names["asr"])
        .replace("{conv}", names["conv"])
        .replace("{ast}", names["ast"])
    )
    return path


def _section(items: object, **extra: object) -> dict[str, object]:
    return {"input_cfg": items, **extra}


def test_salm_data_section_loads_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """NeMo 2.x SALM data section: found at data.train_ds, sources flattened in order, weights
    multiplied through the group, shared tags and locator become dataset keys, 2.x names mapped."""
    with caplog.at_level(logging.WARNING, logger="speechdata"):
        ds = dataset_config(load_config(_salm(tmp_path)), "train_ds")
    assert ds.manifests == ["asr.jsonl", "conv.jsonl", "ast.jsonl"]
    assert ds.concat_sampling_probabilities == pytest.approx([0.75, 0.0625, 0.1875])
    assert math.fsum(ds.concat_sampling_probabilities or []) == pytest.approx(1.0)
    assert not ds.is_tarred and ds.tarred_audio_filepaths is None
    assert ds.audio_locator == "<|audioplaceholder|>"
    assert ds.default_context == "Repeat after me, typing in lowercase."
    assert ds.prompt_format == "llama2" and ds.seed == 42 and ds.shuffle_n == 1000
    assert ds.micro_batch_size == 2  # batch_size: null is "no fixed size": the default stays
    assert (ds.batch_duration, ds.batch_tokens, ds.token_equivalent_duration) == (100.0, 4000, 0.08)
    assert ds.use_multimodal_sampling and ds.use_bucketing
    assert ds.bucket_duration_bins == [[50.0, 10.0], [50.0, 40.0], [150.0, 30.0], [150.0, 90.0]]
    assert (ds.min_tokens, ds.max_tokens) == (2, 1024)
    assert ds.source_tags == [
        {"context": "Repeat after me, typing in lowercase.", "lang": "en"},
        {"task": "ast", "context": "Repeat after me, typing in lowercase."},
        {"task": "ast", "context": "Repeat after me, typing in lowercase.", "lang": "de"},
    ]
    again = make_dataset_config(ds.to_dict(), "again")  # the expanded keys build the same config
    assert again.to_dict() == ds.to_dict() and again.manifests == ds.manifests
    (message,) = [r.getMessage() for r in caplog.records if "ignoring NeMo key" in r.getMessage()]
    assert message == (
        "data.train_ds: ignoring NeMo key(s) that do not change loading: "
        "noise_path, num_cuts_for_bins_estimate, perturb_speed, shard_seed, use_lhotse"
    )


def test_input_cfg_from_yaml_file_and_tarred_sources(tmp_path: Path) -> None:
    """input_cfg may be the path of a YAML file holding the list; nemo_tarred sources give one
    shard spec per manifest; no weights means equal weights (lhotse's mux)."""
    listing = tmp_path / "input_cfg.yaml"
    listing.write_text(
        "- type: nemo_tarred\n"
        "  manifest_filepath: a/tarred_audio_manifest.json\n"
        "  tarred_audio_filepaths: a/audio__OP_0..3_CL_.tar\n"
        "- type: nemo_tarred\n"
        "  manifest_filepath: b/tarred_audio_manifest.json\n"
        "  tarred_audio_filepaths: b/audio_{0..1}.tar\n"
        "- type: multimodal_conversation\n"
        "  manifest_filepath: c/conv.json\n"
        "  tarred_audio_filepaths: c/audio_0.tar\n"
    )
    ds = make_dataset_config({"input_cfg": str(listing)}, "train_ds")
    assert ds.is_tarred
    assert ds.manifests == ["a/tarred_audio_manifest.json", "b/tarred_audio_manifest.json", "c/conv.json"]
    assert ds.tarred_audio_filepaths == ["a/audio__OP_0..3_CL_.tar", "b/audio_{0..1}.tar", "c/audio_0.tar"]
    assert ds.concat_sampling_probabilities == pytest.approx([1 / 3] * 3)
    single = make_dataset_config(_section([{"type": "nemo", "manifest_filepath": "x.jsonl", "weight": 2}]))
    assert single.manifests == ["x.jsonl"] and single.concat_sampling_probabilities is None

    listing.write_text("type: nemo\n")
    with pytest.raises(
        ConfigError, match=r"input_cfg\.yaml: input_cfg file must hold a list of sources, got dict"
    ):
        make_dataset_config({"input_cfg": str(listing)}, "train_ds")
    with pytest.raises(ConfigError, match=r"^train_ds\.input_cfg: cannot read .*nowhere\.yaml"):
        make_dataset_config({"input_cfg": str(tmp_path / "nowhere.yaml")}, "train_ds")


@pytest.mark.parametrize(
    ("items", "extra", "message"),
    [
        (
            [
                {"type": "nemo", "manifest_filepath": "a", "weight": 1},
                {"type": "nemo", "manifest_filepath": "b"},
            ],
            {},
            r"^ds\.input_cfg: 1 of 2 sources have a weight; give every source one, or none$",
        ),
        (
            [{"type": "nemo", "manifest_filepath": "a", "weight": -1}],
            {},
            r"^ds\.input_cfg\[0\]\.weight: must be a finite number >= 0; got -1$",
        ),
        (
            [
                {"type": "nemo", "manifest_filepath": "a"},
                {"type": "nemo_tarred", "manifest_filepath": "b", "tarred_audio_filepaths": "b.tar"},
            ],
            {},
            r"^ds\.input_cfg: mixes tarred and plain sources",
        ),
        (
            [{"type": "txt", "paths": "a.txt"}],
            {},
            r"^ds\.input_cfg\[0\]\.type: 'txt' \(text-only data\) is not supported yet$",
        ),
        (
            [{"type": "lhotse_as_conversation", "manifest_filepath": "cuts.jsonl.gz"}],
            {},
            r"^ds\.input_cfg\[0\]\.cuts_path: a lhotse_as_conversation source needs one CutSet manifest path",
        ),
        (
            [{"type": "nemo", "manifest_filepath": "a", "cuts_path": "c.jsonl"}],
            {},
            r"^ds\.input_cfg\[0\]\.cuts_path: only sources of type lhotse / lhotse_as_conversation read cuts$",
        ),
        (
            [{"type": "nemmo", "manifest_filepath": "a"}],
            {},
            r"^ds\.input_cfg\[0\]\.type: must be one of .*did you mean 'nemo'",
        ),
        (
            [{"type": "nemo_tarred", "manifest_filepath": "a", "tarred_audio_filepath": "a.tar"}],
            {},
            r"^ds\.input_cfg\[0\]\.tarred_audio_filepath: unknown key \(did you mean 'tarred_audio_filepaths'\?\)$",
        ),
        (
            [{"type": "nemo_tarred", "manifest_filepath": "a"}],
            {},
            r"tarred_audio_filepaths: required for type nemo_tarred",
        ),
        ([{"type": "group", "input_cfg": []}], {}, r"^ds\.input_cfg\[0\]\.input_cfg: empty list of sources$"),
        ([{"manifest_filepath": "a"}], {}, r"^ds\.input_cfg\[0\]: missing type"),
        (
            [
                {"type": "nemo", "manifest_filepath": "a", "tags": {"context": "x"}},
                {"type": "nemo", "manifest_filepath": "b"},
            ],
            {},
            r"^ds\.input_cfg: sources differ in context \('x', None\); per-source context is not supported yet",
        ),
        (
            [{"type": "nemo", "manifest_filepath": "a", "audio_locator_tag": "<a>"}],
            {"audio_locator": "|audio|"},
            r"^ds\.input_cfg: audio_locator_tag '<a>' differs from ds\.audio_locator '\|audio\|'$",
        ),
        (
            [{"type": "nemo", "manifest_filepath": "a", "noise_path": "n.jsonl"}],
            {},
            r"^ds\.input_cfg\[0\]\.noise_path: not supported \(on-the-fly noise mixing\)",
        ),
        (
            [{"type": "nemo", "manifest_filepath": "a"}],
            {"manifest_filepath": "b"},
            r"^ds: give input_cfg or manifest_filepath, not both",
        ),
        ("nothing", {}, None),
    ],
)
def test_input_cfg_errors(
    items: object, extra: dict[str, object], message: str | None, tmp_path: Path
) -> None:
    """Every bad input_cfg is one line naming the source (its position) and the key."""
    if message is None:  # a string is a path: a missing file
        message = r"^ds\.input_cfg: cannot read nothing"
    with pytest.raises(ConfigError, match=message):
        make_dataset_config(_section(items, **extra), "ds")


def test_nemo2_names_seed_and_unsupported_keys() -> None:
    """2.x names map onto speechdata keys (both given and different: an error); a seed drawn per
    run is refused; unsupported keys are refused unless set to a value that changes nothing."""
    base = {"manifest_filepath": "a.jsonl"}
    ds = make_dataset_config(
        {**base, "bucket_batch_size": [4, 2], "audio_locator_tag": "<a>", "batch_size": 8}
    )
    assert (ds.bucketing_batch_size, ds.audio_locator, ds.micro_batch_size) == ([4, 2], "<a>", 8)
    assert NEMO_ALIASES["bucket_batch_size"] == "bucketing_batch_size"
    with pytest.raises(ConfigError, match=r"^ds: audio_locator_tag '<a>' and audio_locator '<b>' differ"):
        make_dataset_config({**base, "audio_locator_tag": "<a>", "audio_locator": "<b>"}, "ds")
    for seed in ("trng", "randomized"):
        with pytest.raises(
            ConfigError,
            match=rf"^ds\.seed: '{seed}' is NeMo's seed drawn per run; speechdata needs an int seed",
        ):
            make_dataset_config({**base, "seed": seed}, "ds")
    with pytest.raises(
        ConfigError,
        match=r"^ds\.shard_seed: not supported \(shard order per worker.*remove it or set it to 'randomized'$",
    ):
        make_dataset_config({**base, "shard_seed": "trng"}, "ds")
    with pytest.raises(
        ConfigError,
        match=r"^ds\.rir_enabled: not supported \(reverberation with impulse responses\); got True, remove it or set it to False$",
    ):
        make_dataset_config({**base, "rir_enabled": True}, "ds")
    with pytest.raises(ConfigError, match=r"^ds\.pretokenize: not supported .*got 1"):
        make_dataset_config({**base, "pretokenize": 1}, "ds")  # 1 is not true
    with pytest.raises(
        ConfigError, match=r"^ds\.shuffle_bufer_size: unknown key \(did you mean 'shuffle_buffer_size'\?\)$"
    ):
        make_dataset_config({**base, "shuffle_bufer_size": 4}, "ds")
    make_dataset_config({**base, "rir_enabled": False, "max_tps": math.inf, "cuts_path": None})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"bucket_duration_bins": [[5, 10], [2, 20]]},
            r"^ds\.bucket_duration_bins: 2D bins must be distinct and sorted ascending",
        ),
        (
            {"bucket_duration_bins": [[5, 10, 3]]},
            r"^ds\.bucket_duration_bins: 2D bins are \[seconds or tokens, output tokens\] pairs; got \[5\.0, 10\.0, 3\.0\]$",
        ),
        ({"use_multimodal_sampling": True}, r"^ds\.use_multimodal_sampling: needs token_equivalent_duration"),
        (
            {"use_bucketing": False, "num_buckets": 4},
            r"^ds: use_bucketing is false but num_buckets is set; remove one of them$",
        ),
        ({"min_tokens": 10, "max_tokens": 5}, r"^ds: min_tokens 10 is larger than max_tokens 5$"),
        ({"batch_tokens": 0}, r"^ds\.batch_tokens: must be positive or null; got 0$"),
        (
            {"batch_tokens": 100, "bucket_batch_size": 4},
            r"^ds: bucketing_batch_size and batch_tokens are both set",
        ),
    ],
)
def test_token_keys_and_2d_bins_checked_when_read(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_dataset_config({"manifest_filepath": "a.jsonl", **extra}, "ds")


def test_every_unsupported_key_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = doc.split("## NeMo 2.x keys", 1)[1]
    for key in (*NEMO_UNSUPPORTED_KEYS, *NEMO_ALIASES):
        assert f"`{key}`" in section, key


def test_salm_yaml_builds_a_loader_over_real_manifests(tmp_path: Path) -> None:
    """The SALM section above, pointed at three real manifests, builds a loader: the epoch mixes
    the manifests by the input_cfg probabilities, and every batch fits batch_tokens."""
    import numpy as np

    from speechdata import build_dataloader
    from speechdata.testing import make_corpus

    locator = "<|audioplaceholder|>"
    corpora = {
        key: make_corpus(tmp_path / key, n=30, seed=seed, max_duration=6.0, locator=locator)
        for key, seed in (("asr", 1), ("conv", 2), ("ast", 3))
    }
    names = {key: str(c.manifest) for key, c in corpora.items()}
    tok = corpora["asr"].train_tokenizer(vocab_size=90, locator=locator, out_dir=tmp_path / "tok")
    overrides = [
        "data.train_ds.prompt_format=plain",  # the tiny SentencePiece model has no llama2 specials
        "data.train_ds.bucket_duration_bins=[[70,40],[70,300],[300,60],[300,400]]",  # input tokens
        "data.train_ds.max_tokens=100000",
        "data.train_ds.min_duration=null",
        "data.train_ds.max_duration=null",
    ]
    loader = build_dataloader(_salm(tmp_path, **names), tok, overrides=overrides)
    assert loader.sampler is not None and loader.measures is not None
    plan = loader.sampler.plan(0)
    ids = np.concatenate(list(plan))
    share = np.bincount(loader.index.dataset[ids], minlength=3) / ids.size
    assert share == pytest.approx([0.75, 0.0625, 0.1875], abs=0.05)
    for batch in plan:
        assert batch.size * loader.measures.tokens[batch].max() <= 4000 or batch.size == 1
