"""Tests of the tiny SALM / BESTOW models on synthetic batches (docs/batch.md)."""

from __future__ import annotations

import helpers_models
import pytest
import torch

from speechdata.config import FeatureConfig
from speechdata.errors import ConfigError
from speechdata.features import log_mel
from speechdata.train.models import BESTOW, SALM, LoRALinear, ModelConfig, build_model, model_config
from speechdata.train.models.config import LoraConfig
from speechdata.train.models.salm import splice_plan
from speechdata.train.synthetic import synthetic_batch

SYNTH = helpers_models.SYNTH


def tiny_config(arch: str, **kw: object) -> ModelConfig:
    """A very small model for fast tests, with the synthetic batches' vocabulary."""
    return helpers_models.tiny_config(arch, SYNTH, **kw)


def make(arch: str, seed: int = 0, **kw: object) -> SALM | BESTOW:
    torch.manual_seed(seed)
    return build_model(tiny_config(arch, **kw))  # type: ignore[return-value]


def drop_audios(batch: dict, example: int) -> dict:
    """The same batch with every audio of one example removed (a text-only example)."""
    num = batch["num_audios"]
    start = int(num[:example].sum())
    keep = torch.ones(int(num.sum()), dtype=torch.bool)
    keep[start : start + int(num[example])] = False
    out = dict(batch)
    for key in ("audio_signal", "audio_signal_length", "audio_positions"):
        out[key] = batch[key][keep]
    out["num_audios"] = num.clone()
    out["num_audios"][example] = 0
    return out


@pytest.mark.parametrize("arch", ["salm", "bestow"])
def test_forward_backward_multi_audio(arch: str) -> None:
    model = make(arch)
    batch = synthetic_batch(SYNTH, 4, seed=3)
    assert int(batch["num_audios"].max()) > 1
    loss, count = model.loss(batch)
    assert torch.isfinite(loss) and float(count) == float(batch["loss_mask"].sum())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # a text-only example in the batch
    text_only = drop_audios(batch, 1)
    loss2, _ = model.loss(text_only)
    assert torch.isfinite(loss2)


def test_splice_plan_by_hand() -> None:
    # example 0: 5 tokens, audios of 3 and 2 frames at positions 2 and 2; example 1: 4 tokens, audio of 1 at 0
    token_index, audio_start, lengths, ex = splice_plan(
        tokens_length=torch.tensor([5, 4]),
        max_tokens=6,
        audio_length=torch.tensor([3, 2, 1]),
        num_audios=torch.tensor([2, 1]),
        audio_positions=torch.tensor([2, 2, 0]),
    )
    assert token_index[0, :5].tolist() == [0, 1, 7, 8, 9]
    assert token_index[1, :4].tolist() == [1, 2, 3, 4]
    assert audio_start.tolist() == [2, 5, 0]
    assert lengths.tolist() == [10, 5]
    assert ex.tolist() == [0, 0, 1]


def test_salm_splices_audio_at_positions_and_moves_labels() -> None:
    model = make("salm").eval()
    batch = synthetic_batch(SYNTH, 3, seed=5)
    audio, audio_len = model.encode_audio(batch)
    inp = model.decoder_inputs(
        batch["tokens"],
        batch["tokens_length"],
        audio,
        audio_len,
        batch["num_audios"],
        batch["audio_positions"],
    )
    text = model.llm.embed(batch["tokens"])
    out = model(batch)
    a = 0
    for b in range(3):
        n = int(batch["tokens_length"][b])
        seen = torch.zeros(int(inp.lengths[b]), dtype=torch.bool)
        for j in range(n):
            k = int(inp.token_index[b, j])
            assert torch.equal(inp.embeds[b, k], text[b, j])
            assert int(out.labels[b, k]) == int(batch["labels"][b, j])
            assert float(out.loss_mask[b, k]) == float(batch["loss_mask"][b, j])
            seen[k] = True
        cursor = 0
        for _ in range(int(batch["num_audios"][b])):
            pos, frames = int(batch["audio_positions"][a]), int(audio_len[a])
            start = pos + cursor
            assert torch.allclose(inp.embeds[b, start : start + frames], audio[a, :frames])
            assert not bool(out.loss_mask[b, start : start + frames].any())
            if pos < n:  # the token at the audio's position comes after it
                assert int(inp.token_index[b, pos]) >= start + frames
            seen[start : start + frames] = True
            cursor += frames
            a += 1
        assert bool(seen.all()), "every position holds a token or an audio frame"
        assert int(inp.lengths[b]) == n + cursor
        assert float(out.loss_mask[b, int(inp.lengths[b]) :].abs().sum()) == 0.0


