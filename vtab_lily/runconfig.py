"""The runner's command line and resolved config (``python -m vtab_lily.run``), without I/O.

:func:`check_args` parses one run's arguments, fills in the official defaults of the backbone
family (``vtab_lily.official``) and refuses every bad name or number (non-finite, negative,
out of range) with a ``UserError`` before anything is built or written. The sweep calls it to
validate a grid point without running it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from typing import Any

from . import options
from .build import checkpoint_has_pre_logits, resolve_checkpoint
from .data.pretext import WEIGHTS_FILE
from .errors import UserError, suggest, unknown_name
from .official import DEMO, RECIPES, demo_adapter_options, demo_local, official_recipe
from .tasks import PROTOCOLS, get_task

# Adapter settings with a flag of their own (declared in ``options``); any other field: --adapter-opt.
ADAPTER_FLAGS = tuple(n for n in options.names("adapter") if n not in ("peft_config", "adapter_opt"))
# The flags that take the word ``paper`` (a per-task table's value): their reader says so.
PAPER_FLAGS = tuple(f.name for f in options.declarations() if getattr(f.metadata["read"], "takes_paper", False))
_is_paper_word = options.is_paper_word
build_parser = options.build_parser


def adapter_names() -> list[str]:
    from .adapters import ADAPTERS

    return list(ADAPTERS)


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse, with its errors as UserError (one line, exit 2) instead of usage + SystemExit."""
    parser = build_parser()

    def error(message: str) -> typing.NoReturn:
        raise UserError(f"{message} (python -m vtab_lily.run --help lists the options)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


# --- --adapter-opt KEY=VALUE, coerced by the adapter dataclass field's type -----------------
def _coerce(text: str, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        for kind in inner[:-1]:  # several kinds: the first that reads the text (``int | str``: see
            try:                 # adapter_option_value, which reads those before this)
                return _coerce(text, kind, where)
            except UserError:
                pass
        return _coerce(text, inner[-1], where)
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint in (int, float, str):
            return hint(text)
        if origin is tuple or hint is tuple:
            items = tuple(t.strip() for t in text.split(",") if t.strip())
            if not items:  # an empty list is never the default in disguise
                raise UserError(f"--adapter-opt {where}: {text!r} is an empty list; name at least one item "
                                f"(comma-separated) or leave {where} out for the adapter's default")
            return items
        if origin is dict or hint is dict:
            value = _coerce_dict(text, args[1] if len(args) == 2 else Any, where)
            if not value:
                raise UserError(f"--adapter-opt {where}: {text!r} sets nothing; give KEY=VALUE items (or a JSON "
                                f"object) or leave {where} out for the adapter's default")
            return value
    except (ValueError, TypeError) as err:
        kind = getattr(hint, "__name__", hint)
        raise UserError(f"--adapter-opt {where}: cannot read {text!r} as {kind} ({err})") from None
    return text


def _coerce_dict(text: str, value_hint: Any, where: str) -> dict:
    if text.strip().startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    out: dict = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        *outer, last = key.strip().split(".")
        node, hint = out, value_hint
        for part in outer:  # t.rank=4 -> {"t": {"rank": 4}}
            node = node.setdefault(part, {})
            hint = typing.get_args(hint)[1] if len(typing.get_args(hint)) == 2 else Any
        node[last] = _coerce(value.strip(), hint, where) if hint is not Any else _number(value.strip())
    return out


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def adapter_options(args: argparse.Namespace | options.RunOptions, adapter: str) -> dict:
    """The adapter settings given (flags and ``--adapter-opt``), each read as its field's type."""
    from .adapters import ADAPTERS

    given = {k: getattr(args, k) for k in ADAPTER_FLAGS if getattr(args, k) is not None}
    if args.peft_config is not None:
        if adapter != "peft":
            raise UserError(f"--peft-config goes with --adapter peft, not --adapter {adapter}")
        given["config"] = args.peft_config
    cls = ADAPTERS[adapter]
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    hints = {f.name: hints[f.name] for f in dataclasses.fields(cls)} if hints else {}  # not ClassVars
    for key, value in given.items():
        if key in PAPER_FLAGS and _is_paper_word(value):  # --rank paper, --scale paper (never --placement paper)
            given[key] = paper_option(adapter, key, f"--{key.replace('_', '-')} paper")
    for item in args.adapter_opt:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--adapter-opt {item!r}: expected KEY=VALUE")
        if key not in hints:
            from .errors import suggest

            raise UserError(f"--adapter-opt {key}: adapter {adapter!r} has no option {key!r}{suggest(key, hints)}; "
                            f"options: {', '.join(hints) or 'none'}")
        if key in given:
            raise UserError(f"--adapter-opt {key}: {key} is given twice (flag or --adapter-opt); give it once")
        given[key] = adapter_option_value(adapter, key, value, hints[key])
    return given


def adapter_option_value(adapter: str, key: str, text: str, hint: Any) -> Any:
    """``--adapter-opt KEY=TEXT`` read as adapter ``adapter``'s field ``key`` (typed ``hint``):
    ``paper`` (any case) where the adapter has a per-task table for ``key``, else coerced to the type."""
    if _is_paper_word(text) and hint is not str:  # a text field's "paper" is a value of its own
        return paper_option(adapter, key, f"--adapter-opt {key}=paper")
    union = typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None))
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if union else []
    if str in kinds and len(kinds) > 1:  # ``int | str``: the text is there for ``paper`` only
        numbers = [a for a in kinds if a is not str]
        try:
            return _coerce(text, numbers[0] if len(numbers) == 1 else typing.Union[tuple(numbers)], key)
        except UserError as err:
            raise UserError(f"{err}; or paper (the published per-task value)") from None
    return _coerce(text, hint, key)


