"""Walks of the autograd graph: every reader of the graph's structure lives here.

- :func:`walk_graph`: the nodes reachable from some roots (e.g. to find convolutions);
- :func:`leaves`: the leaf tensors requiring grad that some losses reach;
- :func:`plan_head_pass`: how one backward pass through the heads yields every task's gradient
  w.r.t. a representation Z (the MGDA-UB head pass).

The walks keep the nodes themselves in their ``seen`` sets, which keeps them alive, so identity is stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["HeadPlan", "leaves", "plan_head_pass", "walk_graph"]


def walk_graph(roots: Sequence[object], stops: AbstractSet[object] | None = None) -> Iterable[object]:
    """Depth-first walk over autograd nodes from ``roots``, not entering nodes in ``stops``."""
    stops = stops or set()
    seen: set[object] = set()
    stack = list(roots)
    pop, push, mark = stack.pop, stack.extend, seen.add
    while stack:
        node = pop()
        if node is None or node in seen or node in stops:
            continue
        mark(node)
        yield node
        push([child for child, _ in node.next_functions])  # type: ignore[attr-defined]


def leaves(items: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors requiring grad that the losses reach (one walk of the graph, inline for speed)."""
    found = []
    seen: set[Any] = set()
    stack = [loss.grad_fn for loss in items]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        children = node.next_functions
        if children:
            stack.extend([child for child, _ in children])
        else:  # only AccumulateGrad nodes (leaves) have no inputs
            variable = getattr(node, "variable", None)
            if isinstance(variable, Tensor):
                found.append(variable)
    return found


@dataclass
class HeadPlan:
    """How one backward pass through the heads yields every task's gradient w.r.t. Z.

    Attributes:
        consumers: per task, the autograd nodes that take Z as an input (with the input positions);
            no node is a consumer for two tasks.
        heads: the leaves reached from the losses without passing through Z (task parameters).
        owners: per head leaf, the one task that reaches it, or None when several do.
    """

    consumers: list[list[tuple[Any, list[int]]]]
    heads: list[Tensor]
    owners: list[int | None]


def plan_head_pass(items: Sequence[Tensor], features: Tensor, per_task_heads: bool) -> HeadPlan | None:
    """The plan of a head pass, or None when two tasks reach Z through a common node.

    One walk of each task's graph down to Z (the heads only). With ``per_task_heads`` (head gradients
    to be weighted per task), a head parameter reached by two tasks makes it None as well.
    """
    edge = torch.autograd.graph.get_gradient_edge(features)
    target, target_nr = edge.node, edge.output_nr
    owner_of_consumer: dict[Any, int] = {}
    consumers: list[list[tuple[Any, list[int]]]] = []
    leaf_index: dict[int, int] = {}
    heads: list[Tensor] = []
    owners: list[int | None] = []
    for t, loss in enumerate(items):
        found = []
        # Walked inline, not with walk_graph: the generator and a second read of next_functions (a new
        # tuple per read) made this walk 1.5-2x slower (about 90 us a step at 40 heads).
        seen = {target}  # Z's node is not entered
        stack = [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            children = node.next_functions
            if not children:  # a leaf's AccumulateGrad (or a node with no inputs to differentiate)
                variable = getattr(node, "variable", None)
                if isinstance(variable, Tensor):
                    index = leaf_index.get(id(variable))
                    if index is None:
                        leaf_index[id(variable)] = len(heads)
                        heads.append(variable)
                        owners.append(t)
                    elif owners[index] != t:
                        owners[index] = None
                continue
            positions = []
            for i, (child, nr) in enumerate(children):
                if child is target:
                    if nr == target_nr:
                        positions.append(i)
                else:
                    stack.append(child)
            if positions:
                if owner_of_consumer.setdefault(node, t) != t:
                    return None
                found.append((node, positions))
        consumers.append(found)
    if per_task_heads and any(owner is None for owner in owners):
        return None
    return HeadPlan(consumers, heads, owners)