@torch.no_grad()
def test_salm_loss_ignores_audio_and_padding() -> None:
    model = make("salm").eval()
    batch = synthetic_batch(SYNTH, 3, seed=6)
    out = model(batch)
    audio, audio_len = model.encode_audio(batch)
    token_index = model.decoder_inputs(
        batch["tokens"],
        batch["tokens_length"],
        audio,
        audio_len,
        batch["num_audios"],
        batch["audio_positions"],
    ).token_index
    logp = torch.log_softmax(out.logits.float(), dim=-1)
    total, count = 0.0, 0
    for b in range(3):
        for j in range(int(batch["tokens_length"][b])):
            if batch["loss_mask"][b, j] > 0:
                total -= float(logp[b, int(token_index[b, j]), int(batch["labels"][b, j])])
                count += 1
    loss, n = model.loss(batch)
    assert int(n) == count
    assert abs(float(loss) - total / count) < 1e-4


def test_bestow_keeps_text_length_and_is_causal_per_example() -> None:
    model = make("bestow").eval()
    batch = synthetic_batch(SYNTH, 3, seed=7)
    out = model(batch)
    assert out.logits.shape[:2] == batch["tokens"].shape
    assert torch.equal(out.labels, batch["labels"]) or bool(
        ((out.labels == batch["labels"]) | (batch["loss_mask"] == 0)).all()
    )
    assert torch.equal(out.lengths, batch["tokens_length"])
    # changing a later token leaves earlier logits unchanged (causal)
    changed = dict(batch)
    changed["tokens"] = batch["tokens"].clone()
    changed["tokens"][0, 3] = (changed["tokens"][0, 3] + 1) % SYNTH.vocab_size
    out2 = model(changed)
    assert torch.allclose(out.logits[0, :3], out2.logits[0, :3], atol=1e-5)
    assert not torch.allclose(out.logits[0, 3:], out2.logits[0, 3:], atol=1e-5)
    # changing example 0's audio changes only example 0
    louder = dict(batch)
    first = int(batch["num_audios"][0])
    louder["audio_signal"] = batch["audio_signal"].clone()
    louder["audio_signal"][:first] = torch.flip(louder["audio_signal"][:first], dims=[1])
    out3 = model(louder)
    assert not torch.allclose(out.logits[0], out3.logits[0], atol=1e-5)
    assert torch.allclose(out.logits[1:], out3.logits[1:], atol=1e-5)


@pytest.mark.parametrize("arch", ["salm", "bestow"])
def test_precomputed_features_equal_waveform_path(arch: str) -> None:
    model = make(arch).eval()
    batch = synthetic_batch(SYNTH, 2, seed=8)
    feats, feat_len = log_mel(
        batch["audio_signal"], batch["audio_signal_length"], 16000, FeatureConfig(n_mels=16)
    )
    with_feats = dict(batch, audio_features=feats, audio_features_length=feat_len)
    assert torch.allclose(model(batch).logits, model(with_feats).logits, atol=1e-5)


@pytest.mark.parametrize("flag", ["freeze_llm", "freeze_audio_encoder", "freeze_modality_adapter"])
def test_freezing_flags(flag: str) -> None:
    model = make("salm", **{flag: True})
    part = {
        "freeze_llm": model.llm,
        "freeze_audio_encoder": model.perception.encoder,
        "freeze_modality_adapter": model.perception.modality_adapter,
    }[flag]
    model.train()
    assert not part.training, "frozen parts stay in eval mode"
    loss, _ = model.loss(synthetic_batch(SYNTH, 2, seed=9))
    loss.backward()
    frozen = {id(p) for p in part.parameters()}
    for p in model.parameters():
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad and p.grad is not None


