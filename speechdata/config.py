"""Configuration: NeMo-style YAML in, validated dataclasses out.

YAML is read with a safe loader that rejects duplicated keys (naming both lines), then handed to
OmegaConf for its semantics: ``???`` marks a required value, ``${a.b}`` interpolates, and dotted
overrides such as ``model.train_ds.max_duration=20`` are merged on top. Dataset sections
(``train_ds``, ``validation_ds``, ``test_ds``; under ``model.``, ``model.data.`` as in NeMo's own
SpeechLLM configs, or at the top level) are checked key by key against :class:`DatasetConfig`: an
unknown key gets a "did you mean", a wrong type names the key, a required key left ``???`` names
its full path. NeMo's keys that do not change what is loaded (:data:`NEMO_IGNORED_KEYS`) are
accepted with one warning per section; NeMo's ``label_key`` is ``answer_key``.

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
import logging
import math
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
#: per section names them. ``sample_alpha`` is accepted only as null (see :data:`NEMO_NULL_ONLY_KEYS`).
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
    "sample_alpha": "SentencePiece subword sampling of answers",
}
#: Ignored keys that are accepted only as null: any other value would change loading.
NEMO_NULL_ONLY_KEYS = ("sample_alpha",)
#: NeMo's names of speechdata keys: ``{nemo_name: speechdata_name}``.
NEMO_ALIASES: dict[str, str] = {"label_key": "answer_key"}


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
    # speechdata additions
    loss_turns: str = "all"
    seed: int = 0
    batch_duration: float | None = None
    quadratic_duration: float | None = None
    num_buckets: int | None = None
    bucket_duration_bins: list[float] | None = None
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
    #: Manifest paths as a list (from ``manifest_filepath``; not a config key).
    manifests: list[str] = field(default_factory=list, repr=False, metadata={"config_key": False})

    def __post_init__(self) -> None:
        if not self.manifests:
            self.manifests = split_paths(self.manifest_filepath)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the user-facing keys (``manifests`` excluded)."""
        d = dataclasses.asdict(self)
        d.pop("manifests")
        return d

    def check(self, path: str) -> None:
        """The rules beyond each value's type: choices, ranges, and the data-free
        concat-sampling rules (:func:`check_section` calls it)."""
        _check_dataset(self, path)


#: Keys whose default differs for evaluation sets (``validation_ds`` / ``test_ds``).
EVAL_DEFAULTS: dict[str, Any] = {"shuffle": False, "drop_last": False}

_DATASET_SECTIONS = ("train_ds", "validation_ds", "test_ds")
_SECTION_PARENTS = ("model.", "model.data.", "")


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
    ``model.data.<name>`` (NeMo's own SpeechLLM configs), then ``<name>``."""
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

    NeMo's keys: :data:`NEMO_IGNORED_KEYS` are dropped with one warning (logger ``speechdata``)
    naming them and ``path``; :data:`NEMO_ALIASES` (``label_key``) set the speechdata key, and
    both names with different values are an error. Any other unknown key is an error with a
    "did you mean".
    """
    values = _nemo_keys(values, path, section_keys(DatasetConfig))
    return check_section(values, DatasetConfig, path, nested={"features": _features})


def _nemo_keys(values: Mapping[str, Any], path: str, known: Sequence[str]) -> dict[str, Any]:
    """``values`` without NeMo's ignored keys (one warning names them) and with NeMo's aliases
    renamed."""
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in values.items():
        key = str(key)
        if key in known:
            out[key] = value
        elif key in NEMO_IGNORED_KEYS:
            if key in NEMO_NULL_ONLY_KEYS and value is not None:
                raise ConfigError(
                    f"{path}.{key}: not supported ({NEMO_IGNORED_KEYS[key]}); set it to null or remove it"
                )
            ignored.append(key)
        elif key not in NEMO_ALIASES:
            out[key] = value  # unknown: reported with a "did you mean" by the caller
    for alias, target in NEMO_ALIASES.items():
        if alias not in values:
            continue
        value = values[alias]
        if target in values and values[target] != value:
            raise ConfigError(
                f"{path}: {alias} {value!r} and {target} {values[target]!r} differ; "
                f"{alias} is NeMo's name for {target}, give one of them"
            )
        out[target] = value
    if ignored:
        log.warning(
            "%s: ignoring NeMo key(s) that do not change loading: %s", path, ", ".join(sorted(ignored))
        )
    return out


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
    if ds.bucket_duration_bins is not None and list(ds.bucket_duration_bins) != sorted(
        ds.bucket_duration_bins
    ):
        raise ConfigError(f"{path}.bucket_duration_bins: must be increasing; got {ds.bucket_duration_bins}")
    if ds.seed < 0:
        raise ConfigError(f"{path}.seed: must be >= 0; got {ds.seed}")
    check_concat_sampling(ds, len(ds.manifests) or None, path)


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
