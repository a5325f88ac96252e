"""Where adapters go: per-backbone target names resolved to modules ("sites").

A *target* is what the user names (``k``, ``mlp``, ``dt_proj``...). It expands, in every
block, to one or more *kinds* (``dt_proj`` -> ``dt_proj`` and ``dt_proj_b``, the forward and
backward scan), and each (block, kind) pair is one *site*. Lily shares A and B per kind.

Site styles:
- ``linear``: adapt an ``nn.Linear`` (optionally only a block of its output rows: ``k`` of the
  fused ``qkv``, the x or z half of Vim's ``in_proj``, the dt/B/C rows of Vim's ``x_proj``):
  ``y = W0 x + delta(x)``, the delta added to that block only.
- ``parallel``: put a module beside a whole sub-module (``mlp``): ``y = module(x) + delta(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vtab_lily.errors import UserError, unknown_name


@dataclass(frozen=True)
class TargetPart:
    """One kind a target expands to, relative to a block."""

    kind: str
    path: str  # module path inside the block
    style: str = "linear"  # "linear" | "parallel"
    slice_index: int | None = None  # which block of the Linear's output rows (None: all of them)
    split: str = "thirds"  # how the rows split: SPLITS below


# How a Linear's output rows split into the blocks a sliced target adapts (slice_index picks one):
# "thirds" timm's fused qkv (q, k, v); "halves" Vim's in_proj (x, then the gate z);
# "x_proj" Vim's x_proj (dt_rank rows for delta, then d_state rows of B, then d_state of C).


# Target names per backbone family. Vim's x_proj and dt_proj cover both scan directions as
# separate kinds (own A, B, router), as the official Lily Vim code keeps them separate.
TARGETS: dict[str, dict[str, tuple[TargetPart, ...]]] = {
    "vit": {
        "q": (TargetPart("q", "attn.qkv", slice_index=0),),
        "k": (TargetPart("k", "attn.qkv", slice_index=1),),
        "v": (TargetPart("v", "attn.qkv", slice_index=2),),
        "qkv": (TargetPart("qkv", "attn.qkv"),),
        "proj": (TargetPart("proj", "attn.proj"),),
        "fc1": (TargetPart("fc1", "mlp.fc1"),),
        "fc2": (TargetPart("fc2", "mlp.fc2"),),
        "mlp": (TargetPart("mlp", "mlp", style="parallel"),),
    },
    "vim": {
        "in_proj": (TargetPart("in_proj", "mixer.in_proj"),),
        "x_proj": (TargetPart("x_proj", "mixer.x_proj"), TargetPart("x_proj_b", "mixer.x_proj_b")),
        "dt_proj": (TargetPart("dt_proj", "mixer.dt_proj"), TargetPart("dt_proj_b", "mixer.dt_proj_b")),
        "out_proj": (TargetPart("out_proj", "mixer.out_proj"),),
        # MambaPEFT's partial LoRA (LoRA_p): one row block of in_proj (shared by both directions)
        # or of each direction's x_proj.
        "in_proj_x": (TargetPart("in_proj_x", "mixer.in_proj", slice_index=0, split="halves"),),
        "in_proj_z": (TargetPart("in_proj_z", "mixer.in_proj", slice_index=1, split="halves"),),
        **{f"x_proj_{rows}": (TargetPart(f"x_proj_{rows}", "mixer.x_proj", slice_index=i, split="x_proj"),
                              TargetPart(f"x_proj_b_{rows}", "mixer.x_proj_b", slice_index=i, split="x_proj"))
           for i, rows in enumerate(("dt", "B", "C"))},
    },
}

# Families whose blocks are timm attention + MLP blocks, with the same target names and defaults.
VIT_LIKE = ("vit", "swin")
# Swin blocks have the ViT block's sites (timm's WindowAttention has the fused qkv and proj, the Mlp
# fc1/fc2), at a width that doubles from stage to stage.
TARGETS["swin"] = TARGETS["vit"]

# Where a family keeps its blocks: one ModuleList (ViT, Vim), or Swin's stages of blocks.
BLOCKS_ATTR = {"vit": "blocks", "vim": "layers"}


@dataclass(frozen=True)
class Site:
    """One adapted place: block ``layer``, target ``target``, kind ``kind``."""

    layer: int
    target: str
    kind: str
    path: str  # full module path, e.g. "blocks.3.attn.qkv"
    style: str
    out_slice: tuple[int, int] | None
    in_features: int
    out_features: int  # of the adapted output (the slice width for sliced targets)

    @property
    def name(self) -> str:
        """Stable display name, e.g. ``blocks.3.k`` (used for router-weight records)."""
        return f"{self.path.split('.', 1)[0]}.{self.layer}.{self.kind}"


def model_family(model: nn.Module) -> str:
    """``"vit"``, ``"vim"`` or ``"swin"``: ``model.family`` when set, else recognise timm's ViT and Swin."""
    family = getattr(model, "family", None)
    if family is None:
        from timm.models.swin_transformer import SwinTransformer
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(model, VisionTransformer):
            family = "vit"
        elif isinstance(model, SwinTransformer):
            family = "swin"
    if family not in TARGETS:
        raise UserError(
            f"cannot adapt a {type(model).__name__}: expected a timm VisionTransformer or SwinTransformer, or a "
            f"model with .family in {sorted(TARGETS)} (got family={family!r})"
        )
    return family


