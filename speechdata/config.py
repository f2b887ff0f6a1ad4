"""Configuration: NeMo-style YAML in, validated dataclasses out.

YAML is read with a safe loader that rejects duplicated keys (naming both lines), then handed to
OmegaConf for its semantics: ``???`` marks a required value, ``${a.b}`` interpolates, and dotted
overrides such as ``model.train_ds.max_duration=20`` are merged on top. Dataset sections
(``train_ds``, ``validation_ds``, ``test_ds``; under ``model.``, ``model.data.`` as in NeMo's own
SpeechLLM configs, ``data.`` as in NeMo 2.x speechlm2 configs, or at the top level) are checked
key by key against :class:`DatasetConfig`: an unknown key gets a "did you mean", a wrong type
names the key, a required key left ``???`` names its full path. NeMo's keys that do not change
what is loaded (:data:`NEMO_IGNORED_KEYS`) are accepted with one warning per section, the
augmentation and other lhotse keys speechdata does not implement
(:data:`NEMO_UNSUPPORTED_KEYS`) are a one-line "not supported" error unless set to a value that
changes nothing, NeMo's names of speechdata keys (:data:`NEMO_ALIASES`: ``label_key``,
``audio_locator_tag``, ``bucket_batch_size``, ...) are accepted, and NeMo 2.x's ``input_cfg``
becomes the manifests and weights it lists (:func:`expand_input_cfg`).

One validator checks every config section, the dataset's and the trainer's alike:
:func:`check_section` fills a dataclass from a mapping (unknown keys with a "did you mean" from
:func:`suggest`, each value checked against its field's annotation by :func:`coerce`, then the
class's own ``check(path)`` rules); :func:`check_keys` and :func:`check_choice` are its pieces for
sections that are not dataclasses.

Example::

    >>> cfg = load_config("salm.yaml", ["model.train_ds.max_duration=20"])
    >>> ds = dataset_config(cfg, "train_ds")
    >>> ds.max_duration
    20.0
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from speechdata.errors import ConfigError
from speechdata.storage.options import RemoteOptions

TRUNCATION_FIELDS = ("context", "answer")
BUCKETING_STRATEGIES = ("fully_randomized", "synced_randomized", "fixed_order")
CONCAT_TECHNIQUES = ("random", "temperature", "round-robin")
ON_ERROR = ("raise", "skip")
#: NeMo's prompt formats by name, and the tokenizer's own chat template (docs/conversations.md).
PROMPT_FORMATS = ("llama2", "llama3", "qwen", "gemma", "plain", "chat_template")
#: Which assistant turns carry the loss: every one, or only the last.
LOSS_TURNS = ("all", "last")
NORMALIZE = ("per_feature", "none")

log = logging.getLogger("speechdata")
T = TypeVar("T")

#: Keys of NeMo's SpeechLLM (and lhotse) dataset sections that do not change what is loaded, with
#: what NeMo uses them for. A dataset section may contain them: they are dropped, and one warning
#: per section names them. Keys of :data:`NEMO_UNSUPPORTED_KEYS` set to a value that changes
#: nothing are dropped the same way.
NEMO_IGNORED_KEYS: dict[str, str] = {
    "index_mapping_dir": "folder of NeMo's text index-mapping files",
    "memmap_workers": "workers that build NeMo's text memmap index",
    "names": "dataset names used when logging evaluation metrics",
    "metric": "evaluation metric (name, average, num_classes)",
    "log_every_n_steps": "logging interval of evaluation",
    "write_predictions_to_file": "whether evaluation writes its predictions",
    "output_file_path_prefix": "file prefix of written predictions",
    "output_dir": "folder of written predictions",
    "validation_drop_last": "how NeMo reduces the validation loss over partial batches",
    "use_lhotse": "selects NeMo's lhotse loader (speechdata is the loader)",
    "num_cuts_for_bins_estimate": "examples lhotse estimates bins from (speechdata uses every kept example)",
    "concurrent_bucketing": "whether lhotse fills its bucket buffer in a background thread",
    "cuda_expandable_segments": "a CUDA allocator setting NeMo's loader turns on",
    "force_map_dataset": "forces lhotse's map-style dataset (speechdata picks by source)",
    "force_iterable_dataset": "forces lhotse's iterable dataset (speechdata picks by source)",
    "max_open_streams": "how many lhotse streams a mux keeps open",
    "lang_field": "manifest key of a language tag (kept in the record's extra fields)",
    "noise_snr": "SNR range of noise mixing (used only with noise_path)",
    "noise_mix_prob": "probability of noise mixing (used only with noise_path)",
    "rir_path": "impulse responses (used only with rir_enabled)",
    "rir_prob": "probability of reverberation (used only with rir_enabled)",
    "concatenate_gap_seconds": "gap between glued utterances (used only with concatenate_samples)",
    "concatenate_duration_factor": "length of glued utterances (used only with concatenate_samples)",
    "concatenate_merge_supervisions": "merging glued transcripts (used only with concatenate_samples)",
    "db_norm": "loudness of glued utterances (used only with concatenate_samples)",
    "truncate_offset_type": "where truncation cuts (used only with truncate_duration)",
    "cut_into_windows_hop": "window hop (used only with cut_into_windows_duration)",
    "keep_excessive_supervisions": "transcripts of truncated cuts (used only with truncation or windows)",
    "pad_direction": "where short audio is padded (used only with pad_min_duration)",
    "sampler_fusion": "how multi_config samplers are fused (used only with multi_config)",
    "sampler_weights": "weights of multi_config samplers (used only with multi_config)",
}
#: NeMo (lhotse dataloader) keys that speechdata does not implement: ``{key: (what NeMo does with
#: it, the values that change nothing)}``. A key set to one of those values is dropped with the
#: ignored keys' warning; any other value is a one-line "not supported" error naming the key.
NEMO_UNSUPPORTED_KEYS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "sample_alpha": ("SentencePiece subword sampling of answers", (None,)),
    "noise_path": ("on-the-fly noise mixing", (None,)),
    "perturb_speed": ("3-way speed perturbation", (False,)),
    "concatenate_samples": ("gluing utterances together", (False,)),
    "truncate_duration": ("cutting each example to a fixed duration", (None,)),
    "cut_into_windows_duration": ("cutting examples into sliding windows", (None,)),
    "rir_enabled": ("reverberation with impulse responses", (False,)),
    "pad_min_duration": ("padding short audio to a minimum duration", (None,)),
    "random_padding": ("random padding of end-of-utterance data", (None,)),
    "channel_selector": ("picking one channel of multi-channel audio", (None,)),
    "min_tps": ("a filter on tokens per second", (-1, None)),
    "max_tps": ("a filter on tokens per second", (math.inf, None)),
    "min_tpt": ("a filter on output tokens per input token", (-1, None)),
    "max_tpt": ("a filter on output tokens per input token", (math.inf, None)),
    "quadratic_factor": ("a quadratic token cost (speechdata has quadratic_duration)", (None,)),
    "multi_config": ("one sampler per sub-config, fused", (False,)),
    "datasets": ("several evaluation dataloaders in one section", (None,)),
    "skip_missing_manifest_entries": ("tarred manifests naming a subset of the tars", (False,)),
    "tarred_random_access": ("tarred manifests naming a subset of the tars", (False,)),
    "metadata_only": ("iterating manifests without audio", (False,)),
    "force_finite": ("ending lhotse's infinite iteration after one pass", (False,)),
    "pretokenize": ("tokenizing after sampling (speechdata counts tokens before it)", (True,)),
    "measure_total_length": ("min_tokens/max_tokens on the context only", (True,)),
    "text_field": ("another manifest key for the transcript (speechdata: answer_key)", ("text",)),
    "shard_seed": (
        "shard order per worker: 'trng' is random per run, an int repeats the same order in every "
        "worker; speechdata derives it from seed, epoch, rank and worker, as 'randomized' does",
        ("randomized",),
    ),
}
#: NeMo's names of speechdata keys: ``{nemo_name: speechdata_name}`` (NeMo 1.x ``label_key``, NeMo
#: 2.x / lhotse names of the rest).
NEMO_ALIASES: dict[str, str] = {
    "label_key": "answer_key",
    "audio_locator_tag": "audio_locator",
    "bucket_batch_size": "bucketing_batch_size",
    "shuffle_buffer_size": "shuffle_n",
    "batch_size": "micro_batch_size",
}
#: Aliases whose null value means "not given" (lhotse's ``batch_size: null`` with dynamic batches).
_NULL_IS_ABSENT = ("batch_size", "shuffle_buffer_size")
#: ``input_cfg`` source types that read NeMo JSONL manifests (conversation lines included).
INPUT_MANIFEST_TYPES = ("nemo", "nemo_tarred", "multimodal_conversation")
#: ``input_cfg`` types that read a lhotse CutSet manifest (``cuts_path``; converted to a NeMo
#: manifest when the source is opened, :mod:`speechdata.sources.cuts`).
INPUT_CUTS_TYPES = ("lhotse", "lhotse_as_conversation")
#: The prefix that marks a ``manifest_filepath`` entry as a lhotse CutSet manifest.
CUTS_PREFIX = "lhotse:"
#: The prefix that marks a ``manifest_filepath`` entry (and its ``tarred_audio_filepaths`` spec) as
#: a lhotse Shar dataset: its ``shar_path``, a folder or JSON of ``{field: shards}``
#: (:mod:`speechdata.sources.shar`).
SHAR_PREFIX = "lhotse_shar:"
#: ``input_cfg`` types of text-only data (not supported yet) and of lhotse's Shar format.
INPUT_TEXT_TYPES = ("txt", "txt_pair", "nemo_sft_jsonl")
INPUT_LHOTSE_TYPES = ("lhotse_shar",)
INPUT_TYPES = (*INPUT_MANIFEST_TYPES, *INPUT_CUTS_TYPES, "group", *INPUT_TEXT_TYPES, *INPUT_LHOTSE_TYPES)
#: The keys of one ``input_cfg`` item (besides NeMo's ignored and unsupported keys).
INPUT_ITEM_KEYS = (
    "type",
    "weight",
    "tags",
    "manifest_filepath",
    "tarred_audio_filepaths",
    "audio_locator_tag",
    "input_cfg",
    "cuts_path",
    "shar_path",
    "shuffle",
)
#: Tags of an ``input_cfg`` item that set a dataset key (the same value on every source).
INPUT_TAG_KEYS: dict[str, str] = {"context": "default_context", "system_prompt": "system_prompt"}


@dataclass
class FeatureConfig:
    """On-device log-mel features (``features:`` in a dataset section).

    Defaults follow NeMo's ASR preprocessor: 80 mel bins, 25 ms window, 10 ms hop, log with a
    small guard, per-feature normalisation over the valid frames of each audio.
    """

    n_mels: int = 80
    window_size: float = 0.025
    window_stride: float = 0.01
    n_fft: int | None = None
    normalize: str = "per_feature"
    log_zero_guard: float = 2.0**-24

    def check(self, path: str) -> None:
        """The rules beyond each value's type (:func:`check_section` calls it)."""
        check_choice(self.normalize, NORMALIZE, f"{path}.normalize")


