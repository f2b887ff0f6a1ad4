"""NeMo's own configs and manifests: ``model.data.*`` sections, NeMo keys that do not change loading,
``label_key``, the bundled configs on a plain ASR manifest, config errors at build time, and
``speechdata train`` checking its config before anything else."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from speechdata import build_dataloader
from speechdata.cli import main
from speechdata.config import NEMO_IGNORED_KEYS, dataset_config, load_config
from speechdata.errors import ConfigError
from speechdata.testing import make_corpus, write_manifest
from speechdata.text.tokenizer import Tokenizer, train_tokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TEMPLATE_TEXT = "Q: Transcribe the audio.\nA:"
# the bundled configs' context part for a line without context: "Q: |audio| Transcribe the audio.\nA:"
# with the locator cut out (the audio goes there), so the text keeps the spaces on both sides of it
DEFAULT_PROMPT = "Q:  Transcribe the audio.\nA:"

# A dataset block shaped like NeMo's SpeechLLM example configs (model.data.train_ds): NeMo's
# answer key name, legacy {input}/{output} slots, and keys that only NeMo's trainer reads.
NEMO_YAML = """\
name: nemo_like
model:
  global_batch_size: 4
  micro_batch_size: 2
  tokenizer:
    model: {tokenizer}
  data:
    end_string: null
    train_ds:
      manifest_filepath: {manifest}
      global_batch_size: ${{model.global_batch_size}}
      micro_batch_size: ${{model.micro_batch_size}}
      shuffle: True
      num_workers: 0
      context_key: 'input'
      label_key: 'output'
      end_string: ${{model.data.end_string}}
      index_mapping_dir: null # Path to a directory to write index mapping files.
      prompt_template: "Q: {{input}}\\nA: {{output}}"
      max_duration: 30
      min_duration: 0.1
      use_lhotse: False
      sample_alpha: null
    validation_ds:
      manifest_filepath: {manifest}
      global_batch_size: ${{model.global_batch_size}}
      micro_batch_size: ${{model.micro_batch_size}}
      context_key: ${{model.data.train_ds.context_key}}
      label_key: ${{model.data.train_ds.label_key}}
      prompt_template: ${{model.data.train_ds.prompt_template}}
      write_predictions_to_file: False
      output_file_path_prefix: null # Prefix of the file to write predictions to.
      index_mapping_dir: null
      tokens_to_generate: 16
      log_every_n_steps: 10
      metric:
        name: "wer"
        average: null
        num_classes: null
"""


@pytest.fixture(scope="module")
def asr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A plain NeMo ASR manifest (only audio_filepath, duration, text), the same lines in NeMo's
    input/output form, and a tokenizer that knows the template text."""
    root = tmp_path_factory.mktemp("asr")
    corpus = make_corpus(
        root,
        n=8,
        seed=5,
        sample_rates=(16000,),
        min_duration=0.5,
        max_duration=2.0,
        multi_audio_fraction=0.0,
        shared_source_fraction=0.0,
        locator=None,
    )
    plain = [
        {"audio_filepath": e["audio_filepath"], "duration": e["duration"], "text": e["answer"]}
        for e in corpus.entries
    ]
    qa = [
        {
            "audio_filepath": e["audio_filepath"],
            "duration": e["duration"],
            "input": f"say {i}",
            "output": f"w{i}",
        }
        for i, e in enumerate(corpus.entries)
    ]
    texts = [e["text"] for e in plain] + [TEMPLATE_TEXT, "say 0123456789 w"]
    tok = train_tokenizer(texts, root / "tok", vocab_size=400, user_symbols=["|audio|"])
    return {
        "plain": write_manifest(root / "asr.json", plain),
        "qa": write_manifest(root / "qa.jsonl", qa),
        "texts": {Path(e["audio_filepath"]).name: e["text"] for e in plain},
        "tokenizer": tok,
        "tokenizer_path": root / "tok" / "tokenizer.model",
    }


def _nemo_yaml(tmp_path: Path, asr: dict[str, object], extra: str = "") -> Path:
    text = NEMO_YAML.format(tokenizer=asr["tokenizer_path"], manifest=asr["qa"]) + extra
    path = tmp_path / "nemo.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _ignored_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "speechdata" and r.levelno == logging.WARNING and "ignoring NeMo key" in r.getMessage()
    ]