def block_paths(model: nn.Module) -> list[str]:
    """Module paths of the blocks in order: ``blocks.3`` (ViT), ``layers.3`` (Vim), and over Swin's
    stages ``layers.0.blocks.0``, ``layers.0.blocks.1``, ``layers.1.blocks.0``, ..."""
    family = model_family(model)
    if family == "swin":
        return [f"layers.{s}.blocks.{j}" for s, stage in enumerate(model.layers) for j in range(len(stage.blocks))]
    prefix = BLOCKS_ATTR[family]
    return [f"{prefix}.{i}" for i in range(len(getattr(model, prefix)))]


def model_blocks(model: nn.Module) -> nn.ModuleList | list[nn.Module]:
    """The blocks in order (Swin: a list over its stages)."""
    family = model_family(model)
    if family == "swin":
        return [model.get_submodule(path) for path in block_paths(model)]
    return getattr(model, BLOCKS_ATTR[family])


def model_depth(model: nn.Module) -> int:
    return len(block_paths(model))


def check_targets(family: str, targets: tuple[str, ...] | list[str], method: str,
                  allowed_styles: tuple[str, ...] = ("linear", "parallel")) -> tuple[str, ...]:
    """Validate target names for ``family``; UserError with a did-you-mean otherwise."""
    if isinstance(targets, str):
        targets = tuple(t for t in targets.replace(" ", "").split(",") if t)
    targets = tuple(targets)
    if not targets:
        raise UserError(f"{method}: targets must name at least one of: {', '.join(TARGETS[family])}")
    choices = [t for t, parts in TARGETS[family].items() if all(p.style in allowed_styles for p in parts)]
    seen: set[str] = set()
    for target in targets:
        if target not in choices:
            raise unknown_name(f"{method} target for a {family} backbone", target, choices)
        if target in seen:
            raise UserError(f"{method}: target {target!r} given twice")
        seen.add(target)
    for whole in targets:  # a whole Linear and a row block of it (qkv and q; in_proj and in_proj_x)
        paths = {p.path for p in TARGETS[family][whole] if p.slice_index is None}
        inside = [t for t in targets if t != whole
                  and any(p.path in paths and p.slice_index is not None for p in TARGETS[family][t])]
        if inside:
            raise UserError(f"{method}: target {whole!r} overlaps {sorted(inside)}; use one or the other")
    return targets


def resolve_sites(model: nn.Module, targets: tuple[str, ...]) -> list[Site]:
    """All sites for ``targets`` (already checked), ordered by target, kind, then block."""
    family = model_family(model)
    blocks = block_paths(model)
    sites: list[Site] = []
    for target in targets:
        for part in TARGETS[family][target]:
            for layer, block_path in enumerate(blocks):
                path = f"{block_path}.{part.path}"
                module = original_module(model.get_submodule(path))
                block = original_module(model.get_submodule(block_path))
                sites.append(_site(layer, target, part, path, module, block))
    return sites


def _row_blocks(split: str, module: nn.Linear, block: nn.Module) -> list[tuple[int, int]]:
    """The (start, stop) output rows of each block of ``module`` under ``split``."""
    out = module.out_features
    if split == "thirds":
        sizes = [out // 3] * 3
    elif split == "halves":
        sizes = [out // 2] * 2
    elif split == "x_proj":
        dt_rank = block.mixer.dt_rank
        sizes = [dt_rank, (out - dt_rank) // 2, (out - dt_rank) // 2]
    else:
        raise ValueError(f"unknown row split {split!r}")
    if sum(sizes) != out:
        raise UserError(f"cannot split the {out} output rows of a {type(module).__name__} as {split}")
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def _site(layer: int, target: str, part: TargetPart, path: str, module: nn.Module, block: nn.Module) -> Site:
    if part.style == "parallel":
        width = _parallel_width(module, path)
        return Site(layer, target, part.kind, path, "parallel", None, width, width)
    if not isinstance(module, nn.Linear):
        raise UserError(f"{path} is a {type(module).__name__}, expected nn.Linear; is this the right backbone?")
    out_slice = None
    out_features = module.out_features
    if part.slice_index is not None:
        out_slice = _row_blocks(part.split, module, block)[part.slice_index]
        out_features = out_slice[1] - out_slice[0]
    return Site(layer, target, part.kind, path, "linear", out_slice, module.in_features, out_features)


def _parallel_width(module: nn.Module, path: str) -> int:
    """Input (= output) width of a residual sub-module such as timm's Mlp."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            return child.in_features
    raise UserError(f"{path}: cannot infer the feature width (no nn.Linear inside)")


def original_module(module: nn.Module) -> nn.Module:
    """The backbone module behind an adapter wrapper (wrappers expose it as ``base_layer``)."""
    while hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Module):
        module = module.base_layer
    return module


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def nested_per_target(raw: object, method: str) -> dict[str, dict[str, object]]:
    """``per_target`` as ``{target: {key: value}}``.

    Also accepts the flat form a command line gives, ``{"dt_proj.rank": "4", "in_proj.ne_b": 6}``
    (``--adapter-opt per_target=dt_proj.rank=4;in_proj.ne_b=6``); numeric strings become numbers.
    Keys and values are validated by the adapter's ``resolve``.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{method}: per_target must be a dict such as {{'dt_proj': {{'rank': 4}}}} or "
                        f"'dt_proj.rank=4', got {raw!r}")
    out: dict[str, dict[str, object]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.setdefault(str(key), {}).update({k: _number_from(v) for k, v in value.items()})
        elif isinstance(key, str) and "." in key:
            target, _, sub = key.partition(".")
            out.setdefault(target, {})[sub] = _number_from(value)
        else:
            raise UserError(f"{method}: per_target[{key!r}] must be a dict such as {{'rank': 4}} "
                            f"(or use the key '{key}.rank'), got {value!r}")
    return out


def _number_from(value: object) -> object:
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value
