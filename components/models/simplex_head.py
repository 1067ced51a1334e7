"""A fixed d-simplex classifier: the class weights of every model version sit on the same vertices.

Stationary representations (Biondi et al., CVPR 2024) fix the classifier to the vertices of a
regular simplex and never train it: every version's features are pulled towards the same class
directions, so a model trained later stays comparable with one trained earlier without any
old-model term. Here the head is our cosine classifier with its rows set to simplex vertices
and frozen (``requires_grad = False``), which is why ``compat.simplex_head`` switches it on for
the first model and for every challenger alike.

A regular simplex in R^d has d + 1 vertices (pairwise cosine −1/d), so at most d + 1 classes fit:
more is a one-line error. A class keeps its vertex over the chain: a challenger copies the
vertex of every class its champion knows (read from the champion's own frozen head) and gives a
new class the lowest vertex nobody uses yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class SimplexHeadError(ValueError):
    """The classes do not fit the simplex, or the model has no cosine head to fix."""


def simplex_vertices(dim: int) -> torch.Tensor:
    """The d + 1 unit vertices of a regular simplex centred at 0 in R^d: [d + 1, d], deterministic.

    The centred standard basis of R^{d+1} spans a d-dimensional subspace; its coordinates in an
    orthonormal basis of that subspace (from a QR factorisation) are the vertices.
    """
    n = dim + 1
    centred = torch.eye(n, dtype=torch.float64) - 1.0 / n
    basis, _ = torch.linalg.qr(centred[:, :dim])  # orthonormal columns spanning the centred space
    vertices = centred @ basis
    return torch.nn.functional.normalize(vertices, dim=1).float()


def assign_vertices(
    class_map: Sequence[str], inherited: Mapping[str, int], dim: int, setting: str = "compat.simplex_head"
) -> list[int]:
    """Vertex index per head row: a class a previous version knew keeps its vertex, a new one gets
    the lowest free vertex."""
    if len(set(inherited.values())) != len(inherited):
        raise SimplexHeadError(f"{setting}: two inherited classes share a vertex")
    if len(class_map) > dim + 1:
        raise SimplexHeadError(
            f"{setting}: {len(class_map)} classes do not fit a {dim}-d simplex (at most {dim + 1}); "
            "raise training.embedding_dim or switch the setting off"
        )
    used = {inherited[name] for name in class_map if name in inherited}
    free = (v for v in range(dim + 1) if v not in used)
    return [inherited[name] if name in inherited else next(free) for name in class_map]


def vertices_of(model: torch.nn.Module, class_map: Sequence[str]) -> dict[str, int]:
    """The vertex each class of a simplex-headed model sits on (empty when its head is not one)."""
    weight = _head_weight(model).detach().float()
    vertices = simplex_vertices(weight.shape[1])
    cosine = torch.nn.functional.normalize(weight, dim=1) @ vertices.T
    best = cosine.max(dim=1)
    if not bool((best.values > 1 - 1e-4).all()):
        return {}
    return {name: int(v) for name, v in zip(class_map, best.indices.tolist(), strict=True)}


def fix_simplex_head(model: torch.nn.Module, vertex_per_row: Sequence[int]) -> None:
    """Set the head's rows to the given vertices and freeze them."""
    weight = _head_weight(model)
    if len(vertex_per_row) != weight.shape[0]:
        raise SimplexHeadError(f"{len(vertex_per_row)} vertices for a head of {weight.shape[0]} rows")
    vertices = simplex_vertices(weight.shape[1])
    with torch.no_grad():
        weight.copy_(vertices[torch.as_tensor(list(vertex_per_row))].to(weight))
    weight.requires_grad_(False)


def _head_weight(model: torch.nn.Module) -> torch.nn.Parameter:
    head = getattr(model, "head", None)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.ndim != 2:
        raise SimplexHeadError(
            f"compat.simplex_head: {type(model).__name__} has no cosine head (head.weight) to fix"
        )
    return weight