def test_lora_starts_identical_and_trains_only_adapters() -> None:
    batch = synthetic_batch(SYNTH, 2, seed=10)
    plain = make("salm", seed=4).eval()
    lora_cfg = LoraConfig(adapter_dim=4, alpha=8.0)
    lora = make("salm", seed=4, lora=lora_cfg).eval()
    assert torch.allclose(plain(batch).logits, lora(batch).logits, atol=1e-5)
    wrapped = [m for m in lora.llm.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 6 and len(lora.lora_layers) == 12
    llm_trainable = [n for n, p in lora.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)
    before = {n: p.detach().clone() for n, p in lora.llm.named_parameters()}
    opt = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
    lora.train()
    for _ in range(2):
        loss, _ = lora.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in lora.llm.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == ("lora_" in n), n
    layer = wrapped[0]
    x = torch.randn(3, layer.base.in_features)
    layer.eval()
    assert torch.allclose(layer(x), x @ layer.merged_weight().T + layer.base.bias, atol=1e-5)


@pytest.mark.parametrize("arch", ["salm", "bestow"])
def test_thirty_steps_lower_the_loss(arch: str) -> None:
    model = make(arch, seed=1)
    batch = synthetic_batch(SYNTH, 4, seed=11)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(30):
        loss, _ = model.loss(batch)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    final, _ = model.loss(batch)
    assert float(final.detach()) < 0.5 * first


class _ScriptedLM(torch.nn.Module):
    """Stands in for the LM: predicts token 7 until the sequence holds ``stop_at`` positions, then EOS."""

    def __init__(self, inner: torch.nn.Module, stop_at: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.stop_at = stop_at
        self.calls = 0

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(tokens)

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        b, s, _ = x.shape
        logits = torch.zeros(b, s, SYNTH.vocab_size)
        pos = torch.arange(s)[None, :].expand(b, s)
        target = torch.where(pos + 1 >= self.stop_at[:, None], SYNTH.eos_id, 7)
        return logits.scatter(2, target[..., None], 1.0)


def test_greedy_generation_stops_at_eos_and_limit() -> None:
    model = make("bestow").eval()
    batch = synthetic_batch(SYNTH, 3, seed=12)
    ctx = batch["context_lengths"]
    # example 0 stops after 2 tokens, example 1 after 0, example 2 never (limit 4)
    model.llm = _ScriptedLM(model.llm, ctx + torch.tensor([2, 0, 100]))  # type: ignore[assignment]
    out = model.generate(batch, max_new_tokens=4)
    assert out == [[7, 7], [], [7, 7, 7, 7]]


def test_salm_generation_runs_with_audio() -> None:
    model = make("salm").eval()
    batch = synthetic_batch(SYNTH, 2, seed=13)
    out = model.generate(batch, max_new_tokens=3)
    assert len(out) == 2 and all(len(o) <= 3 for o in out)
    assert out == model.generate(batch, max_new_tokens=3), "greedy decoding is deterministic"


def test_model_config_from_yaml_section() -> None:
    section = {
        "arch": "bestow",
        "seed": 1,
        "freeze_llm": True,
        "peft": {
            "peft_scheme": "lora",
            "lora_tuning": {"adapter_dim": 4, "alpha": 8, "adapter_dropout": 0.1},
        },
        "llm": {"hidden_size": 32, "num_layers": 1},
        "perception": {"preprocessor": {"n_mels": 20, "sample_rate": 16000}, "xattn": {"num_layers": 2}},
    }
    cfg = model_config(section, vocab_size=50, pad_id=0, eos_id=3, bos_id=2, sample_rate=16000)
    assert cfg.arch == "bestow" and cfg.freeze_llm and cfg.features.n_mels == 20 and cfg.xattn.num_layers == 2
    assert cfg.lora is not None and cfg.lora.adapter_dim == 4 and cfg.lora.alpha == 8.0
    with pytest.raises(
        ConfigError, match=r"model\.llm\.hiden_size: unknown key \(did you mean 'hidden_size'"
    ):
        model_config({"llm": {"hiden_size": 3}}, vocab_size=5, pad_id=0, eos_id=1)
    with pytest.raises(ConfigError, match=r"model\.arch"):
        model_config({"arch": "gpt"}, vocab_size=5, pad_id=0, eos_id=1)
    with pytest.raises(ConfigError, match="sample_rate"):
        model_config(
            {"perception": {"preprocessor": {"sample_rate": 8000}}}, vocab_size=5, pad_id=0, eos_id=1
        )
    with pytest.raises(ConfigError, match=r"model\.llm\.num_layers: expected int"):
        model_config({"llm": {"num_layers": "two"}}, vocab_size=5, pad_id=0, eos_id=1)