@dataclass
class DatasetConfig:
    """One dataset section. Field names and defaults follow the NeMo SpeechLLM configuration page;
    the keys after ``audio_locator`` are speechdata's additions (named as in NeMo's lhotse path
    where one exists). See ``docs/configuration.md`` for every key's meaning."""

    manifest_filepath: str | list[str] | list[list[str]] | None = None
    global_batch_size: int = 4
    micro_batch_size: int = 2
    shuffle: bool = True
    num_workers: int = 0
    pin_memory: bool = True
    max_seq_length: int = 2048
    min_seq_length: int = 1
    drop_last: bool = True
    concat_sampling_probabilities: list[float] | None = None
    context_key: str = "context"
    answer_key: str = "answer"
    add_eos: bool = True
    end_string: str | None = None
    add_sep: bool = False
    add_bos: bool = False
    separate_prompt_and_response_with_newline: bool = False
    truncation_field: str = "context"
    prompt_template: str | None = None
    sample_rate: int = 16000
    max_duration: float | None = 24.0
    min_duration: float | None = 0.1
    is_tarred: bool = False
    tarred_audio_filepaths: str | list[str] | list[list[str]] | None = None
    shuffle_n: int = 2048
    bucketing_strategy: str = "fully_randomized"
    bucketing_batch_size: int | list[int] | None = None
    audio_locator: str | None = None
    # NeMo 2.x prompt keys (docs/conversations.md)
    prompt_format: str | None = None
    system_prompt: str | None = None
    # NeMo 2.x (lhotse dataloader) keys (docs/configuration.md, "NeMo 2.x keys")
    input_cfg: str | list[dict] | None = None
    token_equivalent_duration: float | None = None
    use_multimodal_sampling: bool = False
    batch_tokens: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    use_bucketing: bool | None = None
    bucketing_2d_strict_mode: bool = True
    # speechdata additions
    loss_turns: str = "all"
    seed: int = 0
    batch_duration: float | None = None
    quadratic_duration: float | None = None
    num_buckets: int | None = None
    bucket_duration_bins: list[float] | list[list[float]] | None = None
    concat_sampling_technique: str = "random"
    concat_sampling_temperature: float = 1.0
    default_context: str | None = None
    answer_only_loss: bool = True
    tokens_to_generate: int = 128
    pad_to_multiple: int = 8
    on_error: str = "raise"
    streaming: bool | str = "auto"
    bucket_buffer_size: int = 10000
    features: FeatureConfig | None = None
    cache_dir: str | None = None
    remote: RemoteOptions | None = None
    # sequence packing (docs/packing.md)
    packing: bool = False
    packed_sequence_size: int | None = None
    packed_audio_duration: float | None = None
    #: Manifest paths as a list (from ``manifest_filepath``; not a config key).
    manifests: list[str] = field(default_factory=list, repr=False, metadata={"config_key": False})
    #: The ``tags`` of each manifest's ``input_cfg`` source (group tags included; not a config key).
    source_tags: list[dict] = field(default_factory=list, repr=False, metadata={"config_key": False})

    def __post_init__(self) -> None:
        if not self.manifests:
            self.manifests = split_paths(self.manifest_filepath)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the user-facing keys (``manifests`` and ``source_tags`` excluded) from
        which :func:`make_dataset_config` builds the same config: ``input_cfg`` is null there, as
        the keys it was expanded into (:func:`expand_input_cfg`) hold what it says."""
        d = dataclasses.asdict(self)
        d.pop("manifests")
        d.pop("source_tags")
        d["input_cfg"] = None
        return d

    def check(self, path: str) -> None:
        """The rules beyond each value's type: choices, ranges, and the data-free
        concat-sampling rules (:func:`check_section` calls it)."""
        _check_dataset(self, path)


#: Keys whose default differs for evaluation sets (``validation_ds`` / ``test_ds``).
EVAL_DEFAULTS: dict[str, Any] = {"shuffle": False, "drop_last": False}

_DATASET_SECTIONS = ("train_ds", "validation_ds", "test_ds")
_SECTION_PARENTS = ("model.", "model.data.", "data.", "")


# --------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """Safe YAML loader with YAML 1.2 floats (``1e-8``) and duplicate-key detection."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        if key in seen:
            src = key_node.start_mark.name
            raise ConfigError(f"{src}:{line}: duplicate key {key!r} (first defined on line {seen[key]})")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(source: str | Path, *, text: str | None = None) -> DictConfig:
    """Read YAML from a file (or ``text``, with ``source`` naming it in errors) into a DictConfig.

    Raises :class:`ConfigError` for a missing file, a YAML syntax error or a duplicated key.
    """
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{name}: config file not found") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{name}: not UTF-8 text ({e.reason})") from None
    try:
        loader = _Loader(text)
        loader.name = name
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()  # type: ignore[no-untyped-call]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise ConfigError(f"{where}: YAML error: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: YAML error: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{name}: {e}") from None


