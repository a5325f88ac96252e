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
from pathlib import Path
from typing import Any

from .errors import UserError, unknown_name
from .fetch.preflight import checkpoint_path, missing_message, missing_pieces
from .official import COMPILE_MODES, DEMO, MIN_LR, PRECISIONS, RECIPES, WARMUP_LR, demo_adapter_options, official_recipe
from .tasks import PROTOCOLS, get_task

# Adapter options with their own flag; any other dataclass field goes through --adapter-opt.
ADAPTER_FLAGS = ("rank", "ne", "ne_a", "ne_b", "scale", "targets", "router", "routing", "alpha", "variant",
                 "placement", "dropout")
SEED_LIMIT = 2**32  # numpy's seed range


def adapter_names() -> list[str]:
    from .adapters import ADAPTERS

    return list(ADAPTERS)


def _targets_flag(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:  # never the adapter's default in disguise: leave the flag out for that
        raise argparse.ArgumentTypeError(f"{text!r} names no target; give at least one (e.g. k,v,mlp) or leave "
                                         "--targets out for the adapter's default targets")
    return targets


def _compile_flag(text: str) -> bool | str:
    """``--compile MODE``: the default mode is recorded as ``true`` (as plain ``--compile``)."""
    mode = text.strip().lower()
    if mode not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(f"unknown compile mode {text!r}: choose one of {', '.join(COMPILE_MODES)}")
    return True if mode == "default" else mode


def _number_or_paper(kind: type) -> Any:
    """A flag's type that also takes the word ``paper`` (the published per-task value; which
    adapters have one is checked in :func:`adapter_options`)."""
    def convert(text: str) -> Any:
        return "paper" if _is_paper_word(text) else kind(text)

    convert.__name__ = kind.__name__  # argparse: "invalid int value: 'x'"
    return convert


def _is_paper_word(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "paper"  # adapters.pertask.PAPER


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vtab_lily.run", allow_abbrev=False,
                                description="One fine-tuning run (see the module docstring of vtab_lily.run).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="vit", help="backbone name, or the short names vit (vit-b16-in21k; "
                   "demo: vit-tiny-test) and vim (vim-s; demo: vim-tiny-test)")
    p.add_argument("--adapter", default="lily", help="lily, lora, adaptformer, linear (head only), full, ...")
    p.add_argument("--task", help="task folder name (python -m vtab_lily.tasks lists them)")
    a = p.add_argument_group("adapter options (unset ones take the adapter's official defaults)")
    a.add_argument("--rank", type=_number_or_paper(int))
    a.add_argument("--ne", type=int, help="Lily: A groups and B experts")
    a.add_argument("--ne-a", type=int, help="Lily: number of A groups")
    a.add_argument("--ne-b", type=int, help="Lily: number of B experts")
    a.add_argument("--scale", type=_number_or_paper(float),
                   help="a number, or paper: the published per-task value (vpt-deep, fact-tt/tk, repadapter)")
    a.add_argument("--targets", type=_targets_flag, help="comma-separated targets, e.g. k,v,mlp")
    a.add_argument("--router", help="Lily: per_site | single | none")
    a.add_argument("--routing", help="Lily: batch (official ViT) | token (official Vim) | sample | eq2")
    a.add_argument("--alpha", type=float, help="LoRA alpha")
    a.add_argument("--variant", help="LoRA: noah (official 74.5 row) | lily | custom; Lily on Vim: l (official) | s "
                   "(the paper's Lily-S) | custom")
    a.add_argument("--placement", help="AdaptFormer: official (pre-norm x, outside drop_path) | paper")
    a.add_argument("--dropout", type=float, help="adapter dropout (Lily, LoRA, AdaptFormer)")
    a.add_argument("--peft-config", metavar="FILE.json", help="--adapter peft: an HF PEFT config (LoRA, LoHa, LoKr, "
                   "OFT, VeRA, IA3, ...; its contents are part of the run's identity)")
    a.add_argument("--adapter-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other adapter config field, coerced to the field's type (repeatable; tuples "
                   "a,b; dicts a=1;b=2 or JSON; nested dicts t.key=1)")
    r = p.add_argument_group("recipe (unset: the official setup of the backbone family)")
    r.add_argument("--epochs", type=int, default=None,
                   help="default 100 (demo: %d, or the method's own demo setting)" % DEMO["epochs"])
    r.add_argument("--batch-size", type=int, default=None, help="micro-batch size, default 64")
    r.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    r.add_argument("--lr", type=float,
                   help="ViT 1e-3, Vim 1.25e-3 (demo: %g, or the method's own demo setting)" % DEMO["lr"])
    r.add_argument("--wd", type=float, help="ViT 1e-4, Vim 1e-3")
    r.add_argument("--warmup", type=int, help="warmup epochs: ViT 10, Vim 5")
    r.add_argument("--drop-path", type=float, help="ViT 0.1, Vim 0.05")
    r.add_argument("--lr-schedule", choices=("official", "aligned"), default="official",
                   help="official: the lr steps after each epoch (epoch e runs at f(e-1)); aligned: at f(e)")
    r.add_argument("--no-drop-last", dest="drop_last", action="store_false",
                   help="keep the last, smaller batch of each epoch (official: dropped)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=False,
                   help="ImageNet mean/std normalisation of the inputs (official: none, inputs in [0, 1])")
    r.add_argument("--pre-logits", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the checkpoint's frozen pre_logits Linear+tanh (default: when it has one)")
    r.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: what the official code ran in on this device (CPU: fp32; a CUDA GPU with TF32: "
                   "tf32 for ViT, tf32-conv for Vim); fp32: full fp32 matmuls and convolutions; bf16: autocast "
                   "(see docs/gpu.md)")
    r.add_argument("--compile", nargs="?", const=True, default=False, type=_compile_flag, metavar="MODE",
                   help="torch.compile the model (train and eval); MODE: default, or reduce-overhead / "
                        "max-autotune (CUDA graphs on a GPU); see docs/gpu.md")
    r.add_argument("--img-size", type=int, help="default 224 (demo: 32)")
    r.add_argument("--protocol", choices=sorted(PROTOCOLS), default="test",
                   help="test: train800val200 -> test; val: train800 -> val200")
    r.add_argument("--eval-every", type=int, default=None, help="epochs between evaluations, default 10")
    r.add_argument("--eval-batch-size", type=int, help="evaluation batch (official 256; unset: the loop may "
                   "use larger ones on a GPU where the routing allows)")
    r.add_argument("--eval-limit", type=int, help="intermediate evaluations use only the first N eval images "
                   "(the final one is always full; changes the test-selected number)")
    w = p.add_argument_group("where and how")
    w.add_argument("--data-root", help="suite root, default data/vtab-1k (demo: data/vtab-demo)")
    w.add_argument("--checkpoint", help="backbone weights file; default: the backbone's file under backbones/ "
                   "(see backbones/README.md); 'none' for random init (demo and tests)")
    w.add_argument("--out", default="runs", help="runs folder")
    w.add_argument("--method-name", help="label of the method in result.json and the leaderboard (default: "
                   "the adapter settings then the differences from the official setup); part of the run's identity")
    w.add_argument("--paper", action="store_true", help="report the paper's number (best test accuracy over the "
                   "evaluations, 'test-selected') beside the final one")
    w.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    w.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; demo: 1)")
    w.add_argument("--demo", action="store_true", help="demo suite (generated on demand), tiny backbone, "
                   "32 px, short schedule, Lily on ViT at s=0.1 (docs/demo.md)")
    w.add_argument("--dry-run", action="store_true", help="print the resolved setup, its differences from the "
                   "official one and the parameter counts (no weights or data needed)")
    w.add_argument("--check", action="store_true", help="only validate the options (exit 0 or 2)")
    w.add_argument("--force", action="store_true", help="redo a finished or failed run from scratch")
    w.add_argument("--allow-stale-data", action="store_true",
                   help="train even when the task's list files or images differ from its manifest.json; the "
                        "result records the fingerprint of the data as read, marked stale (default: refuse)")
    w.add_argument("--fetch", action="store_true", help="download missing backbone weights and VTAB-1K first "
                   "(python -m vtab_lily.fetch); without it a missing piece stops the run(s) before any work")
    w.add_argument("--preflight", action="store_true", help="only check that the weights and data of the run(s) are "
                   "there (with --fetch: fetch them); exit 0, or 2 naming every missing piece")
    w.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    w.add_argument("--list-tasks", action="store_true", help="check the other arguments, print the task names")
    w.add_argument("--batch", metavar="FILE", help="run many: FILE has one JSON list of arguments per line")
    w.add_argument("--debug", action="store_true", help="full tracebacks")
    return p


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


def adapter_options(args: argparse.Namespace, adapter: str) -> dict:
    from .adapters import ADAPTERS

    options = {k: getattr(args, k) for k in ADAPTER_FLAGS if getattr(args, k) is not None}
    if args.peft_config is not None:
        if adapter != "peft":
            raise UserError(f"--peft-config goes with --adapter peft, not --adapter {adapter}")
        options["config"] = args.peft_config
    cls = ADAPTERS[adapter]
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    hints = {f.name: hints[f.name] for f in dataclasses.fields(cls)} if hints else {}  # not ClassVars
    for key, value in options.items():
        # --rank paper, --scale paper; a text field's word is its own (AdaptFormer's --placement paper)
        if _is_paper_word(value) and hints.get(key) is not str:
            options[key] = paper_option(adapter, key, f"--{key.replace('_', '-')} paper")
    for item in args.adapter_opt:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--adapter-opt {item!r}: expected KEY=VALUE")
        if key not in hints:
            from .errors import suggest

            raise UserError(f"--adapter-opt {key}: adapter {adapter!r} has no option {key!r}{suggest(key, hints)}; "
                            f"options: {', '.join(hints) or 'none'}")
        if key in options:
            raise UserError(f"--adapter-opt {key}: {key} is given twice (flag or --adapter-opt); give it once")
        options[key] = adapter_option_value(adapter, key, value, hints[key])
    return options


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
def _at_least(name: str, value: Any, minimum: float) -> None:
    if value is None or not math.isfinite(value) or value < minimum:
        raise UserError(f"--{name.replace('_', '-')} must be >= {minimum:g}, got {value}")


def _finite_numbers(value: Any, where: str) -> None:
    """Every float inside an adapter option (nested too) is finite and not negative."""
    from .adapters.checks import ADAPTER_INT_LIMIT  # shared with PEFT config files (adapters import torch)

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


# Upper bounds far beyond any real use: a typo (an extra digit run) fails here, not hours later.
UPPER = {"epochs": 100_000, "batch_size": 1_000_000, "accum_steps": 100_000, "img_size": 4096,
         "eval_every": 100_000, "eval_batch_size": 1_000_000, "threads": 4096, "eval_limit": 10**9}


def check_numbers(config: dict, warmup_given: bool = True) -> None:
    for key in ("epochs", "batch_size", "accum_steps", "img_size", "eval_every", "eval_batch_size"):
        _at_least(key, config[key], 1)
    for key, limit in UPPER.items():
        if config[key] is not None and config[key] > limit:
            raise UserError(f"--{key.replace('_', '-')} must be <= {limit:,}, got {config[key]:,}")
    for key in ("threads", "eval_limit"):
        if config[key] is not None:
            _at_least(key, config[key], 1)
    if not 0 <= config["seed"] < SEED_LIMIT:
        raise UserError(f"--seed must be in [0, 2**32), got {config['seed']}")
    if not (math.isfinite(config["lr"]) and config["lr"] > 0):
        raise UserError(f"--lr must be a finite number > 0, got {config['lr']}")
    _at_least("wd", config["wd"], 0)
    _at_least("warmup", config["warmup"], 0)
    if config["warmup"] > config["epochs"]:
        if warmup_given:
            raise UserError(f"--warmup {config['warmup']} is longer than --epochs {config['epochs']}")
        # the family's default warmup with a short --epochs (quick tries, the sweep's tests): allowed, said
        print(f"warning: the default warmup of {config['warmup']} epochs is longer than --epochs {config['epochs']}: "
              "the lr never reaches --lr (pass --warmup)", file=sys.stderr)
    _at_least("drop_path", config["drop_path"], 0)
    if config["drop_path"] >= 1:
        raise UserError(f"--drop-path must be below 1, got {config['drop_path']}")
    for key, value in config["adapter_options"].items():
        # named as given: --rank (a flag), --adapter-opt states (no flag of its own)
        _finite_numbers(value, f"--{key.replace('_', '-')}" if key in ADAPTER_FLAGS else f"--adapter-opt {key}")
    if config["adapter_options"].get("dropout", 0) >= 1:
        raise UserError(f"--dropout must be below 1, got {config['adapter_options']['dropout']}")


# --- weights (only their index is read here) --------------------------------------------------
def resolve_checkpoint(config: dict, must_exist: bool = True) -> Path | None:
    """The backbone weights file (None: random init); UserError when it is missing and needed,
    naming the command that fetches it (``vtab_lily.fetch``) and the way by hand."""
    path, _ = checkpoint_path(config["backbone"], config["checkpoint"])
    if must_exist and path is not None and not path.is_file():
        raise UserError(missing_message(missing_pieces([{**config, "task": None}])))
    return path


def checkpoint_has_pre_logits(path: Path) -> bool | None:
    """Whether a weights file holds a pre_logits layer (None: cannot tell without it). Reads
    only the file's index (npz directory, safetensors header, memory-mapped torch file)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as npz:
                keys = list(npz.files)
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
        else:
            import torch

            try:  # memory-mapped: reads the index only
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) torch file cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else {}
            keys = list(state) if isinstance(state, dict) else []
    except Exception as err:  # noqa: BLE001 - the real load reports the file's problem in detail
        raise UserError(f"backbone checkpoint {path} is unreadable: {err.__class__.__name__}: {err}") from None
    return any("pre_logits" in key for key in keys)


def official_pre_logits(config: dict) -> bool:
    """What the official code does with these weights: keep the checkpoint's pre_logits layer
    when it has one (ViT only; a missing file is assumed to be the published one)."""
    from .backbones import backbone_family
    from .official import PRE_LOGITS_PUBLISHED

    weights = resolve_checkpoint(config, must_exist=False)
    if backbone_family(config["backbone"]) != "vit" or weights is None:
        return False
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


def resolve_config(args: argparse.Namespace) -> dict:
    """Every option after defaults, with the task optional (``--list-tasks``). No I/O."""
    from .backbones import backbone_family, resolve_backbone_name
    from .precision import resolve_precision

    backbone = resolve_backbone_name(args.backbone, demo=args.demo)  # vit / vim short names
    if args.adapter not in adapter_names():
        raise unknown_name("adapter", args.adapter, adapter_names())
    suite_name = "demo" if args.demo else "vtab"
    if args.task is not None and not args.task.strip():
        raise UserError(f"--task {args.task!r} names no task (python -m vtab_lily.tasks lists them)")
    task = get_task(args.task, suite_name) if args.task else None
    family = backbone_family(backbone)
    recipe = official_recipe(family, demo=args.demo, adapter=args.adapter)
    local = DEMO if args.demo else {}
    pick = lambda key, default: default if getattr(args, key) is None else getattr(args, key)  # noqa: E731
    train_split, eval_split = PROTOCOLS[args.protocol]
    if args.method_name is not None and (not args.method_name.strip()
                                         or any(ord(c) < 32 or ord(c) == 127 for c in args.method_name)):
        raise UserError(f"--method-name {args.method_name!r}: a label needs visible text and no control "
                        "characters (newlines, tabs)")
    if args.paper and args.protocol != "test":
        raise UserError("--paper reports the best test accuracy: it needs --protocol test")
    options = adapter_options(args, args.adapter)
    if args.demo:  # the demo's adapter settings, where the user gave none
        options = {**demo_adapter_options(family, args.adapter), **options}
    config = {
        "backbone": backbone, "adapter": args.adapter, "adapter_options": options,
        "method_name": args.method_name, "task": task.name if task else None, "suite": suite_name,
        "num_classes": task.num_classes if task else None,
        "protocol": args.protocol, "train_split": train_split, "eval_split": eval_split,
        "epochs": pick("epochs", recipe["epochs"]), "batch_size": pick("batch_size", recipe["batch_size"]),
        "accum_steps": args.accum_steps, "lr": pick("lr", recipe["lr"]), "wd": pick("wd", recipe["wd"]),
        "warmup": pick("warmup", recipe["warmup"]), "warmup_lr": WARMUP_LR, "min_lr": MIN_LR,
        "drop_path": pick("drop_path", recipe["drop_path"]), "seed": args.seed, "normalize": args.normalize,
        "img_size": pick("img_size", recipe["img_size"]), "eval_every": pick("eval_every", recipe["eval_every"]),
        "lr_schedule": args.lr_schedule, "drop_last": args.drop_last,
        "precision": resolve_precision(args.precision, family, args.device),  # the device's official one by default
        "eval_batch_size": pick("eval_batch_size", recipe["eval_batch_size"]),
        "eval_batch_auto": args.eval_batch_size is None, "eval_limit": args.eval_limit, "compile": args.compile,
        "pre_logits": args.pre_logits,  # resolved against the checkpoint below, before hashing
        "report": "test-selected" if args.paper else "final",
        # machine-local (not hashed): where things are and where it runs
        "data_root": pick("data_root", local.get("data_root", "data/vtab-1k")), "out": args.out,
        "device": args.device, "threads": pick("threads", local.get("threads")),
        "checkpoint": pick("checkpoint", local.get("checkpoint")), "tensorboard": args.tensorboard,
    }
    config = unsigned_zero(config)  # -0.0 is 0: one run folder, one label (never "s=-0")
    check_numbers(config, warmup_given=args.warmup is not None)
    config["pre_logits"] = resolve_pre_logits(config, args.pre_logits)
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


def check_args(argv: list[str]) -> dict:
    """Validate one run's arguments without running or writing anything; returns the config
    (``pre_logits`` and ``adapter_config`` are resolved later, against the model). UserError
    (exit 2) names the bad argument. The adapter option names are checked too."""
    from .adapters import make_config

    config = resolve_config(parse(argv))
    make_config(config["adapter"], **dict(config["adapter_options"]))
    return config


__all__ = ["RECIPES", "DEMO", "build_parser", "check_args", "parse", "resolve_config"]
