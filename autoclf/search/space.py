"""Search spaces: a YAML file → validated parameter specs → ``trial.suggest_*`` calls.

A space file has ``params`` (each a fixed value or a ``{type: categorical|int|float, …}``
spec) and optional ``sampler`` and ``pruner`` sections. Every mistake stops with the key and
value named, before any trial starts.

Two kinds of trial share one study where ``params.kind`` can be both ``head`` (a linear head on
the frozen body's cached features) and ``finetune``. Settings that mean something to one kind
alone go in a section named for it (``head:`` or ``finetune:``); Optuna names them
``head.lr``, ``finetune.lr``, …, so each kind keeps its own ranges and TPE its own history.
"""

from __future__ import annotations

import difflib
import importlib.resources
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from autoclf.config import BALANCE, HEAD_PARAMS, KEEP, KINDS, SCHEDULERS, TrainParams
from autoclf.errors import SpaceError

TOP_LEVEL_KEYS = ("description", "params", *KINDS, "sampler", "pruner")
SPEC_KEYS = {
    "categorical": {"type", "choices"},
    "int": {"type", "low", "high", "step", "log"},
    "float": {"type", "low", "high", "step", "log"},
}

# Pruners a space may name, with the keyword arguments their constructors accept.
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}
DEFAULT_PRUNER = {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2}
DEFAULT_SAMPLER = {"name": "tpe", "n_startup_trials": 5}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: fixed (``kind == "fixed"``) or sampled by Optuna."""

    name: str
    kind: str  # fixed | categorical | int | float
    value: Any = None  # fixed
    choices: tuple[Any, ...] = ()  # categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    section: str = "params"  # or the trial kind whose section it is in

    @property
    def optuna_name(self) -> str:
        """Its name in the study: ``lr``, or ``finetune.lr`` in the finetune section."""
        return self.name if self.section == "params" else f"{self.section}.{self.name}"

    def suggest(self, trial: optuna.Trial) -> Any:
        name = self.optuna_name
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> tuple[Any, ...]:
        """The values this parameter can take, where that set is finite (else its bounds)."""
        if self.kind == "fixed":
            return (self.value,)
        if self.kind == "categorical":
            return self.choices
        return (self.low, self.high)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    source: str  # the YAML text, stored with the study so a run can be replayed
    params: dict[str, ParamSpec]
    sampler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SAMPLER))
    pruner: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    # Per trial kind, the settings that apply to that kind alone.
    sections: dict[str, dict[str, ParamSpec]] = field(default_factory=dict)

    def suggest(self, trial: optuna.Trial) -> TrainParams:
        values = {n: spec.suggest(trial) for n, spec in self.params.items()}
        kind = values.get("kind", "finetune")
        values.update({n: spec.suggest(trial) for n, spec in self.sections.get(kind, {}).items()})
        return TrainParams.from_dict(values)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.params["kind"].values()) if "kind" in self.params else ("finetune",)

    def possible(self, name: str, *, kinds: tuple[str, ...] | None = None) -> tuple[Any, ...]:
        """Every value (or the bounds) parameter ``name`` can take in trials of ``kinds`` (all
        the space's kinds by default), defaults included."""
        if name in self.params:
            return self.params[name].values()
        values: list[Any] = []
        for kind in kinds or self.kinds:
            spec = self.sections.get(kind, {}).get(name)
            values += spec.values() if spec else [TrainParams.__dataclass_fields__[name].default]
        return tuple(dict.fromkeys(values))

    @property
    def max_image_size(self) -> int:
        return int(max(self.possible("image_size")))

    @property
    def max_epochs(self) -> int:
        """Epochs in a fold of a fine-tune trial, at most: the stride of the pruner's steps. A
        head-only trial reports each fold once, at the step its fold's last epoch would be."""
        if "finetune" not in self.kinds:
            return 1
        return int(max(self.possible("epochs", kinds=("finetune",))))

    @property
    def backbones(self) -> tuple[str, ...]:
        return tuple(self.possible("backbone"))

    @property
    def may_use_pretrained(self) -> bool:
        return any(bool(v) for v in self.possible("pretrained"))

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        kwargs = {k: v for k, v in self.sampler.items() if k != "name"}
        if self.sampler["name"] == "tpe":
            # constant_liar keeps parallel workers from sampling the same point.
            kwargs.setdefault("multivariate", True)
            kwargs.setdefault("constant_liar", True)
            if self.sections and kwargs["multivariate"]:
                # Params that only some trials have: TPE models each group (multivariate only).
                kwargs.setdefault("group", True)
        return SAMPLERS[self.sampler["name"]](seed=seed, **kwargs)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        kwargs = {k: v for k, v in self.pruner.items() if k != "name"}
        return PRUNERS[self.pruner["name"]](**kwargs)


def resolve_space_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a space shipped with autoclf (``tiny``, …)."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SpaceError(f"search space file not found: {path}")
        return path
    shipped = importlib.resources.files("autoclf.search_spaces") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = ", ".join(shipped_spaces())
        raise SpaceError(
            f"unknown search space {name_or_path!r}: not a file, and not one of: {names}"
        )
    return Path(str(shipped))


def shipped_spaces() -> list[str]:
    root = importlib.resources.files("autoclf.search_spaces")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    path = resolve_space_path(name_or_path)
    return parse_space(path.read_text(encoding="utf-8"), name=path.stem, where=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error: PyYAML would keep
    the last silently, and a searched range above a fixed value would be lost."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def same_search(a: str, b: str) -> bool:
    """Whether two space files define the same search: their comments, layout and
    ``description`` do not change what a trial samples, so a study's space may be reworded."""
    if a == b:
        return True
    try:
        docs = [yaml.safe_load(text) for text in (a, b)]
    except yaml.YAMLError:
        return False
    if not all(isinstance(doc, dict) for doc in docs):
        return False
    first, second = ({k: v for k, v in doc.items() if k != "description"} for doc in docs)
    return first == second


def parse_space(
    text: str, *, name: str = "space", where: str = "<space>", saved: bool = False
) -> SearchSpace:
    """The space that ``text`` defines. A key given twice is refused, but in a study's
    ``saved`` copy: one written before that was refused (3f08b38) was searched as PyYAML
    read it then, the last one kept."""
    try:
        doc = yaml.load(text, Loader=yaml.SafeLoader if saved else _UniqueKeyLoader)
    except yaml.YAMLError as exc:  # its own text names "<unicode string>", not the file
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
        raise SpaceError(
            f"{where}{at}: not valid YAML: {' '.join(p for p in parts if p) or exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise SpaceError(
            f"{where}: expected a mapping with a 'params' key, got {type(doc).__name__}"
        )
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise SpaceError(
                f"{where}: unknown top-level key {key!r}{_did_you_mean(key, TOP_LEVEL_KEYS)}"
            )
    raw_params = doc.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SpaceError(
            f"{where}: 'params' must be a non-empty mapping of parameter → value or spec"
        )
    params = {key: _parse_param(key, raw, where) for key, raw in raw_params.items()}
    sections = {
        kind: _parse_kind_section(kind, doc[kind], params, where) for kind in KINDS if kind in doc
    }
    space = SearchSpace(
        name=name,
        source=text,
        params=params,
        sampler=_parse_section(doc.get("sampler"), SAMPLERS, DEFAULT_SAMPLER, "sampler", where),
        pruner=_parse_section(doc.get("pruner"), PRUNERS, DEFAULT_PRUNER, "pruner", where),
        sections=sections,
    )
    for kind in space.kinds:  # in params, or in the section of every kind of trial
        if "backbone" not in params and "backbone" not in sections.get(kind, {}):
            raise SpaceError(
                f"{where}: params.backbone is required (a timm model name or a list of them)"
            )
    for kind in sections:
        if kind not in space.kinds:
            raise SpaceError(
                f"{where}: a '{kind}:' section, but params.kind is never {kind!r} "
                f"(it is {list(space.kinds)})"
            )
    if "head" in space.kinds:
        _check_head_trials(space, where)
    if True in space.possible("lp_ft") and False in space.possible("pretrained"):
        raise SpaceError(
            f"{where}: lp_ft starts from a head fitted on the pretrained body's features, "
            "so it needs pretrained: true"
        )
    _check_backbones(space, where)
    if "sgd" in space.possible("optimizer") and min(space.possible("momentum")) <= 0:
        raise SpaceError(
            f"{where}: optimizer 'sgd' is SGD with Nesterov momentum, which needs momentum > 0; "
            "raise params.momentum or use optimizer 'momentum' (plain SGD)"
        )
    if "last" in space.possible("keep") and max(space.possible("patience")) > 0:
        raise SpaceError(
            f"{where}: params.patience stops a fold at its best epoch, but params.keep = 'last' "
            "keeps the last one; set patience to 0 or keep to 'best'"
        )
    return space


def _parse_kind_section(
    kind: str, raw: Any, params: dict[str, ParamSpec], where: str
) -> dict[str, ParamSpec]:
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(
            f"{where}: '{kind}:' must be a non-empty mapping of the parameters that apply to "
            f"{kind} trials alone, got {raw!r}"
        )
    for key in raw:
        if key == "kind" or key in params:
            where_else = "is what picks the section" if key == "kind" else "is in params too"
            raise SpaceError(f"{where}: {kind}.{key} {where_else}; give each setting once")
    return {key: _parse_param(key, value, where, section=kind) for key, value in raw.items()}


def _check_head_trials(space: SearchSpace, where: str) -> None:
    """Head-only trials train a linear head on a frozen pretrained body: a setting given to
    them that only a fine-tune can use is a mistake in the space, not something to ignore."""
    shared = space.params.values()
    for spec in [*shared, *space.sections.get("head", {}).values()]:
        if spec.name not in HEAD_PARAMS:
            loc = "params" if spec.section == "params" else spec.section
            move = " move it under 'finetune:'" if "finetune" in space.kinds else ""
            raise SpaceError(
                f"{where}: {loc}.{spec.name} is a fine-tune setting, but head-only trials "
                f"(params.kind: head) train a linear head on frozen features and do not use it;"
                f"{move or ' take it out'}"
            )
    if False in space.possible("pretrained", kinds=("head",)):
        raise SpaceError(
            f"{where}: head-only trials (params.kind: head) need a pretrained body; "
            "set pretrained: true"
        )


# --- parameters -----------------------------------------------------------------------------

Check = Callable[[Any], "str | None"]  # returns what is wrong, or None


def _range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            return f"must be in {left}{lo}, {hi}{right}"
        return None

    return check


def _one_of(options: tuple[str, ...] | Callable[[], list[str]]) -> Check:
    def check(v: Any) -> str | None:
        allowed = options() if callable(options) else options
        if v not in allowed:
            return f"must be one of {list(allowed)}{_did_you_mean(v, allowed)}"
        return None

    return check


def _timm_optimizers() -> list[str]:
    import timm.optim

    return list(timm.optim.list_optimizers())


INF = math.inf
RULES: dict[str, tuple[type, Check | None]] = {
    "backbone": (str, None),  # checked against timm's registry as a whole, below
    "pretrained": (bool, None),
    "optimizer": (str, _one_of(_timm_optimizers)),
    "lr": (float, _range(0, 10, lo_open=True)),
    "weight_decay": (float, _range(0, 10)),
    "momentum": (float, _range(0, 1, hi_open=True)),
    # A batch of one cannot train BatchNorm ("more than 1 value per channel"): every trial
    # would fail.
    "batch_size": (int, _range(2, INF)),
    "dropout": (float, _range(0, 1, hi_open=True)),
    "drop_path": (float, _range(0, 1, hi_open=True)),
    "aug_strength": (float, _range(0, 1)),
    "hflip": (bool, None),
    "scheduler": (str, _one_of(SCHEDULERS)),
    "warmup_epochs": (float, _range(0, INF)),
    "epochs": (int, _range(1, INF)),
    "image_size": (int, _range(8, 4096)),
    "label_smoothing": (float, _range(0, 1, hi_open=True)),
    "grad_clip": (float, _range(0, INF)),
    "patience": (int, _range(0, INF)),
    "keep": (str, _one_of(KEEP)),
    "amp": (bool, None),
    "balance": (str, _one_of(BALANCE)),
    "head_lr_mult": (float, _range(0, 1000, lo_open=True)),
    "freeze_epochs": (int, _range(0, INF)),
    "freeze_bn": (bool, None),
    "kind": (str, _one_of(KINDS)),
    "lp_ft": (bool, None),
}
assert set(RULES) == set(TrainParams.field_names()), "RULES must cover every TrainParams field"


def _parse_param(key: str, raw: Any, where: str, *, section: str = "params") -> ParamSpec:
    if key not in RULES:
        raise SpaceError(f"{where}: unknown parameter {section}.{key}{_did_you_mean(key, RULES)}")
    kind_of_value, check = RULES[key]
    loc = f"{where}: {section}.{key}"

    def value(v: Any, what: str) -> Any:
        v = _coerce(v, kind_of_value, f"{loc}{what}")
        problem = check(v) if check else None
        if problem:
            raise SpaceError(f"{loc}{what} = {v!r} {problem}")
        return v

    if not isinstance(raw, dict):
        if isinstance(raw, list):
            raise SpaceError(
                f"{loc}: a list ({raw!r}) is ambiguous; write {{type: categorical, choices: [...]}}"
            )
        return ParamSpec(key, "fixed", value=value(raw, ""), section=section)
    kind = raw.get("type")
    if kind not in SPEC_KEYS:
        raise SpaceError(f"{loc}.type = {kind!r} must be one of {sorted(SPEC_KEYS)}")
    for spec_key in raw:
        if spec_key not in SPEC_KEYS[kind]:
            raise SpaceError(
                f"{loc}: unknown key {spec_key!r} for a {kind} parameter"
                f"{_did_you_mean(spec_key, SPEC_KEYS[kind])} (allowed: {sorted(SPEC_KEYS[kind])})"
            )
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{loc}.choices must be a non-empty list, got {choices!r}")
        return ParamSpec(
            key,
            kind,
            choices=tuple(value(c, f".choices[{i}]") for i, c in enumerate(choices)),
            section=section,
        )
    if kind_of_value not in (int, float) or (kind == "float" and kind_of_value is int):
        noun = {int: "an int", float: "a float", str: "a string", bool: "a true/false"}[
            kind_of_value
        ]
        raise SpaceError(
            f"{loc}: type {kind} does not fit {noun} parameter; "
            + (
                "use type: int"
                if kind_of_value is int
                else "use a fixed value or type: categorical"
            )
        )
    for required in ("low", "high"):
        if required not in raw:
            raise SpaceError(f"{loc}: a {kind} parameter needs {required!r}")
    number = int if kind == "int" else float
    low = value(_coerce(raw["low"], number, f"{loc}.low"), ".low")
    high = value(_coerce(raw["high"], number, f"{loc}.high"), ".high")
    if low > high:
        raise SpaceError(f"{loc}: low ({low}) > high ({high})")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{loc}.log = {log!r} must be true or false")
    step = raw.get("step")
    if step is not None:
        step = _coerce(step, number, f"{loc}.step")
        if step <= 0:
            raise SpaceError(f"{loc}.step = {step!r} must be > 0")
        if log:
            raise SpaceError(
                f"{loc}: step and log cannot be used together (Optuna does not allow it)"
            )
    if log and low <= 0:
        raise SpaceError(f"{loc}: log scale needs low > 0, got low = {low}")
    return ParamSpec(key, kind, low=low, high=high, step=step, log=log, section=section)


def _coerce(v: Any, kind: type, loc: str) -> Any:
    if kind is bool:
        if not isinstance(v, bool):
            raise SpaceError(f"{loc} = {v!r} must be true or false")
        return v
    if kind is str:
        if not isinstance(v, str):
            raise SpaceError(f"{loc} = {v!r} must be a string")
        return v
    if isinstance(v, str) and kind is float:
        # PyYAML reads 1e-4 (no dot) as a string; accept it as the number it plainly is.
        try:
            return float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpaceError(f"{loc} = {v!r} must be {'an integer' if kind is int else 'a number'}")
    if kind is int:
        if isinstance(v, float) and not v.is_integer():
            raise SpaceError(f"{loc} = {v!r} must be an integer")
        return int(v)
    return float(v)


# --- sampler and pruner ---------------------------------------------------------------------


def _parse_section(
    raw: Any, registry: dict[str, type], default: dict[str, Any], section: str, where: str
) -> dict[str, Any]:
    if raw is None:
        return dict(default)
    if not isinstance(raw, dict) or "name" not in raw:
        raise SpaceError(f"{where}: {section} must be a mapping with a 'name', got {raw!r}")
    name = raw["name"]
    if name not in registry:
        raise SpaceError(
            f"{where}: {section}.name = {name!r} must be one of {sorted(registry)}"
            f"{_did_you_mean(name, registry)}"
        )
    accepted = set(inspect.signature(registry[name].__init__).parameters) - {"self", "seed"}
    for key in raw:
        if key != "name" and key not in accepted:
            raise SpaceError(
                f"{where}: unknown key {section}.{key} for {name}{_did_you_mean(key, accepted)}"
                f" (allowed: {sorted(accepted)})"
            )
    options = {k: v for k, v in raw.items() if k != "name"}
    try:
        registry[name](**options)
    except (TypeError, ValueError) as exc:
        raise SpaceError(f"{where}: {section} {raw!r} is invalid: {exc}") from exc
    return dict(raw)


# --- backbones ------------------------------------------------------------------------------


def _check_backbones(space: SearchSpace, where: str) -> None:
    import timm

    for name in space.backbones:
        if not timm.is_model(name):
            hint = _did_you_mean(name, timm.list_models())
            raise SpaceError(f"{where}: params.backbone = {name!r} is not a timm model{hint}")
        if space.may_use_pretrained and not timm.is_model_pretrained(name):
            raise SpaceError(
                f"{where}: params.backbone = {name!r} has no pretrained weights in timm; "
                "set pretrained: false or choose a pretrained tag (see timm.list_pretrained())"
            )


def _did_you_mean(word: Any, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