def load_config(
    source: str | Path | Mapping[str, Any] | DictConfig, overrides: Sequence[str] = ()
) -> DictConfig:
    """Load a config file (or take a mapping) and apply dotted ``key=value`` overrides."""
    if isinstance(source, DictConfig):
        cfg = source.copy()
    elif isinstance(source, Mapping):
        cfg = OmegaConf.create(dict(source))
    else:
        cfg = load_yaml(source)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.train_ds.max_duration=20")
        key, _, raw = item.partition("=")
        try:
            value = _override_value(raw)
            OmegaConf.update(cfg, key.strip(), value, merge=True, force_add=True)
        except yaml.MarkedYAMLError as e:
            raise ConfigError(f"override {item!r}: YAML error: {e.problem}") from None
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            raise ConfigError(f"override {item!r}: {str(e).splitlines()[0]}") from None
    return cfg


def _override_value(raw: str) -> Any:
    """An override's value as YAML; text that is not YAML (a locator such as ``|audio|``) stays a
    string, unless it was meant as a list or mapping (starts with ``[`` or ``{``)."""
    if not raw.strip():
        return raw
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        if raw.lstrip()[:1] in ("[", "{"):
            raise
        return raw


# ------------------------------------------------------------------------------ validation


def section_paths(name: str) -> list[str]:
    """Where a dataset section ``name`` is looked for, in order: ``model.<name>``,
    ``model.data.<name>`` (NeMo's own SpeechLLM configs), ``data.<name>`` (NeMo 2.x speechlm2
    configs), then ``<name>``."""
    return [f"{parent}{name}" for parent in _SECTION_PARENTS]


