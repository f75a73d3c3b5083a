"""Run configuration: nested dataclasses filled from a YAML file and dotted command-line overrides.

An entry point declares its schema as a dataclass whose fields are sections (dataclasses such as the
shared `OptimConfig` and `TrainConfig` below, mounted as `optim` and `train`) and calls
`load_config(Schema, sys.argv[1:])`:

    python -m pretrain.tlm --config configs/tlm.yaml train.max_steps=200 model.layers=2

Override values are parsed as YAML scalars (or flow lists: `optim.betas=[0.9,0.95]`). Unknown keys,
wrong types and out-of-range values are `ConfigError`s: one line naming the key, where it was set
(file:line or the override) and, for unknown keys, the nearest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import yaml

from data_pipeline.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file or command-line override that does not fit the schema."""


def require(condition: bool, message: str) -> None:
    """Range check for a section's `__post_init__`; the message starts with the field name."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (see pretrain/optim.py)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 1000
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1          # the decay ends at min_lr_ratio * lr
    clip_grad_norm: float = 1.0        # <= 0 disables clipping (the norm is still logged)
    fused: Literal["auto"] | bool = "auto"   # auto: the fused CUDA kernel on GPU

    def __post_init__(self) -> None:
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(all(0 <= b < 1 for b in self.betas), f"betas must lie in [0, 1), got {list(self.betas)}")
        require(self.eps > 0, f"eps must be > 0, got {self.eps}")
        require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: steps, accumulation, cadence of logs/validation/checkpoints, precision, devices."""

    max_steps: int = 10000
    grad_accum_steps: int = 1
    log_every: int = 10
    eval_every: int = 1000             # 0: validate only at the end
    eval_batches: int = 50
    checkpoint_every: int = 1000       # 0: checkpoint only at the end (and on SIGTERM)
    keep_checkpoints: int = 3
    resume: str = "auto"               # auto | none | path of a checkpoint file
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on GPU and AMX CPUs, else fp32
    compile: bool = False
    dist_timeout_s: int = 1800
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 2
    seed: int = 0
    run_dir: str = "runs/default"
    tensorboard: bool = True
    export_formats: tuple[str, ...] = ("npz", "torch")   # written to run_dir/export at the end; () = none
    init_from: str = ""                # an export (model.npz / model.pt / its directory) to start from
    nonfinite_skips: int = 3           # steps with NaN/inf loss or gradients skipped in a row before stopping
    owner_lease_s: float = 120.0       # a run_dir owner silent this long (heartbeat) is taken over

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum_steps", "log_every", "eval_batches", "keep_checkpoints",
                     "dist_timeout_s"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "num_workers", "nonfinite_skips"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        require(bool(self.resume), "resume must be auto, none or a checkpoint path, got ''")
        require(bool(self.run_dir), "run_dir must not be empty")
        require(self.owner_lease_s >= 10, f"owner_lease_s must be >= 10 (seconds), got {self.owner_lease_s}")


def load_config(schema: type[T], argv: Sequence[str], prog: str | None = None,
                description: str | None = None) -> T:
    """Build `schema` from `--config FILE` (optional) and `section.key=value` overrides in `argv`.

    Later sources win: schema defaults, then the YAML file, then the overrides in order.
    `-h`/`--help` prints `description` and every key with its type and default, and exits.
    """
    if "-h" in argv or "--help" in argv:
        print(_usage(schema, prog or Path(sys.argv[0]).name, description))
        raise SystemExit(0)
    config_path, overrides = _split_argv(argv)
    leaves = _leaf_types(schema)
    values: dict[str, tuple[Any, str]] = {}
    if config_path is not None:
        values.update(_read_yaml(Path(config_path), schema, leaves))
    for item in overrides:
        key, value = _parse_override(item, leaves)
        values[key] = (value, f"override {item!r}")
    return _build(schema, values, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (lists instead of tuples), safe for yaml.safe_dump and torch.save."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# -- command line ------------------------------------------------------------------------------------

_ARGV_HINT = "use --config FILE and overrides like train.max_steps=100"


def _split_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(config path or None, overrides in order)."""
    config_path: str | None = None
    overrides: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            config_path = next(args, None)
            if config_path is None:
                raise ConfigError(f"--config needs a file path; {_ARGV_HINT}")
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}; {_ARGV_HINT}")
    return config_path, overrides


def _parse_override(item: str, leaves: dict[str, Any]) -> tuple[str, Any]:
    key, text = item.split("=", 1)
    if key not in leaves:
        inside = [k for k in leaves if k.startswith(key + ".")]
        if inside:
            raise ConfigError(f"override {item!r}: {key!r} is a section; set its keys one by one, "
                              f"e.g. {inside[0]}=VALUE")
        raise ConfigError(f"override {item!r}: unknown key {key!r}{_suggestion(key, leaves)}")
    if not text:  # `data.sample.dir=`: an empty string (YAML would read null)
        return key, ""
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({getattr(err, 'problem', err)})") from None


def _usage(schema: type, prog: str, description: str | None) -> str:
    lines = [f"usage: {prog} [--config FILE.yaml] [section.key=value ...]", ""]
    if description:
        lines += [description, ""]
    lines.append("keys (type = default):")
    defaults = _leaf_defaults(schema)
    for key, tp in _leaf_types(schema).items():
        default = repr(defaults[key]) if key in defaults else "(required)"
        lines.append(f"  {key}: {_type_name(tp)} = {default}")
    return "\n".join(lines)


# -- YAML ----------------------------------------------------------------------------------------------

class _LineDict(dict):
    """A YAML mapping that remembers the line of each key, for error messages."""

    lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose mappings are _LineDicts."""


def _construct_line_dict(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            # YAML would keep the last one silently: a section or key written twice is a mistake.
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} is set twice (first on line {seen[key].start_mark.line + 1}): keep one",
                key_node.start_mark)
        seen[key] = key_node
    mapping = _LineDict(loader.construct_mapping(node, deep=True))
    mapping.lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value
                     if isinstance(key, yaml.ScalarNode)}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_line_dict)


