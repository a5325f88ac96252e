"""Every option of ``python -m vtab_lily.run``, declared once.

Each option is a field of :class:`RunOptions` whose metadata says everything the runner derives
from it (the style of HF PEFT's config dataclasses): the flag and its help, how the text is read,
its bounds, and its ``role``:

- ``adapter``: a setting of the adapter (merged into the adapter's config; label and hash through it);
- ``identity``: names the run (backbone, task, seed, protocol...): hashed, never a deviation;
- ``recipe``: a training setting with an official value per backbone family (``None``: that value);
  hashed, and a deviation (so in the method label) when it differs from the official one. Their
  order here is the order deviations appear in labels;
- ``setup``: a recipe setting that also keeps named methods (``--method-name``) apart;
- ``local``: where or how the run executes (paths, device, threads): not hashed, never in a label;
- ``action``: what the command does (``--dry-run``, ``--force``...): not part of the run's config.

The parser (:func:`build_parser`), the bound checks (:func:`check_bounds`), the hash's local keys
(``rundir.LOCAL_KEYS``) and the label's recipe keys (``official.RECIPE_KEYS``) are derived from
these declarations. Adapter settings of one adapter only are fields of its config dataclass
(``vtab_lily/adapters/``, bounds in ``adapters.fields``); the flags here are the ones shared by many.
No torch, no I/O.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserError
from .tasks import PROTOCOLS

ROLES = ("adapter", "identity", "recipe", "setup", "local", "action")
GROUPS = {"run": None, "adapter": "adapter options (unset ones take the adapter's official defaults)",
          "recipe": "recipe (unset: the official setup of the backbone family)", "where": "where and how"}
PAPER_WORD = "paper"  # adapters.pertask.PAPER: a per-task setting's published value


def option(default: Any = None, *, role: str, help: str | None = None, group: str | None = None,
           read: Callable[[str], Any] | None = None, flag: str | None = "", switch: str | None = None,
           choices: tuple[str, ...] | None = None, metavar: str | None = None, at_least: float | None = None,
           at_most: float | None = None, above: float | None = None, below: float | None = None,
           interval_text: str | None = None, optional_value: Any = None) -> Any:
    """A run option's declaration (a dataclass field).

    ``read``: how the flag's text becomes a value; ``flag``: its name ("" = from the field name,
    None = no flag: a recipe value only the official setup sets); ``switch``: ``on`` (store_true),
    ``off`` (a ``--no-x`` that stores False), ``both`` (``--x/--no-x``), ``append`` (repeatable).
    Bounds (checked after the official defaults are filled in; None values are unset options):
    ``at_least``/``at_most`` inclusive, ``above``/``below`` exclusive; ``interval_text`` names the
    interval in the message instead (``[0, 2**32)``). ``optional_value``: the flag may be given
    without its value, which then is this (``--compile`` alone = ``--compile default``).
    """
    if role not in ROLES:
        raise ValueError(f"option role {role!r} is not one of {ROLES}")
    meta = {"role": role, "help": help, "group": group or {"adapter": "adapter", "local": "where",
                                                           "action": "where"}.get(role, "recipe"),
            "read": read, "flag": flag, "switch": switch, "choices": choices, "metavar": metavar,
            "at_least": at_least, "at_most": at_most, "above": above, "below": below,
            "interval_text": interval_text, "optional_value": optional_value}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _targets(text: str) -> tuple[str, ...]:
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:  # never the adapter's default in disguise: leave the flag out for that
        raise argparse.ArgumentTypeError(f"{text!r} names no target; give at least one (e.g. k,v,mlp) or leave "
                                         "--targets out for the adapter's default targets")
    return targets


def is_paper_word(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == PAPER_WORD


def number_or_paper(kind: type) -> Callable[[str], Any]:
    """A number, or the word ``paper`` (the published per-task value; which adapters have one is
    checked against the adapter's table)."""
    def read(text: str) -> Any:
        return PAPER_WORD if is_paper_word(text) else kind(text)

    read.__name__ = kind.__name__  # argparse: "invalid int value: 'x'"
    read.takes_paper = True  # type: ignore[attr-defined]
    return read


# torch.compile modes a run may ask for (config "compile": false, true = "default", or another
# name); the mode can change the numbers a little, so a non-default one shows in the label.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _compile_mode(text: str) -> bool | str:
    """``--compile MODE``: the default mode is recorded as ``true`` (as plain ``--compile``)."""
    mode = text.strip().lower()
    if mode not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(f"unknown compile mode {text!r}: choose one of {', '.join(COMPILE_MODES)}")
    return True if mode == "default" else mode


# Input normalisation (``--normalize [NAME]`` / ``--no-normalize``). Recorded as ``false`` (none: 0..1
# inputs) and ``true`` (ImageNet's mean/std), as before names existed, so older runs keep their
# names; any other set by its name (``clip``, ``inception``: ``backbones.NORMS``, checked there).
NO_NORM, IMAGENET_NORM = "none", "imagenet"


def read_normalize(text: str) -> bool | str:
    """``--normalize NAME``: ``none`` -> False, ``imagenet`` -> True, another name as itself."""
    name = text.strip().lower()
    if not name:
        raise argparse.ArgumentTypeError("names no normalisation (none, imagenet, clip, inception)")
    return False if name == NO_NORM else True if name == IMAGENET_NORM else name


read_normalize.__name__ = "normalisation name"  # argparse: "invalid normalisation name value"


def norm_name(value: bool | str) -> str:
    """The name of a recorded ``normalize`` value (False: none, True: imagenet)."""
    if isinstance(value, bool):
        return IMAGENET_NORM if value else NO_NORM
    return str(value)


def norm_value(name: str) -> bool | str:
    """The recorded value of a normalisation name (the inverse of :func:`norm_name`)."""
    return read_normalize(name)


# Compute precisions (``--precision``), by what a float32 matmul and a cuDNN convolution run in:
#   fp32       both in full fp32 (the only float32 a CPU has)
#   tf32       both in TF32 on GPUs with TF32 tensor cores (torch < 1.12's default on CUDA)
#   tf32-conv  matmuls in full fp32, cuDNN convolutions in TF32 (torch >= 1.12's default on CUDA)
#   bf16       bf16 autocast; what runs outside it (the fp32 head) in full fp32
PRECISIONS = ("fp32", "tf32", "tf32-conv", "bf16")
TF32_PRECISIONS = ("tf32", "tf32-conv")  # need a GPU with TF32 (compute capability 8.0 or newer)

SIZE = 1_000_000  # sizes far beyond any real use: a typo (an extra digit) fails now, not hours later


@dataclass(frozen=True)
class RunOptions:
    """One run's options as typed on the command line (None: take the official or adapter default)."""

    backbone: str = option("vit", role="identity", group="run", help="backbone name, or the short names vit "
                           "(vit-b16-in21k; demo: vit-tiny-test) and vim (vim-s; demo: vim-tiny-test)")
    adapter: str = option("lily", role="identity", group="run",
                          help="lily, lora, adaptformer, linear (head only), full, ...")
    task: str | None = option(None, role="identity", group="run",
                              help="task folder name (python -m vtab_lily.tasks lists them)")
    # -- adapter settings many adapters share (any other field: --adapter-opt)
    rank: int | str | None = option(role="adapter", read=number_or_paper(int))
    ne: int | None = option(role="adapter", read=int, help="Lily: A groups and B experts")
    ne_a: int | None = option(role="adapter", read=int, help="Lily: number of A groups")
    ne_b: int | None = option(role="adapter", read=int, help="Lily: number of B experts")
    scale: float | str | None = option(role="adapter", read=number_or_paper(float), help="a number, or paper: "
                                       "the published per-task value (vpt-deep, fact-tt/tk, repadapter)")
    targets: tuple[str, ...] | None = option(role="adapter", read=_targets,
                                             help="comma-separated targets, e.g. k,v,mlp")
    router: str | None = option(role="adapter", help="Lily: per_site | single | none")
    routing: str | None = option(role="adapter", help="Lily: batch (official ViT) | token (official Vim) | sample "
                                 "| eq2")
    alpha: float | None = option(role="adapter", read=float, help="LoRA alpha")
    variant: str | None = option(role="adapter", help="LoRA: noah (official 74.5 row) | lily | custom; Lily on "
                                 "Vim: l (official) | s (the paper's Lily-S) | custom")
    placement: str | None = option(role="adapter", help="AdaptFormer: official (pre-norm x, outside drop_path) "
                                   "| paper")
    dropout: float | None = option(role="adapter", read=float, below=1,
                                   help="adapter dropout (Lily, LoRA, AdaptFormer)")
    peft_config: str | None = option(role="adapter", metavar="FILE.json", help="--adapter peft: an HF PEFT config "
                                     "(LoRA, LoHa, LoKr, OFT, VeRA, IA3, ...; its contents are part of the run's "
                                     "identity)")
    adapter_opt: list = option([], role="adapter", switch="append", metavar="KEY=VALUE",
                               help="any other adapter config field, coerced to the field's type (repeatable; "
                               "tuples a,b; dicts a=1;b=2 or JSON; nested dicts t.key=1)")
    # -- the recipe, in the order its deviations appear in method labels
    epochs: int | None = option(role="recipe", read=int, at_least=1, at_most=100_000, help="default 100 (demo: 10)")
    batch_size: int | None = option(role="recipe", read=int, at_least=1, at_most=SIZE,
                                    help="micro-batch size, default 64")
    accum_steps: int = option(1, role="recipe", read=int, at_least=1, at_most=100_000,
                              help="micro-batches per optimizer step")
    lr: float | None = option(role="recipe", read=float, above=0, help="ViT 1e-3, Vim 1.25e-3")
    wd: float | None = option(role="recipe", read=float, at_least=0, help="ViT 1e-4, Vim 1e-3")
    warmup: int | None = option(role="recipe", read=int, at_least=0, help="warmup epochs: ViT 10, Vim 5")
    warmup_lr: float | None = option(role="recipe", flag=None)  # the official schedule's, never a flag
    min_lr: float | None = option(role="recipe", flag=None)
    drop_path: float | None = option(role="recipe", read=float, at_least=0, below=1, help="ViT 0.1, Vim 0.05")
    lr_schedule: str = option("official", role="setup", choices=("official", "aligned"),
                              help="official: the lr steps after each epoch (epoch e runs at f(e-1)); aligned: at f(e)")
    drop_last: bool = option(True, role="setup", flag="no-drop-last", switch="off",
                             help="keep the last, smaller batch of each epoch (official: dropped)")
    img_size: int | None = option(role="recipe", read=int, at_least=1, at_most=4096, help="default 224 (demo: 32)")
    eval_every: int | None = option(role="recipe", read=int, at_least=1, at_most=100_000,
                                    help="epochs between evaluations, default 10")
    eval_batch_size: int | None = option(role="setup", read=int, at_least=1, at_most=SIZE,
                                         help="evaluation batch (official 256; unset: the loop may use larger "
                                         "ones on a GPU where the routing allows)")
    eval_limit: int | None = option(role="setup", read=int, at_least=1, at_most=10**9,
                                    help="intermediate evaluations use only the first N eval images (the final "
                                    "one is always full; changes the test-selected number)")
    precision: str | None = option(None, role="setup", choices=PRECISIONS, help="default: what the official code "
                                   "ran in on this device (CPU: fp32; a CUDA GPU with TF32: tf32 for ViT, tf32-conv "
                                   "for Vim); fp32: full fp32 matmuls and convolutions; bf16: autocast (see "
                                   "docs/gpu.md)")
    normalize: bool | str | None = option(None, role="setup", switch="both", read=read_normalize, optional_value=True,
                                          metavar="NAME", help="input normalisation: none (inputs in [0, 1]), "
                                          "imagenet (--normalize alone), clip or inception mean/std; default: the "
                                          "backbone's recipe (none for Google's ViT and Vim, as the official code; "
                                          "DINOv2/MAE imagenet, CLIP clip: their pre-training's)")
    pre_logits: bool | None = option(None, role="setup", switch="both", help="keep the checkpoint's frozen "
                                     "pre_logits Linear+tanh (default: when it has one)")
    compile: bool | str = option(False, role="setup", read=_compile_mode, optional_value=True, metavar="MODE",
                                 help="torch.compile the model (train and eval); MODE: default, or reduce-overhead "
                                 "/ max-autotune (CUDA graphs on a GPU); see docs/gpu.md")
    # -- what names the run besides the recipe
    seed: int = option(0, role="identity", read=int, at_least=0, below=2**32, interval_text="[0, 2**32)")
    protocol: str = option("test", role="identity", choices=tuple(sorted(PROTOCOLS)),
                           help="test: train800val200 -> test; val: train800 -> val200")
    method_name: str | None = option(None, role="identity", group="where", help="label of the method in "
                                     "result.json and the leaderboard (default: the adapter settings then the "
                                     "differences from the official setup); part of the run's identity")
    paper: bool = option(False, role="identity", group="where", switch="on", help="report the paper's number "
                         "(best test accuracy over the evaluations, 'test-selected') beside the final one")
    demo: bool = option(False, role="identity", group="where", switch="on", help="demo suite (generated on "
                        "demand), tiny backbone, 32 px, short schedule, Lily on ViT at s=0.1 (docs/demo.md)")
    # -- where and how (never part of the run's identity)
    data_root: str | None = option(role="local", help="suite root, default data/vtab-1k (demo: data/vtab-demo)")
    checkpoint: str | None = option(role="local", help="backbone weights file; default: the backbone's file "
                                    "under backbones/ (see backbones/README.md); 'none' for random init (demo "
                                    "and tests)")
    out: str = option("runs", role="local", help="runs folder")
    device: str = option("auto", role="local", help="auto | cpu | cuda | cuda:N")
    threads: int | None = option(role="local", read=int, at_least=1, at_most=4096,
                                 help="CPU threads for torch (default: torch's; demo: 1)")
    tensorboard: bool = option(True, role="local", flag="no-tensorboard", switch="off")
    # -- what the command does
    dry_run: bool = option(False, role="action", switch="on", help="print the resolved setup, its differences "
                           "from the official one and the parameter counts (no weights or data needed)")
    check: bool = option(False, role="action", switch="on", help="only validate the options (exit 0 or 2)")
    force: bool = option(False, role="action", switch="on", help="redo a finished or failed run from scratch")
    allow_stale_data: bool = option(False, role="action", switch="on", help="train even when the task's list "
                                    "files or images differ from its manifest.json; the result records the "
                                    "fingerprint of the data as read, marked stale (default: refuse)")
    fetch: bool = option(False, role="action", switch="on", help="download missing backbone weights and VTAB-1K "
                         "first (python -m vtab_lily.fetch); without it a missing piece stops the run(s) before "
                         "any work")
    preflight: bool = option(False, role="action", switch="on", help="only check that the weights and data of "
                             "the run(s) are there (with --fetch: fetch them); exit 0, or 2 naming every missing "
                             "piece")
    list_tasks: bool = option(False, role="action", switch="on",
                              help="check the other arguments, print the task names")
    list_backbones: bool = option(False, role="action", switch="on", help="print the backbones: names, aliases, "
                                  "family, input size, patch, normalisation, parameters, weights file and the "
                                  "command that fetches it")
    batch: str | None = option(role="action", metavar="FILE",
                               help="run many: FILE has one JSON list of arguments per line")
    debug: bool = option(False, role="action", switch="on", help="full tracebacks")


def declarations() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(RunOptions)


def names(*roles: str) -> tuple[str, ...]:
    """The options of the given roles, in declaration order."""
    return tuple(f.name for f in declarations() if f.metadata["role"] in roles)


def flag_of(f: dataclasses.Field) -> str:
    return "--" + (f.metadata["flag"] or f.name.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    """``python -m vtab_lily.run``'s parser, one argument per declared option with a flag."""
    p = argparse.ArgumentParser(prog="python -m vtab_lily.run", allow_abbrev=False,
                                description="One fine-tuning run (see the module docstring of vtab_lily.run).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {key: (p.add_argument_group(title) if title else p) for key, title in GROUPS.items()}
    for f in declarations():
        meta = f.metadata
        if meta["flag"] is None:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        switch = meta["switch"]
        if switch == "on":
            kwargs["action"] = "store_true"
        elif switch == "off":
            kwargs["action"] = "store_false"
        elif switch == "both" and meta["read"] is not None:  # --x, --x VALUE, and --no-x (below)
            kwargs.update(default=f.default, type=meta["read"], nargs="?", const=meta["optional_value"],
                          metavar=meta["metavar"])
        elif switch == "both":
            kwargs.update(action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kwargs["default"] = [] if switch == "append" else f.default
            if switch == "append":
                kwargs["action"] = "append"
            if meta["read"] is not None:
                kwargs["type"] = meta["read"]
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            if meta["optional_value"] is not None:
                kwargs.update(nargs="?", const=meta["optional_value"])
        action = groups[meta["group"]].add_argument(flag_of(f), **{k: v for k, v in kwargs.items() if v is not None
                                                                    or k == "default"})
        if switch == "both" and meta["read"] is not None:
            off = "--no-" + flag_of(f)[2:]
            groups[meta["group"]].add_argument(off, dest=f.name, action="store_const", const=False,
                                               help=f"same as {flag_of(f)} {NO_NORM if f.name == 'normalize' else 'off'}")
            action.off_flag = off  # the sweep writes a false value as this switch
    return p


def bound_problem(value: Any, meta: Any) -> str | None:
    """Why ``value`` breaks the declared bounds (``must be ...``), or None."""
    if value is None or isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        return None
    low, high, above, below = meta.get("at_least"), meta.get("at_most"), meta.get("above"), meta.get("below")
    if meta.get("interval_text") and not ((low is None or value >= low) and (below is None or value < below)):
        return f"must be in {meta['interval_text']}, got {value}"
    if low is not None and not (math.isfinite(value) and value >= low):
        return f"must be >= {low:g}, got {value}"
    if above is not None and not (math.isfinite(value) and value > above):
        return f"must be a finite number > {above:g}, got {value}"
    if high is not None and value > high:
        return f"must be <= {high:,}, got {value:,}"
    if below is not None and value >= below:
        return f"must be below {below:g}, got {value}"
    return None


def check_bounds(values: dict[str, Any]) -> None:
    """Every declared bound of the run options in ``values`` (a resolved config); UserError naming the flag."""
    for f in declarations():
        if f.metadata["role"] == "adapter" or f.name not in values:
            continue  # adapter settings are checked against their adapter's own fields
        problem = bound_problem(values[f.name], f.metadata)
        if problem:
            raise UserError(f"{flag_of(f)} {problem}")


# --- adapter settings: fields of an adapter's config dataclass ------------------------------------
UNRECORDED_DEFAULT = "unrecorded_default"  # adapters.recorded_config leaves such a field out at its default


def setting(default: Any = dataclasses.MISSING, *, help: str | None = None, integer: bool = False,
            at_least: float | None = None, at_most: float | None = None, above: float | None = None,
            below: float | None = None, unrecorded_default: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """An adapter option's declaration: a field of the adapter's config dataclass (HF PEFT style).

    That one line is the whole option: ``--adapter-opt NAME=VALUE`` reads it with the field's type,
    ``adapters.make_config`` checks these bounds (``integer``: a whole number, ``paper`` and None
    being unset values), the method label and the hashes take it from the recorded config, and the
    deviations compare it with the official setup. ``unrecorded_default``: an option added after
    runs were recorded is left out of their config while at its default, so they keep their hashes.
    """
    meta = {"help": help, "integer": integer, "at_least": at_least, "at_most": at_most, "above": above,
            "below": below}
    if unrecorded_default:
        meta[UNRECORDED_DEFAULT] = True
    return field(default=default, default_factory=default_factory, metadata=meta)


def check_settings(config: Any, method: str) -> None:
    """Every bound the fields of adapter config ``config`` declare; UserError ``method: name ...``."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None or is_paper_word(value):
            continue
        meta = f.metadata
        if meta.get("integer") and (not isinstance(value, int) or isinstance(value, bool)):
            low = meta.get("at_least")
            raise UserError(f"{method}: {f.name} must be an integer{f' >= {low:g}' if low is not None else ''}, "
                            f"got {value!r}")
        bounded = any(meta.get(k) is not None for k in ("at_least", "at_most", "above", "below"))
        if bounded and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{method}: {f.name} must be a number, got {value!r}")
        problem = bound_problem(value, meta)
        if problem:
            raise UserError(f"{method}: {f.name} {problem}")