def find_section(cfg: DictConfig, name: str) -> tuple[DictConfig, str]:
    """Return a dataset section and its dotted path (the first of :func:`section_paths` that is a
    mapping); a :class:`ConfigError` naming every place looked at when there is none."""
    paths = section_paths(name)
    for path in paths:
        node = OmegaConf.select(cfg, path, throw_on_missing=False, throw_on_resolution_failure=False)
        if isinstance(node, DictConfig):
            return node, path
    raise ConfigError(f"config has no '{name}' section (looked for {', '.join(paths)})")


def has_section(cfg: DictConfig, name: str) -> bool:
    """Whether :func:`find_section` finds ``name`` (an optional ``validation_ds``, say)."""
    try:
        find_section(cfg, name)
    except ConfigError:
        return False
    return True


def dataset_config(
    cfg: DictConfig | Mapping[str, Any], name: str = "train_ds", *, evaluation: bool | None = None
) -> DatasetConfig:
    """Validate one dataset section into a :class:`DatasetConfig`.

    ``cfg`` is a whole config (the section is found by :func:`find_section`) or the section itself
    (when it has no ``train_ds``/``model`` key). Evaluation sections (``validation_ds``,
    ``test_ds``, or ``evaluation=True``) default to no shuffling and no ``drop_last``. NeMo's keys
    are handled as :func:`make_dataset_config` says.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    if "model" in cfg or any(k in cfg for k in _DATASET_SECTIONS):
        node, path = find_section(cfg, name)
    else:
        node, path = cfg, name
    if evaluation is None:
        evaluation = name != "train_ds"
    values: dict[str, Any] = {}
    for key in node:
        key = str(key)
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{path}.{key}: required value is missing (still '???')")
        try:
            raw = node[key]
            if isinstance(raw, (DictConfig, ListConfig)):
                raw = OmegaConf.to_container(raw, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path}.{key}: cannot resolve: {e}".splitlines()[0]) from None
        values[key] = raw
    defaults = dict(EVAL_DEFAULTS) if evaluation else {}
    defaults.update(values)
    return make_dataset_config(defaults, path)


def make_dataset_config(values: Mapping[str, Any], path: str = "dataset") -> DatasetConfig:
    """Build a :class:`DatasetConfig` from plain values, checking types and choices.

    NeMo's keys: :data:`NEMO_IGNORED_KEYS` (and :data:`NEMO_UNSUPPORTED_KEYS` set to a value that
    changes nothing) are dropped with one warning (logger ``speechdata``) naming them and
    ``path``; any other value of an unsupported key is a one-line "not supported" error;
    :data:`NEMO_ALIASES` (``label_key``, ``audio_locator_tag``, ...) set the speechdata key, and
    both names with different values are an error; ``input_cfg`` becomes the manifests, shards
    and sampling weights it lists (:func:`expand_input_cfg`). Any other unknown key is an error
    with a "did you mean".
    """
    known = section_keys(DatasetConfig)
    values = _section_cuts(values, path)
    values = _nemo_keys(values, path, known)
    check_keys(values, [*known, *NEMO_ALIASES], path)  # a "did you mean" may name NeMo's names too
    values, tags = expand_input_cfg(values, path)
    ds = check_section(values, DatasetConfig, path, nested={"features": _features, "remote": _remote})
    ds.source_tags = tags
    return ds


def _section_cuts(values: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """NeMo's section-level ``cuts_path`` (one lhotse CutSet manifest) or ``shar_path`` (one lhotse
    Shar dataset) as a one-source ``input_cfg``; a null one is dropped."""
    out = {k: v for k, v in values.items() if k not in ("cuts_path", "shar_path")}
    given = {k: values[k] for k in ("cuts_path", "shar_path") if values.get(k) is not None}
    if not given:
        return out if len(out) != len(values) else values
    if len(given) > 1:
        raise ConfigError(f"{path}: give cuts_path or shar_path, not both")
    ((key, value),) = given.items()
    if out.get("input_cfg") is not None:
        raise ConfigError(f"{path}: give input_cfg or {key}, not both")
    kind = "lhotse" if key == "cuts_path" else "lhotse_shar"
    out["input_cfg"] = [{"type": kind, key: value}]
    return out


def _nemo_keys(values: Mapping[str, Any], path: str, known: Sequence[str]) -> dict[str, Any]:
    """``values`` without NeMo's ignored keys (one warning names them), NeMo's unsupported keys
    checked, and NeMo's aliases renamed."""
    out: dict[str, Any] = {}
    ignored = _drop_nemo_keys(values, path, known, out)
    for alias, target in NEMO_ALIASES.items():
        if alias not in values or (alias in _NULL_IS_ABSENT and values[alias] is None):
            continue
        value = values[alias]
        if target in values and values[target] != value:
            raise ConfigError(
                f"{path}: {alias} {value!r} and {target} {values[target]!r} differ; "
                f"{alias} is NeMo's name for {target}, give one of them"
            )
        out[target] = value
    seed = out.get("seed")
    if isinstance(seed, str):
        raise ConfigError(
            f"{path}.seed: {seed!r} is NeMo's seed drawn per run; speechdata needs an int seed, "
            "which every random choice derives from so that a run resumes exactly"
        )
    if ignored:
        log.warning(
            "%s: ignoring NeMo key(s) that do not change loading: %s", path, ", ".join(sorted(ignored))
        )
    return out