def _read_yaml(path: Path, schema: type, leaves: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Dotted leaf key -> (value, "file:line") for every key set in the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path} ({err.strerror}); pass an existing YAML "
                          "file to --config") from None
    try:
        loader = _LineLoader(text)  # yaml.safe_load's SafeLoader, plus the line of every mapping
        try:
            tree = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    values: dict[str, tuple[Any, str]] = {}
    _collect(tree, schema, "", path, leaves, values)
    return values


def _collect(mapping: dict, cls: type, prefix: str, path: Path, leaves: dict[str, Any],
             out: dict[str, tuple[Any, str]]) -> None:
    fields = _field_types(cls)
    lines = getattr(mapping, "lines", {})
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        where = f"{path}:{lines.get(str(key), '?')}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {dotted!r}{_suggestion(dotted, leaves)}")
        if _is_section(fields[key]):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted!r} is a section and needs a mapping of its keys, "
                                  f"got {value!r}")
            _collect(value, fields[key], f"{dotted}.", path, leaves, out)
        else:
            out[dotted] = (value, where)


# -- schema walking and type checking ----------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted key of the schema and its type, in declaration order."""
    out: dict[str, Any] = {}
    for name, tp in _field_types(cls).items():
        if _is_section(tp):
            out.update(_leaf_types(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def _leaf_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    field_types = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = field_types[f.name]
        if _is_section(tp):
            out.update(_leaf_defaults(tp, f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING:
            out[f"{prefix}{f.name}"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f"{prefix}{f.name}"] = f.default_factory()
    return out


def _suggestion(key: str, leaves: dict[str, Any]) -> str:
    """The key meant: the same name in another section (`train.lr` -> `optim.lr`), else the nearest
    key or section by spelling."""
    name = key.rsplit(".", 1)[-1]
    elsewhere = [leaf for leaf in leaves if leaf.rsplit(".", 1)[-1] == name]
    if elsewhere:
        return f"; did you mean {' or '.join(repr(leaf) for leaf in elsewhere)}?"
    sections = {k.rsplit(".", 1)[0] for k in leaves if "." in k}
    candidates = [*leaves, *sections] if "." not in key else list(leaves)
    nearest = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    return f"; did you mean {nearest[0]!r}?" if nearest else ""


def _build(cls: type[T], values: dict[str, tuple[Any, str]], prefix: str) -> T:
    kwargs: dict[str, Any] = {}
    field_types = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = field_types[f.name]
        dotted = f"{prefix}{f.name}"
        if _is_section(tp):
            kwargs[f.name] = _build(tp, values, f"{dotted}.")
        elif dotted in values:
            value, where = values[dotted]
            try:
                kwargs[f.name] = _coerce(value, tp)
            except _Mismatch:
                raise ConfigError(f"{where}: {dotted} must be {_type_name(tp)}, got {value!r}") from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {dotted!r}; set it in the --config file or as "
                              f"{dotted}=VALUE")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


class _Mismatch(Exception):
    """A value does not fit a type (turned into a ConfigError by _build, which knows the key)."""


def _coerce(value: Any, tp: Any) -> Any:
    """`value` checked against (and, for numbers and sequences, converted to) type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        return _to_float(value)
    if origin in (tuple, list):
        return _coerce_sequence(value, origin, args)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    raise TypeError(f"config type {tp!r} is not supported")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise _Mismatch from None
    raise _Mismatch


def _coerce_sequence(value: Any, origin: type, args: tuple) -> Any:
    variadic = len(args) == 2 and args[1] is Ellipsis
    if (origin is list or variadic) and value is not None and not isinstance(value, (list, tuple, dict)):
        value = [value]  # `data.train=/path` means a one-element list
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    if origin is list:
        return [_coerce(item, args[0]) for item in value]
    if variadic:
        return tuple(_coerce(item, args[0]) for item in value)
    if len(value) != len(args):
        raise _Mismatch
    return tuple(_coerce(item, arg) for item, arg in zip(value, args))


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in args)
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and origin is None:
        return {"bool": "true or false", "int": "an integer", "float": "a number",
                "str": "a string"}.get(tp.__name__, tp.__name__)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    return f"a {str(tp).replace('typing.', '')}"