def test_nemo_data_section_ignored_keys_and_label_key(
    tmp_path: Path, asr: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(_nemo_yaml(tmp_path, asr))
    with caplog.at_level(logging.WARNING, logger="speechdata"):
        train = dataset_config(cfg, "train_ds")
    assert _ignored_warnings(caplog) == [
        "model.data.train_ds: ignoring NeMo key(s) that do not change loading: index_mapping_dir, sample_alpha, use_lhotse"
    ]
    assert train.answer_key == "output" and train.context_key == "input"
    assert train.manifests == [str(asr["qa"])] and train.shuffle

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="speechdata"):
        val = dataset_config(cfg, "validation_ds")
    (message,) = _ignored_warnings(caplog)
    assert message.startswith("model.data.validation_ds: ")
    listed = message.split(": ")[-1].split(", ")
    assert listed == sorted(
        [
            "index_mapping_dir",
            "log_every_n_steps",
            "metric",
            "output_file_path_prefix",
            "write_predictions_to_file",
        ]
    )
    assert set(listed) <= set(NEMO_IGNORED_KEYS)
    assert val.answer_key == "output" and val.tokens_to_generate == 16 and not val.shuffle


def test_nemo_data_section_loads_batches(tmp_path: Path, asr: dict[str, object]) -> None:
    """build_dataloader finds model.data.train_ds and reads answers from NeMo's label_key."""
    tok = asr["tokenizer"]
    assert isinstance(tok, Tokenizer)
    loader = build_dataloader(_nemo_yaml(tmp_path, asr), tok)
    seen = 0
    for batch in loader:
        for k, meta in enumerate(batch["metadata"]):
            i = meta["context"].removeprefix("say ")
            assert meta["answer"] == f"w{i}"
            m, n = int(batch["context_lengths"][k]), int(batch["answer_lengths"][k])
            context, answer = batch["contexts"][k, :m].tolist(), batch["answers"][k, :n].tolist()
            assert tok.decode(context) == f"Q: say {i}\nA:"
            assert tok.decode(context + answer) == f"Q: say {i}\nA: w{i}"
            seen += 1
    assert seen == 8


def test_label_key_conflict_unknown_keys_and_sections(tmp_path: Path, asr: dict[str, object]) -> None:
    cfg = load_config(_nemo_yaml(tmp_path, asr), ["model.data.train_ds.answer_key=answer"])
    with pytest.raises(
        ConfigError, match=r"^model\.data\.train_ds: label_key 'output' and answer_key 'answer' differ"
    ):
        dataset_config(cfg, "train_ds")
    same = load_config(_nemo_yaml(tmp_path, asr), ["model.data.train_ds.answer_key=output"])
    assert dataset_config(same, "train_ds").answer_key == "output"

    typo = load_config(_nemo_yaml(tmp_path, asr), ["model.data.train_ds.max_duraton=20"])
    with pytest.raises(
        ConfigError,
        match=r"model\.data\.train_ds\.max_duraton: unknown key \(did you mean 'max_duration'\?\)",
    ):
        dataset_config(typo, "train_ds")
    # keys that would change loading are not ignored
    for key, value in (("noise_path", "noise.jsonl"), ("rir_enabled", "true"), ("sample_alpha", "0.1")):
        bad = load_config(_nemo_yaml(tmp_path, asr), [f"model.data.train_ds.{key}={value}"])
        with pytest.raises(ConfigError, match=rf"model\.data\.train_ds\.{key}: not supported \("):
            dataset_config(bad, "train_ds")

    with pytest.raises(ConfigError) as err:
        dataset_config(load_config({"model": {"data": {}}}), "test_ds")
    assert (
        str(err.value)
        == "config has no 'test_ds' section (looked for model.test_ds, model.data.test_ds, data.test_ds, test_ds)"
    )