def _drop_nemo_keys(
    values: Mapping[str, Any], path: str, known: Sequence[str], out: dict[str, Any]
) -> list[str]:
    """Copy ``values`` into ``out`` without NeMo's ignored keys, unsupported keys that change
    nothing and aliases; return the dropped keys. An unsupported key set to another value is a
    one-line error; an unknown key is copied (the caller reports it with a "did you mean")."""
    ignored: list[str] = []
    for key, value in values.items():
        key = str(key)
        if key in known:
            out[key] = value
        elif key in NEMO_IGNORED_KEYS:
            ignored.append(key)
        elif key in NEMO_UNSUPPORTED_KEYS:
            what, noop = NEMO_UNSUPPORTED_KEYS[key]
            if not any(_same_value(value, v) for v in noop):
                shown = " or ".join("null" if v is None else repr(v) for v in noop)
                raise ConfigError(
                    f"{path}.{key}: not supported ({what}); got {value!r}, remove it or set it to {shown}"
                )
            ignored.append(key)
        elif key not in NEMO_ALIASES:
            out[key] = value  # unknown: reported with a "did you mean" by the caller
    return ignored


def _same_value(a: Any, b: Any) -> bool:
    """``a == b`` where a bool equals only a bool (``1`` is not ``true``) and null only null."""
    if a is None or b is None:
        return a is b
    return isinstance(a, bool) == isinstance(b, bool) and a == b


# ------------------------------------------------------------------------------- input_cfg


def expand_input_cfg(values: Mapping[str, Any], path: str) -> tuple[dict[str, Any], list[dict]]:
    """NeMo 2.x ``input_cfg`` as speechdata's keys; returns the new values and each manifest's tags.

    ``input_cfg`` is a list of sources, or the path of a YAML file holding that list. Each source
    has a ``type``: ``nemo`` (a JSONL manifest), ``nemo_tarred`` (a manifest and its
    ``tarred_audio_filepaths``), ``multimodal_conversation`` (a manifest of conversation lines,
    optionally tarred), ``lhotse`` / ``lhotse_as_conversation`` (a CutSet manifest,
    ``cuts_path``: its ``manifest_filepath`` entry is ``lhotse:<cuts_path>``, converted when the
    source is opened), ``lhotse_shar`` (a lhotse Shar dataset, ``shar_path``: a folder or a mapping
    of fields to shards; its manifest and shard spec are ``lhotse_shar:<shar_path>``, converted
    when the source is opened) or ``group`` (a nested ``input_cfg``); text-only types are a
    one-line "not supported" error. Each leaf source becomes one manifest of
    ``manifest_filepath`` (and, when tarred, one shard spec of ``tarred_audio_filepaths``), in
    order. Weights follow NeMo: in each list either every item has a ``weight`` or none has (equal
    weights); a source's probability is its weight over its list's total, times its group's
    probability; the leaves' probabilities become ``concat_sampling_probabilities``. Tarred and
    plain sources cannot be mixed (NeMo refuses it too). ``audio_locator_tag`` and the tags
    ``context`` / ``system_prompt`` set ``audio_locator``, ``default_context`` and
    ``system_prompt`` and must be the same for every source; other tags are kept per manifest.
    """
    out = dict(values)
    spec = out.get("input_cfg")
    if spec is None:
        return out, []
    where = f"{path}.input_cfg"
    for key in ("manifest_filepath", "tarred_audio_filepaths", "concat_sampling_probabilities"):
        if out.get(key) is not None:
            raise ConfigError(f"{path}: give input_cfg or {key}, not both (input_cfg lists the manifests)")
    if isinstance(spec, str):
        items = _load_input_list(spec, where)
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise ConfigError(f"{where}: expected a list of sources or the path of a YAML file holding one")
    leaves: list[dict[str, Any]] = []
    _walk_sources(items, where, 1.0, {}, leaves, out.get("shuffle", True))
    tarred = {leaf["tarred"] for leaf in leaves}
    if len(tarred) > 1:
        raise ConfigError(
            f"{where}: mixes tarred and plain sources; NeMo and speechdata read one kind per section"
        )
    out["manifest_filepath"] = [leaf["manifest"] for leaf in leaves]
    if tarred == {True}:
        out["is_tarred"] = True
        out["tarred_audio_filepaths"] = [leaf["shards"] for leaf in leaves]
    if len(leaves) > 1:
        total = math.fsum(leaf["p"] for leaf in leaves)
        out["concat_sampling_probabilities"] = [leaf["p"] / total for leaf in leaves]
    for key, target in (("audio_locator_tag", "audio_locator"), *INPUT_TAG_KEYS.items()):
        given = {repr(leaf["shared"].get(key)): leaf["shared"].get(key) for leaf in leaves}
        if len(given) > 1:
            raise ConfigError(
                f"{where}: sources differ in {key} ({', '.join(sorted(given))}); "
                f"per-source {key} is not supported yet, give every source the same one"
            )
        value = next(iter(given.values()))
        if value is None:
            continue
        if out.get(target) is not None and out[target] != value:
            raise ConfigError(f"{where}: {key} {value!r} differs from {path}.{target} {out[target]!r}")
        out[target] = value
    return out, [leaf["tags"] for leaf in leaves]


def _load_input_list(spec: str, where: str) -> list[Any]:
    """The list of sources in the YAML file ``spec`` (NeMo's ``input_cfg: /path/to/input_cfg.yaml``)."""
    file = Path(os.path.expanduser(spec))
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {spec} ({e.strerror or e})") from None
    loader = _Loader(text)
    loader.name = spec
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise ConfigError(f"{spec}:{mark.line + 1 if mark else 0}: YAML error: {e.problem}") from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    if not isinstance(data, list):
        raise ConfigError(f"{spec}: input_cfg file must hold a list of sources, got {type(data).__name__}")
    return data