def paper_option(adapter: str, key: str, where: str) -> str:
    """``paper`` for a field of ``adapter`` with a published per-task table; else a UserError
    (``where``: how the user spelled it) naming the adapters and fields that have one."""
    from .adapters import ADAPTERS
    from .adapters.pertask import PAPER, paper_fields

    if key in paper_fields(ADAPTERS[adapter]):
        return PAPER
    tables = [f"{name} {'/'.join(paper_fields(cls))}" for name, cls in ADAPTERS.items() if paper_fields(cls)]
    raise UserError(f"{where}: adapter {adapter!r} has no published per-task {key}; give a number "
                    f"(per-task tables: {', '.join(tables)})")


# --- checks on numbers ------------------------------------------------------------------------
ADAPTER_INT_LIMIT = options.SIZE  # ranks, lengths, expert counts (and PEFT config sizes: adapters.checks)


def _finite_numbers(value: Any, where: str) -> None:
    """Every float inside an adapter option (nested too) is finite and not negative."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{where} must be a finite number >= 0, got {value}")
        if isinstance(value, int) and value > ADAPTER_INT_LIMIT:  # sizes: a typo, or an int64 overflow
            raise UserError(f"{where} must be <= {ADAPTER_INT_LIMIT:,}, got {value:,}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _finite_numbers(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _finite_numbers(item, where)


def check_numbers(config: dict, warmup_given: bool = True) -> None:
    """The declared bounds of every run option, then the adapter settings' (see :func:`check_adapter_numbers`)."""
    options.check_bounds(config)
    if config["warmup"] > config["epochs"]:
        if warmup_given:
            raise UserError(f"--warmup {config['warmup']} is longer than --epochs {config['epochs']}")
        # the family's default warmup with a short --epochs (quick tries, the sweep's tests): allowed, said
        print(f"warning: the default warmup of {config['warmup']} epochs is longer than --epochs {config['epochs']}: "
              "the lr never reaches --lr (pass --warmup)", file=sys.stderr)
    check_adapter_numbers(config["adapter_options"])


def check_adapter_numbers(given: dict) -> None:
    """Every number in the adapter settings given (flags and --adapter-opt, nested too) is finite and
    >= 0, sizes at most ADAPTER_INT_LIMIT, and within the bounds of the shared flag (``--dropout``);
    the bounds an adapter's own fields declare are checked when its config is made
    (``adapters.make_config``, for the CLI, the API and the sweep alike)."""
    flags = {f.name: f.metadata for f in options.declarations() if f.metadata["role"] == "adapter"}
    for key, value in given.items():
        where = f"--{key.replace('_', '-')}" if key in ADAPTER_FLAGS else f"--adapter-opt {key}"  # as given
        _finite_numbers(value, where)
        problem = options.bound_problem(value, flags.get(key, {}))
        if problem:
            raise UserError(f"{where} {problem}")


def official_pre_logits(config: dict) -> bool:
    """What the official code does with these weights: keep the checkpoint's pre_logits layer
    when it has one (ViT only; a missing file is assumed to be the published one)."""
    from .backbones import backbone_family
    from .official import PRE_LOGITS_PUBLISHED

    weights = resolve_checkpoint(config, must_exist=False)
    if backbone_family(config["backbone"]) != "vit" or weights is None or weights.name == WEIGHTS_FILE:
        return False  # the demo's pre-trained tiny ViT has none (and may not be made yet, or be made again)
    has = checkpoint_has_pre_logits(weights)
    return PRE_LOGITS_PUBLISHED.get(config["backbone"], False) if has is None else has


def resolve_pre_logits(config: dict, asked: bool | None) -> bool:
    """``--pre-logits/--no-pre-logits`` (None: the official choice) against the weights."""
    official = official_pre_logits(config)
    if asked and not official:
        weights = resolve_checkpoint(config, must_exist=False)
        what = f"{weights} has" if weights else "random init (--checkpoint none) has"
        raise UserError(f"--pre-logits: {what} no pre_logits layer to keep for {config['backbone']}")
    return official if asked is None else bool(asked)


def official_normalize(backbone: str) -> bool | str:
    """The recorded ``normalize`` of ``backbone``'s recipe (False: none; True: ImageNet's; a name)."""
    from .backbones import get_spec

    return options.norm_value(get_spec(backbone).recipe_norm)


