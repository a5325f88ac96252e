"""The numbers behind the analysis, as plain functions of tensors.

- ``effective_rank``: Roy & Vetterli (2007), ``exp(H(p))`` with ``p_i = s_i / sum(s)`` over the
  singular values: a matrix with k equal singular values has effective rank k, and a long
  tail of tiny ones adds little.
- ``rank_above``: how many singular values exceed ``fraction`` x the largest (a hard count
  that does not depend on the distribution's shape; the fraction is stated in every report).
- ``weight_stats``: both ranks, the spectrum and ``||dW||_F / ||W0||_F`` for one update.
- ``router_entropy`` and ``expert_similarity``: do the routers use the experts, and do the
  experts differ from each other (a collapsed Lily has near-identical B experts)?
"""

from __future__ import annotations

import math

import torch

RANK_FRACTION = 0.01  # singular values above 1% of the largest count towards ``rank_above``


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values in descending order, computed in float64 for small spectra tails."""
    return torch.linalg.svdvals(matrix.detach().to(torch.float64))


def effective_rank(values: torch.Tensor) -> float:
    """``exp(entropy)`` of the normalised singular values; 0 for a zero matrix."""
    total = float(values.sum())
    if total <= 0 or not math.isfinite(total):
        return 0.0
    p = values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def rank_above(values: torch.Tensor, fraction: float = RANK_FRACTION) -> int:
    """Number of singular values above ``fraction`` times the largest one (0 for a zero matrix)."""
    if values.numel() == 0 or float(values[0]) <= 0:
        return 0
    return int((values > fraction * values[0]).sum())


def weight_stats(delta: torch.Tensor, base: torch.Tensor | None, fraction: float = RANK_FRACTION) -> dict:
    """Spectrum summary of one weight update ``delta`` (out, in) of the frozen weight ``base``."""
    values = singular_values(delta)
    norm = float(values.square().sum().sqrt())
    rel = None
    if base is not None:
        base_norm = float(base.detach().to(torch.float64).norm())
        rel = norm / base_norm if base_norm > 0 else None
    return {"effective_rank": effective_rank(values), "rank_above": rank_above(values, fraction),
            "max_rank": min(delta.shape), "norm": norm, "relative_norm": rel,
            "singular_values": [float(v) for v in values[:64]]}


def router_entropy(weights: torch.Tensor | list[float]) -> float:
    """Entropy (nats) of a site's mean expert weights; ``log(ne)`` means uniform use."""
    p = torch.as_tensor(weights, dtype=torch.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def expert_similarity(experts: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of the flattened B experts ``(ne, r, C_out)`` -> ``(ne, ne)``.

    A zero expert (B starts at zero) has similarity 0 with everything, itself included."""
    flat = experts.detach().to(torch.float64).reshape(experts.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, flat / norms.clamp_min(1e-300), torch.zeros_like(flat))
    return unit @ unit.T


def expert_wins(site_weights: dict[str, list[float]]) -> list[int]:
    """How many sites give each expert their largest mean weight (ties go to the first)."""
    width = max((len(w) for w in site_weights.values()), default=0)
    wins = [0] * width
    for weights in site_weights.values():
        if len(weights) > 1:
            wins[max(range(len(weights)), key=lambda i: weights[i])] += 1
    return wins