def _walk_sources(
    items: list[Any],
    where: str,
    p_group: float,
    inherited: dict[str, Any],
    leaves: list[dict[str, Any]],
    shuffle: Any,
) -> None:
    """Append the leaf sources of ``items`` to ``leaves`` with their probability (see
    :func:`expand_input_cfg`); ``inherited`` holds the group's tags and locator."""
    if not items:
        raise ConfigError(f"{where}: empty list of sources")
    weights: list[float] = []
    for k, item in enumerate(items):
        at = f"{where}[{k}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{at}: expected a mapping with a type, got {type(item).__name__}")
        weight = item.get("weight")
        if weight is not None:
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not math.isfinite(weight)
                or weight < 0
            ):
                raise ConfigError(f"{at}.weight: must be a finite number >= 0; got {weight!r}")
            weights.append(float(weight))
    if weights and len(weights) != len(items):
        raise ConfigError(
            f"{where}: {len(weights)} of {len(items)} sources have a weight; give every source one, or none"
        )
    if weights and math.fsum(weights) <= 0:
        raise ConfigError(f"{where}: the weights sum to 0")
    probs = [w / math.fsum(weights) for w in weights] if weights else [1.0 / len(items)] * len(items)
    for k, (item, p) in enumerate(zip(items, probs, strict=True)):
        at = f"{where}[{k}]"
        kind = item.get("type")
        if kind is None:
            raise ConfigError(f"{at}: missing type (one of {', '.join(INPUT_TYPES)})")
        check_choice(kind, INPUT_TYPES, f"{at}.type")
        if kind in INPUT_TEXT_TYPES:
            raise ConfigError(f"{at}.type: {kind!r} (text-only data) is not supported yet")
        rest: dict[str, Any] = {}
        _drop_nemo_keys(item, at, INPUT_ITEM_KEYS, rest)
        check_keys(rest, INPUT_ITEM_KEYS, at)
        if "shuffle" in rest and rest["shuffle"] != shuffle:
            raise ConfigError(
                f"{at}.shuffle: per-source shuffle is not supported; set shuffle on the section"
            )
        tags = rest.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise ConfigError(f"{at}.tags: expected a mapping, got {type(tags).__name__}")
        merged = {**inherited.get("tags", {}), **{str(t): v for t, v in tags.items()}}
        shared = {key: merged.get(key) for key in INPUT_TAG_KEYS}
        locator = rest.get("audio_locator_tag", inherited.get("audio_locator_tag"))
        scope = {"tags": merged, "audio_locator_tag": locator}
        if kind == "group":
            nested = rest.get("input_cfg")
            if not isinstance(nested, (list, tuple)):
                raise ConfigError(f"{at}.input_cfg: a group needs a list of sources")
            _walk_sources(list(nested), f"{at}.input_cfg", p_group * p, scope, leaves, shuffle)
            continue
        if "input_cfg" in rest:
            raise ConfigError(f"{at}.input_cfg: only a source of type group has one")
        if kind in INPUT_CUTS_TYPES:
            cuts = rest.get("cuts_path")
            if not isinstance(cuts, str) or not cuts:
                raise ConfigError(
                    f"{at}.cuts_path: a {kind} source needs one CutSet manifest path (a string)"
                )
            for key in ("manifest_filepath", "tarred_audio_filepaths"):
                if key in rest:
                    raise ConfigError(f"{at}.{key}: a {kind} source reads cuts_path only")
            rest["manifest_filepath"] = CUTS_PREFIX + cuts
        elif "cuts_path" in rest:
            raise ConfigError(
                f"{at}.cuts_path: only sources of type {' / '.join(INPUT_CUTS_TYPES)} read cuts"
            )
        if kind in INPUT_LHOTSE_TYPES:
            for key in ("manifest_filepath", "tarred_audio_filepaths", "cuts_path"):
                if key in rest:
                    raise ConfigError(f"{at}.{key}: a {kind} source reads shar_path only")
            rest["manifest_filepath"] = rest["tarred_audio_filepaths"] = SHAR_PREFIX + _shar_spec(
                rest.get("shar_path"), f"{at}.shar_path"
            )
        elif "shar_path" in rest:
            raise ConfigError(f"{at}.shar_path: only sources of type lhotse_shar read Shar datasets")
        manifest = rest.get("manifest_filepath")
        if not isinstance(manifest, str) or not manifest:
            raise ConfigError(f"{at}.manifest_filepath: a {kind} source needs one manifest path (a string)")
        shards = rest.get("tarred_audio_filepaths")
        if kind == "nemo_tarred" and shards is None:
            raise ConfigError(f"{at}.tarred_audio_filepaths: required for type nemo_tarred")
        if kind == "nemo" and shards is not None:
            raise ConfigError(
                f"{at}.tarred_audio_filepaths: type nemo reads plain files; use type nemo_tarred"
            )
        if shards is not None and not isinstance(shards, str):
            raise ConfigError(f"{at}.tarred_audio_filepaths: expected one shard spec (a string)")
        leaves.append(
            {
                "manifest": manifest,
                "shards": shards,
                "tarred": shards is not None,
                "p": p_group * p,
                "tags": merged,
                "shared": {**shared, "audio_locator_tag": locator},
            }
        )


def _shar_spec(value: Any, at: str) -> str:
    """A ``shar_path`` as the text after :data:`SHAR_PREFIX`: a folder as it is, a mapping of
    fields to shards (NeMo 2.x: ``{cuts: [...], recording: [...]}``, each a list of paths or one
    brace pattern) as JSON."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and value:
        fields: dict[str, Any] = {}
        for name, shards in value.items():
            items = list(shards) if isinstance(shards, (list, tuple, ListConfig)) else [shards]
            if not items or not all(isinstance(x, str) and x for x in items):
                raise ConfigError(f"{at}.{name}: expected a list of shard paths or one brace pattern")
            fields[str(name)] = items
        return json.dumps(fields)
    if isinstance(value, (list, tuple, ListConfig)):
        raise ConfigError(
            f"{at}: a list of Shar folders is not supported; give one lhotse_shar source per folder "
            "in input_cfg (with weights)"
        )
    raise ConfigError(f"{at}: expected a Shar folder or a mapping of fields to shard lists")


def split_paths(value: str | Sequence[str] | None) -> list[str]:
    """``manifest_filepath`` as a list: one path, a comma-separated string, or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    out: list[str] = []
    for p in value:  # NeMo's pre-bucketed configs nest one list per bucket
        out.extend(split_paths(p) if isinstance(p, (list, tuple, ListConfig)) else [str(p)])
    return out


