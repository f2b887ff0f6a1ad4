"""Config loading per docs/configuration.md, including the reference page's own YAML blocks."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from speechdata.config import DatasetConfig, dataset_config, load_config, load_yaml, make_dataset_config
from speechdata.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "nemo-speechllm-configs.rst"


def _reference_blocks() -> list[str]:
    if not REFERENCE.exists():
        pytest.skip("shared/reference is not beside this checkout")
    rst = REFERENCE.read_text()
    blocks = re.findall(r"\.\. code-block:: yaml\n\n((?:(?:[ \t]+.*)?\n)+)", rst)
    return [textwrap.dedent(b) for b in blocks]


def test_reference_blocks_load_and_duplicate_add_eos_is_reported(tmp_path: Path) -> None:
    blocks = _reference_blocks()
    assert len(blocks) == 4
    path = tmp_path / "train_ds.yaml"
    path.write_text(blocks[0])
    with pytest.raises(
        ConfigError, match=r"train_ds.yaml:\d+: duplicate key 'add_eos' \(first defined on line \d+\)"
    ):
        load_yaml(path)
    for block in blocks[1:]:
        cfg = load_yaml("ref.yaml", text=block)
        assert len(cfg) == 1
    optim = load_yaml("ref.yaml", text=blocks[3]).optim
    assert optim.eps == pytest.approx(1e-8)  # YAML 1.2 float, not the string '1e-8'


def test_reference_train_ds_without_duplicate_gives_page_defaults(tmp_path: Path) -> None:
    block = _reference_blocks()[0].replace("    add_eos: False\n", "")
    cfg = load_config(load_yaml("ref.yaml", text=block), ["train_ds.manifest_filepath=a.jsonl,b.jsonl"])
    ds = dataset_config(cfg, "train_ds")
    assert ds.manifests == ["a.jsonl", "b.jsonl"]
    assert ds.prompt_template == "Q: {context}\nA: {answer}"
    assert (ds.max_duration, ds.min_duration, ds.shuffle_n) == (24.0, 0.1, 2048)
    assert ds.truncation_field == "context" and ds.add_eos is True


def test_required_value_left_missing_is_named() -> None:
    cfg = load_yaml("c.yaml", text="model:\n  train_ds:\n    manifest_filepath: ???\n")
    with pytest.raises(ConfigError, match=r"model\.train_ds\.manifest_filepath: required value is missing"):
        dataset_config(cfg, "train_ds")


def test_unknown_key_suggests_the_right_one() -> None:
    cfg = load_yaml("c.yaml", text="train_ds:\n  manifest_filepath: a.json\n  max_durration: 3\n")
    with pytest.raises(
        ConfigError, match=r"train_ds\.max_durration: unknown key \(did you mean 'max_duration'\?\)"
    ):
        dataset_config(cfg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_duration", "'long'", r"train_ds\.max_duration: expected float or null, got 'long'"),
        ("shuffle", "3", r"train_ds\.shuffle: expected bool, got 3"),
        ("micro_batch_size", "2.5", r"train_ds\.micro_batch_size: expected int, got 2.5"),
        (
            "truncation_field",
            "contxt",
            r"must be one of context, answer; got 'contxt' \(did you mean 'context'\?\)",
        ),
        ("bucketing_strategy", "random", r"train_ds\.bucketing_strategy: must be one of"),
        ("micro_batch_size", "0", r"train_ds\.micro_batch_size: must be positive"),
    ],
)
def test_wrong_values_name_the_key(key: str, value: str, message: str) -> None:
    cfg = load_yaml("c.yaml", text=f"train_ds:\n  manifest_filepath: a.json\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=message):
        dataset_config(cfg)


def test_interpolation_and_dotted_overrides() -> None:
    text = "sr: 8000\nmodel:\n  train_ds:\n    manifest_filepath: a.json\n    sample_rate: ${sr}\n"
    cfg = load_config(load_yaml("c.yaml", text=text), ["model.train_ds.max_duration=20", "sr=22050"])
    ds = dataset_config(cfg, "train_ds")
    assert ds.sample_rate == 22050 and ds.max_duration == 20.0
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(cfg, ["model.train_ds.max_duration"])


def test_eval_sections_default_to_no_shuffle_no_drop_last() -> None:
    text = "model:\n  validation_ds:\n    manifest_filepath: [a.json, b.json]\n"
    ds = dataset_config(load_yaml("c.yaml", text=text), "validation_ds")
    assert (ds.shuffle, ds.drop_last, ds.manifests) == (False, False, ["a.json", "b.json"])
    assert isinstance(ds, DatasetConfig)


def test_features_block() -> None:
    text = "train_ds:\n  manifest_filepath: a.json\n  features: {n_mels: 64}\n"
    ds = dataset_config(load_yaml("c.yaml", text=text))
    assert ds.features is not None and ds.features.n_mels == 64 and ds.features.window_stride == 0.01
    bad = "train_ds:\n  manifest_filepath: a.json\n  features: {n_mel: 64}\n"
    with pytest.raises(ConfigError, match=r"features\.n_mel: unknown key \(did you mean 'n_mels'\?\)"):
        dataset_config(load_yaml("c.yaml", text=bad))


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad.yaml:2: YAML error"):
        load_yaml("bad.yaml", text="a: 1\n b: [\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_remote_section_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``remote:`` sets the object-storage knobs; a knob it does not set comes from its
    ``SPEECHDATA_REMOTE_*`` variable, else the default; bad keys and values are one line."""
    from speechdata.storage.options import RemoteOptions

    monkeypatch.setenv("SPEECHDATA_REMOTE_RETRIES", "9")
    cfg = make_dataset_config(
        {"manifest_filepath": "x.jsonl", "remote": {"in_flight": 4, "cache_bytes": 1000}}
    )
    assert cfg.remote == RemoteOptions(in_flight=4, cache_bytes=1000, retries=9)
    assert make_dataset_config({"manifest_filepath": "x.jsonl"}).remote is None
    with pytest.raises(
        ConfigError, match=r"dataset\.remote\.in_fligth: unknown key \(did you mean 'in_flight'\?\)"
    ):
        make_dataset_config({"manifest_filepath": "x.jsonl", "remote": {"in_fligth": 4}})
    with pytest.raises(ConfigError, match=r"dataset\.remote\.in_flight: must be >= 1; got 0"):
        make_dataset_config({"manifest_filepath": "x.jsonl", "remote": {"in_flight": 0}})