@pytest.mark.parametrize("config", ["salm_tiny.yaml", "bestow_tiny.yaml"])
def test_bundled_configs_read_a_plain_asr_manifest(config: str, asr: dict[str, object]) -> None:
    tok = asr["tokenizer"]
    assert isinstance(tok, Tokenizer)
    texts = asr["texts"]
    assert isinstance(texts, dict)
    for name in ("train_ds", "validation_ds"):
        loader = build_dataloader(
            CONFIGS / config,
            tok,
            name=name,
            overrides=[f"model.{name}.manifest_filepath={asr['plain']}", f"model.{name}.num_workers=0"],
        )
        batch = next(iter(loader))
        assert len(batch["metadata"]) > 0
        for k, meta in enumerate(batch["metadata"]):
            # the line's text is the answer; its context is default_context: the audio, then the instruction
            assert meta["context"] == "|audio| Transcribe the audio."
            assert meta["answer"] == texts[Path(meta["audio_filepath"][0]).name]
            m, n = int(batch["context_lengths"][k]), int(batch["answer_lengths"][k])
            context, answer = batch["contexts"][k, :m].tolist(), batch["answers"][k, :n].tolist()
            assert tok.decode(context) == DEFAULT_PROMPT
            assert tok.decode(context + answer) == f"{DEFAULT_PROMPT} {meta['answer']}"
        # one audio per example, inserted right after "Q:" (BOS first)
        assert batch["num_audios"].tolist() == [1] * len(batch["metadata"])
        for k, pos in enumerate(batch["audio_positions"].tolist()):
            assert batch["tokens"][k, 0].item() == tok.bos_id
            assert tok.decode(batch["tokens"][k, 1:pos].tolist()) == "Q: "


def test_concat_sampling_errors_at_build_time(tmp_path: Path, asr: dict[str, object]) -> None:
    two = f"[{asr['plain']},{asr['plain']}]"
    base = [f"model.train_ds.manifest_filepath={two}", "model.train_ds.num_workers=0"]
    cases = [
        ("[1.0]", "1 weights for 2 manifests; give one per manifest"),
        ("[1.5,-0.5]", r"weights must be finite and >= 0"),
        ("[0.5,0.2]", "weights must sum to 1; they sum to 0.7"),
    ]
    for probs, message in cases:
        overrides = [*base, f"model.train_ds.concat_sampling_probabilities={probs}"]
        with pytest.raises(ConfigError, match=rf"^model\.train_ds\.concat_sampling_probabilities: {message}"):
            dataset_config(load_config(CONFIGS / "salm_tiny.yaml", overrides), "train_ds")
        with pytest.raises(ConfigError, match=message):
            build_dataloader(CONFIGS / "salm_tiny.yaml", asr["tokenizer"], overrides=overrides)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="only used with concat_sampling_technique 'random'"):
        build_dataloader(
            CONFIGS / "salm_tiny.yaml",
            asr["tokenizer"],  # type: ignore[arg-type]
            overrides=[
                *base,
                "model.train_ds.concat_sampling_probabilities=[0.5,0.5]",
                "model.train_ds.concat_sampling_technique=round-robin",
            ],
        )
    with pytest.raises(ConfigError, match=r"^model\.train_ds\.seed: must be >= 0; got -1"):
        build_dataloader(CONFIGS / "salm_tiny.yaml", asr["tokenizer"], overrides=[*base, "model.seed=-1"])  # type: ignore[arg-type]
    good = build_dataloader(
        CONFIGS / "salm_tiny.yaml",
        asr["tokenizer"],  # type: ignore[arg-type]
        overrides=[*base, "model.train_ds.concat_sampling_probabilities=[0.25,0.75]"],
    )
    assert len(good) > 0


def test_train_checks_config_before_anything_else(
    tmp_path: Path, asr: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        f"model.train_ds.manifest_filepath={asr['plain']}",
        f"model.validation_ds.manifest_filepath={asr['plain']}",
        f"exp_manager.exp_dir={tmp_path / 'exp'}",
    ]
    missing_tok = tmp_path / "x.model"
    assert (
        main(["train", str(CONFIGS / "salm_tiny.yaml"), *common, f"model.tokenizer.model={missing_tok}"]) == 1
    )
    out, err = capsys.readouterr()
    assert err == f"speechdata: error: model.tokenizer.model: tokenizer file not found: {missing_tok}\n"
    assert out == ""
    assert not (tmp_path / "exp").exists(), "nothing is built before the config is checked"

    gone = tmp_path / "gone.jsonl"
    args = [
        "train",
        str(CONFIGS / "bestow_tiny.yaml"),
        *common,
        f"model.validation_ds.manifest_filepath={gone}",
        f"model.tokenizer.model={asr['tokenizer_path']}",
    ]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"speechdata: error: model.validation_ds.manifest_filepath: manifest not found: {gone}\n"
    )


def test_every_ignored_key_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = doc.split("## NeMo's other keys", 1)[1]
    for key in NEMO_IGNORED_KEYS:
        assert f"`{key}`" in section, key