def _remote(value: Any, path: str) -> RemoteOptions | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping of remote-reading settings (docs/object-storage.md), or null"
        )
    return RemoteOptions.from_config(value, path)


def _features(value: Any, path: str) -> FeatureConfig | None:
    if value is None or value is False:
        return None
    if value is True:
        return FeatureConfig()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of feature settings, true, or null")
    return check_section(value, FeatureConfig, path)


def _check_dataset(ds: DatasetConfig, path: str) -> None:
    choices = {
        "truncation_field": TRUNCATION_FIELDS,
        "bucketing_strategy": BUCKETING_STRATEGIES,
        "concat_sampling_technique": CONCAT_TECHNIQUES,
        "on_error": ON_ERROR,
        "loss_turns": LOSS_TURNS,
    }
    if ds.prompt_format is not None:
        check_choice(ds.prompt_format, PROMPT_FORMATS, f"{path}.prompt_format")
        if ds.prompt_template is not None:
            raise ConfigError(f"{path}: set prompt_format (NeMo 2.x) or prompt_template (NeMo 1.x), not both")
    for key, allowed in choices.items():
        check_choice(getattr(ds, key), allowed, f"{path}.{key}")
    if ds.streaming not in (True, False, "auto"):
        raise ConfigError(f"{path}.streaming: must be true, false or 'auto'; got {ds.streaming!r}")
    positive = ("global_batch_size", "micro_batch_size", "max_seq_length", "sample_rate", "pad_to_multiple")
    for key in positive:
        if getattr(ds, key) <= 0:
            raise ConfigError(f"{path}.{key}: must be positive; got {getattr(ds, key)}")
    for key in ("batch_duration", "quadratic_duration", "num_buckets"):
        v = getattr(ds, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{path}.{key}: must be positive or null; got {v}")
    if ds.num_workers < 0:
        raise ConfigError(f"{path}.num_workers: must be >= 0; got {ds.num_workers}")
    if ds.min_duration is not None and ds.max_duration is not None and ds.min_duration > ds.max_duration:
        raise ConfigError(
            f"{path}: min_duration {ds.min_duration} is larger than max_duration {ds.max_duration}"
        )
    _check_bins(ds.bucket_duration_bins, f"{path}.bucket_duration_bins")
    _check_tokens(ds, path)
    _check_packing(ds, path)
    if ds.seed < 0:
        raise ConfigError(f"{path}.seed: must be >= 0; got {ds.seed}")
    check_concat_sampling(ds, len(ds.manifests) or None, path)


def bins_are_2d(bins: Sequence[Any] | None) -> bool:
    """Whether ``bucket_duration_bins`` are 2D ``[seconds or tokens, output tokens]`` pairs."""
    return bool(bins) and isinstance(bins[0], (list, tuple))  # type: ignore[index]


def _check_bins(bins: list[Any] | None, where: str) -> None:
    """1D bins increase; 2D bins are pairs sorted ascending (by the first value, then the second)."""
    if bins is None:
        return
    if not bins_are_2d(bins):
        if list(bins) != sorted(bins):
            raise ConfigError(f"{where}: must be increasing; got {bins}")
        return
    pairs = [tuple(b) for b in bins]
    bad = next((b for b in pairs if len(b) != 2), None)
    if bad is not None:
        raise ConfigError(f"{where}: 2D bins are [seconds or tokens, output tokens] pairs; got {list(bad)}")
    if pairs != sorted(pairs) or len(set(pairs)) != len(pairs):
        raise ConfigError(
            f"{where}: 2D bins must be distinct and sorted ascending (by the first value, then the second)"
        )


def _check_tokens(ds: DatasetConfig, path: str) -> None:
    """The token keys: positive values, ``min_tokens <= max_tokens``, what needs
    ``token_equivalent_duration``, and ``use_bucketing: false`` without bins."""
    for key in ("token_equivalent_duration", "batch_tokens", "max_tokens"):
        v = getattr(ds, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{path}.{key}: must be positive or null; got {v}")
    if ds.min_tokens is not None and ds.min_tokens < 0:
        raise ConfigError(f"{path}.min_tokens: must be >= 0 or null; got {ds.min_tokens}")
    if ds.min_tokens is not None and ds.max_tokens is not None and ds.min_tokens > ds.max_tokens:
        raise ConfigError(f"{path}: min_tokens {ds.min_tokens} is larger than max_tokens {ds.max_tokens}")
    if ds.use_multimodal_sampling and ds.token_equivalent_duration is None:
        raise ConfigError(
            f"{path}.use_multimodal_sampling: needs token_equivalent_duration (seconds of audio per token)"
        )
    if ds.use_bucketing is False:
        for key in ("bucket_duration_bins", "num_buckets"):
            if getattr(ds, key) is not None:
                raise ConfigError(f"{path}: use_bucketing is false but {key} is set; remove one of them")
    if ds.batch_tokens is not None and ds.bucketing_batch_size is not None:
        raise ConfigError(
            f"{path}: bucketing_batch_size and batch_tokens are both set: use batch_tokens (and/or "
            "batch_duration) for dynamic batches or bucketing_batch_size for fixed per-bucket sizes"
        )


#: Keys that cut batches in other ways than packing (refused with ``packing: true``).
_NOT_WITH_PACKING = (
    "batch_duration",
    "batch_tokens",
    "bucketing_batch_size",
    "bucket_duration_bins",
    "num_buckets",
)


def _check_packing(ds: DatasetConfig, path: str) -> None:
    """``packing`` (docs/packing.md): needs ``packed_sequence_size``; positive budgets; no other
    way of cutting batches; not on a stream (rows are planned from every example's tokens)."""
    for key in ("packed_sequence_size", "packed_audio_duration"):
        v = getattr(ds, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{path}.{key}: must be positive or null; got {v}")
    if not ds.packing:
        for key in ("packed_sequence_size", "packed_audio_duration"):
            if getattr(ds, key) is not None:
                raise ConfigError(
                    f"{path}.{key}: is set but packing is false; set packing: true or remove it"
                )
        return
    if ds.packed_sequence_size is None:
        raise ConfigError(f"{path}.packing: needs packed_sequence_size (tokens per packed row)")
    for key in _NOT_WITH_PACKING:
        if getattr(ds, key) is not None:
            raise ConfigError(
                f"{path}: packing and {key} are both set: a packed batch is micro_batch_size rows of "
                f"packed_sequence_size tokens; remove {key}"
            )
    if ds.use_bucketing:
        raise ConfigError(
            f"{path}: packing and use_bucketing: true are both set; packed rows need no buckets"
        )
    if ds.streaming is True:
        raise ConfigError(
            f"{path}: packing needs every example's token counts before the epoch; a streamed dataset "
            "(streaming: true) has none: read the shards by offset (streaming: false)"
        )


def check_concat_sampling(cfg: DatasetConfig, num_manifests: int | None, path: str = "") -> None:
    """The rules of ``concat_sampling_probabilities`` and ``concat_sampling_temperature`` that need
    no data: weights only with technique ``random``, one finite weight >= 0 per manifest
    (``num_manifests``; ``None``: not checked), summing to 1 (within 1e-3); a temperature > 0.

    :func:`make_dataset_config` calls it, so a bad config fails when it is read, before any
    manifest is indexed. ``path`` (``model.train_ds``) prefixes the key in errors.
    """
    where = f"{path}." if path else ""
    if cfg.concat_sampling_temperature <= 0:
        raise ConfigError(
            f"{where}concat_sampling_temperature: must be positive; got {cfg.concat_sampling_temperature}"
        )
    probs = cfg.concat_sampling_probabilities
    if probs is None:
        return
    key = f"{where}concat_sampling_probabilities"
    if cfg.concat_sampling_technique != "random":
        raise ConfigError(
            f"{key} is only used with concat_sampling_technique 'random'; "
            f"set it to null for {cfg.concat_sampling_technique!r}"
        )
    if num_manifests is not None and len(probs) != num_manifests:
        raise ConfigError(f"{key}: {len(probs)} weights for {num_manifests} manifests; give one per manifest")
    if any(not math.isfinite(w) or w < 0 for w in probs):
        raise ConfigError(f"{key}: weights must be finite and >= 0; got {list(probs)}")
    total = math.fsum(probs)
    if abs(total - 1.0) > 1e-3:
        raise ConfigError(f"{key}: weights must sum to 1; they sum to {total:.6g}")


# ------------------------------------------------------------------ the section validator


def suggest(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'X'?)"`` for the choice closest to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(keys: Iterable[Any], known: Sequence[str], path: str) -> None:
    """A :class:`ConfigError` ``"<path>.<key>: unknown key (did you mean ...)"`` for the first key
    of ``keys`` not in ``known``."""
    for key in keys:
        if str(key) not in known:
            raise ConfigError(f"{path}.{key}: unknown key{suggest(str(key), known)}")


def check_choice(value: Any, choices: Sequence[Any], path: str) -> None:
    """A :class:`ConfigError` ``"<path>: must be one of a, b; got 'x' (did you mean ...)"`` unless
    ``value`` is one of ``choices`` (``None`` among them is shown as ``null``)."""
    if value in choices:
        return
    shown = ", ".join("null" if c is None else str(c) for c in choices)
    named = [str(c) for c in choices if c is not None]
    raise ConfigError(f"{path}: must be one of {shown}; got {value!r}{suggest(str(value), named)}")


def section_keys(cls: type) -> list[str]:
    """The config keys of dataclass ``cls``: its fields, except those marked
    ``metadata={"config_key": False}`` (values derived from other keys)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("config_key", True)]


def check_section(
    values: Mapping[str, Any] | None,
    cls: type[T],
    path: str,
    *,
    nested: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> T:
    """Build dataclass ``cls`` from one config section: the config validator of every section.

    ``values`` is the section (``None``: all defaults); every key must be one of
    :func:`section_keys` (else "unknown key" with a "did you mean"), every value is checked
    against the field's annotation by :func:`coerce`, except ``nested`` fields, whose value is
    built by their function ``(value, path) -> value``. The built object's own rules run last: its
    ``check(path)`` method, when the class has one. Errors name ``path.key``.
    """
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    check_keys(values, section_keys(cls), path)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        build, where = (nested or {}).get(str(key)), f"{path}.{key}"
        kwargs[str(key)] = build(value, where) if build is not None else coerce(value, hints[key], where)
    out = cls(**kwargs)
    check = getattr(out, "check", None)
    if callable(check):
        check(path)
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against the type annotation ``tp`` (unions, ``list[...]``, ``None``,
    bool, int, float, str, classes): a :class:`ConfigError` ``"<path>: expected int, got 'four'"``
    when it does not match; ints become floats where a float is expected."""
    ok, out = _try_coerce(value, tp)
    if not ok:
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {shown}")
    return out


def _try_coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _try_coerce(value, arg)
            if ok:
                return True, out
        return False, None
    if origin is list:
        if not isinstance(value, (list, tuple, ListConfig)):
            return False, None
        (inner,) = typing.get_args(tp)
        out = []
        for v in value:
            ok, c = _try_coerce(v, inner)
            if not ok:
                return False, None
            out.append(c)
        return True, out
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, None
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value
