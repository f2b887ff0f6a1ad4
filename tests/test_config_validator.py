"""One config validator: dataset sections and the trainer's sections are checked by the same
rules (config.check_section) and say the same things."""

from __future__ import annotations

import pytest

from speechdata.config import make_dataset_config
from speechdata.errors import ConfigError
from speechdata.train.models.config import model_config
from speechdata.train.optim import build_scheduler

IDS = {"vocab_size": 50, "pad_id": 0, "eos_id": 3}


def message(call) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    return str(e.value)


def test_feature_settings_have_one_set_of_rules() -> None:
    for features, tail in [
        ({"normalize": "per_utterance"}, "normalize: must be one of per_feature, none; got 'per_utterance'"),
        ({"n_mel": 40}, "n_mel: unknown key (did you mean 'n_mels'?)"),
        ({"n_mels": "eighty"}, "n_mels: expected int, got 'eighty'"),
    ]:
        dataset = message(lambda f=features: make_dataset_config({"features": f}, "model.train_ds"))
        trainer = message(lambda f=features: model_config({"perception": {"preprocessor": f}}, **IDS))
        assert dataset == f"model.train_ds.features.{tail}"
        assert trainer == f"model.perception.preprocessor.{tail}"


def test_trainer_sections_use_the_same_words() -> None:
    assert message(lambda: model_config({"llm": {"hidden_size": 1.5}}, **IDS)) == (
        "model.llm.hidden_size: expected int, got 1.5"
    )
    assert message(lambda: model_config({"arch": "salmon"}, **IDS)) == (
        "model.arch: must be one of salm, bestow; got 'salmon' (did you mean 'salm'?)"
    )
    assert message(lambda: make_dataset_config({"on_error": "skipp"}, "train_ds")) == (
        "train_ds.on_error: must be one of raise, skip; got 'skipp' (did you mean 'skip'?)"
    )
    lora = {"peft_scheme": "lora", "lora_tuning": {"adapter_dim": 0}}
    assert message(lambda: model_config({"peft": lora}, **IDS)) == (
        "model.peft.lora_tuning.adapter_dim: must be positive; got 0"
    )
    assert message(lambda: build_scheduler(None, {"name": "CosineAnealing"}, 10)) == (  # type: ignore[arg-type]
        "optim.sched.name: must be one of WarmupPolicy, CosineAnnealing; got 'CosineAnealing' (did you mean 'CosineAnnealing'?)"
    )