def check_input(config: dict, spec: Any) -> None:
    """``--normalize`` names a known mean/std set, and ``--img-size`` is a whole number of patches."""
    from .backbones import NORMS

    name = options.norm_name(config["normalize"])
    if name != options.NO_NORM and name not in NORMS:
        raise UserError(f"--normalize {name!r}: unknown normalisation{suggest(name, [options.NO_NORM, *NORMS])}; "
                        f"choose from: {', '.join([options.NO_NORM, *NORMS])}")
    size, patch = config["img_size"], spec.patch_size
    if size % patch:
        below, above = size - size % patch, size - size % patch + patch
        raise UserError(f"--img-size {size} is not a multiple of {spec.name}'s patch size {patch} (e.g. "
                        f"{' or '.join(str(n) for n in (below, above) if n > 0)})")


VTAB_ROOT = "data/vtab-1k"  # the suite root when --data-root is not given (demo: DEMO["data_root"])


def resolve_config(args: argparse.Namespace | options.RunOptions) -> dict:
    """Every option after defaults, with the task optional (``--list-tasks``). No I/O.

    The recipe and setup options (``options`` roles) take the family's official value when unset,
    the local ones the demo's or their own default; the rest are named here one by one because
    each becomes something else (``--demo``: the suite, ``--paper``: the reported number)."""
    from .backbones import backbone_family, get_spec, resolve_backbone_name
    from .precision import resolve_precision

    opts = args if isinstance(args, options.RunOptions) else options.RunOptions(**vars(args))
    backbone = resolve_backbone_name(opts.backbone, demo=opts.demo)  # vit / vim short names
    if opts.adapter not in adapter_names():
        raise unknown_name("adapter", opts.adapter, adapter_names())
    suite_name = "demo" if opts.demo else "vtab"
    if opts.task is not None and not opts.task.strip():
        raise UserError(f"--task {opts.task!r} names no task (python -m vtab_lily.tasks lists them)")
    task = get_task(opts.task, suite_name) if opts.task else None
    family = backbone_family(backbone)
    recipe = official_recipe(family, demo=opts.demo, adapter=opts.adapter)
    recipe["normalize"] = official_normalize(backbone)  # per backbone: its recipe's input normalisation
    local = {"data_root": VTAB_ROOT, **(demo_local(backbone) if opts.demo else {})}
    train_split, eval_split = PROTOCOLS[opts.protocol]
    if opts.method_name is not None and (not opts.method_name.strip()
                                         or any(ord(c) < 32 or ord(c) == 127 for c in opts.method_name)):
        raise UserError(f"--method-name {opts.method_name!r}: a label needs visible text and no control "
                        "characters (newlines, tabs)")
    if opts.paper and opts.protocol != "test":
        raise UserError("--paper reports the best test accuracy: it needs --protocol test")

    def pick(name: str, default: Any) -> Any:
        value = getattr(opts, name)
        return default if value is None else value

    given = adapter_options(opts, opts.adapter)
    if opts.demo:  # the demo's adapter settings, where the user gave none
        given = {**demo_adapter_options(family, opts.adapter), **given}
    config = {
        "backbone": backbone, "adapter": opts.adapter, "adapter_options": given,
        "method_name": opts.method_name, "task": task.name if task else None, "suite": suite_name,
        "num_classes": task.num_classes if task else None,
        "protocol": opts.protocol, "train_split": train_split, "eval_split": eval_split, "seed": opts.seed,
        **{name: pick(name, recipe.get(name)) for name in options.names("recipe", "setup")},
        # the device's official precision by default (fp32 on a CPU)
        "precision": resolve_precision(opts.precision, family, opts.device),
        "eval_batch_auto": opts.eval_batch_size is None,
        "report": "test-selected" if opts.paper else "final",
        **{name: pick(name, local.get(name)) for name in options.names("local")},  # not hashed
    }
    config = unsigned_zero(config)  # -0.0 is 0: one run folder, one label (never "s=-0")
    check_numbers(config, warmup_given=opts.warmup is not None)
    check_input(config, get_spec(backbone))
    config["pre_logits"] = resolve_pre_logits(config, opts.pre_logits)  # against the weights, before hashing
    return config


def unsigned_zero(value: Any) -> Any:
    """``value`` with every float -0.0 (flags, --adapter-opt, nested) as 0.0 (the sweep reads grid
    values through it too)."""
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, dict):
        return {k: unsigned_zero(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(unsigned_zero(v) for v in value)
    return value


def checked_config(opts: options.RunOptions) -> dict:
    """The config of ``opts`` after defaults and every check, before the model names the adapter's
    settings (``runspec.identify``); ``--list-tasks`` needs no task. The adapter's option names and
    declared bounds are checked by making its config."""
    from .adapters import make_config

    config = resolve_config(opts)
    make_config(config["adapter"], **dict(config["adapter_options"]))
    return config


def check_args(argv: list[str]) -> dict:
    """Validate one run's arguments without running or writing anything; returns the config.
    UserError (exit 2) names the bad argument (the sweep calls it on each grid point)."""
    return checked_config(options.RunOptions(**vars(parse(argv))))


__all__ = ["RECIPES", "DEMO", "build_parser", "check_args", "checked_config", "parse", "resolve_config"]
