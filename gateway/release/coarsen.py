"""Coarsening instead of suppressing: a table's cells roll up along the agreement's
hierarchies (docs/releases.md, "Coarsening instead of suppressing").

A query that asks to ``coarsen`` is measured once, at the level it asks for (every
leaf cell gets its noise, as any release). Its dimensions that have a hierarchy (the
schema's or the agreement's ``groupings``) then form a **ladder**: step 0 is the
table as asked; each further step coarsens one dimension by one level (code
dimensions first, then pooled years, then a distribution's values, round by round),
up to the top of every hierarchy (a distribution's values never go to the top: a
distribution over "all ratings" says nothing). Each step merges whole cells of the
step below, so the cells of all steps form a tree whose leaves are the measured cells.

Everything here is post-processing of the leaves' noisy measurements, plus the one
hard floor of decide.py:

- a node's noisy count is the sum of its leaves' noisy counts (no new draw, no cost);
- a node **clears** when that sum reaches the node's publish threshold (which grows
  with its number of leaves: the threshold bounds the tail of a sum of that many
  draws, :func:`gateway.release.decide.node_threshold`) and its true count of distinct
  teachers reaches the minimum;
- the decision is **top-down**: a root (a node of the top step) that does not clear
  is suppressed; under a node that clears, each child that clears is decided the same
  way, and the children that do not are published together as the node's
  **remainder** ("secondary: SECSCI, SECSS") when they clear together; otherwise
  they are suppressed together beside two or more children that clear, and beside
  one the node is published whole, as is a node none of whose children clears. So
  the published cells are disjoint, and with the suppressed remainders cover every
  leaf under a root that cleared; no published cell, and no difference of published
  cells of the table, rests on fewer teachers than the minimum (a node whose
  remainder is suppressed is never published);
- values are made **consistent** by weighted least squares over the tree, top-down
  (as the Census Bureau's TopDown algorithm does, level by level): a root's value is
  its noisy sum clipped at 0; the children of a node get the non-negative values
  closest to their noisy sums (weighted by their variances) that add up to the node.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.agreements.models import Hierarchy, window_label
from gateway.errors import NotFound
from gateway.release.suppression import GroupKey

#: The name of step 0's level in every dimension: the values the query asked for.
AS_ASKED = "as asked"


@dataclass(frozen=True)
class Axis:
    """One dimension that coarsens: its levels (as asked, the hierarchy's, the top) and,
    for each level above the first, the label each asked value stands under."""

    position: int
    name: str
    levels: tuple[str, ...]
    labels: tuple[Mapping[Any, Any], ...]  # one per level above "as asked"
    kind: str  # "codes", "years" or "values" (a distribution's or joint's scores)

    def label(self, value: Any, level: int) -> Any:
        return value if level == 0 else self.labels[level - 1][value]


@dataclass(frozen=True)
class Ladder:
    """The steps a table coarsens by, finest (as asked) first."""

    axes: tuple[Axis, ...]
    steps: tuple[tuple[int, ...], ...]  # for each step, the level of each axis

    @property
    def top(self) -> int:
        return len(self.steps) - 1

    def node(self, key: GroupKey, step: int) -> GroupKey:
        """The cell of ``step`` that leaf ``key`` rolls up into."""
        out = list(key)
        for axis, level in zip(self.axes, self.steps[step], strict=True):
            out[axis.position] = axis.label(key[axis.position], level)
        return tuple(out)

    def level_names(self, step: int) -> dict[str, str]:
        """Each coarsening dimension's level at ``step``, by dimension name."""
        return {
            axis.name: axis.levels[level]
            for axis, level in zip(self.axes, self.steps[step], strict=True)
        }

    def stepped(self, step: int) -> int:
        """The position (in the table's dimensions) of the dimension ``step`` coarsened."""
        for axis, before, after in zip(
            self.axes, self.steps[step - 1], self.steps[step], strict=True
        ):
            if before != after:
                return axis.position
        raise ValueError(f"step {step} coarsens nothing")  # pragma: no cover

    def describe(self) -> list[dict[str, str]]:
        """The ladder as a recipient reads it: each step's level of each dimension."""
        return [self.level_names(step) for step in range(len(self.steps))]


def _code_labels(hierarchy: Hierarchy, values: Sequence[Any]) -> list[dict[Any, Any]]:
    """Each declared level's label for each asked value, then the top's."""
    out = []
    for index in range(len(hierarchy.levels)):
        out.append({value: hierarchy.parent(value, index) for value in values})
    out.append(dict.fromkeys(values, hierarchy.top))
    return out


def _year_labels(hierarchy: Hierarchy, values: Sequence[Any]) -> list[dict[Any, Any]]:
    """Pooled windows that partition the asked years, aligned on the latest one.

    A hierarchy declares rolling windows (one ending at each year), which overlap; a
    tree needs a partition, so the windows here are built from the latest year asked
    back: each gathers the windows of the level below (the years themselves, first)
    until it spans at least ``pool`` years (2023-2025, 2020-2022, ...). So each level's
    windows are unions of the level below's, whatever the pools; the oldest window
    may span fewer years, and every window is named for the years it really spans.
    """
    groups: list[list[int]] = [[year] for year in sorted({int(v) for v in values})]
    out: list[dict[Any, Any]] = []
    for level in hierarchy.levels:
        pool = level.pool or 1
        merged: list[list[int]] = []
        current: list[int] = []
        for group in reversed(groups):
            current = group + current
            if current[-1] - current[0] + 1 >= pool:
                merged.append(current)
                current = []
        if current:
            merged.append(current)
        groups = list(reversed(merged))
        labels = {
            year: window_label(group[-1], group[-1] - group[0] + 1)
            for group in groups
            for year in group
        }
        out.append({value: labels[int(value)] for value in values})
    out.append(dict.fromkeys(values, hierarchy.top))
    return out


def _is_year_list(values: Sequence[Any]) -> bool:
    return all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)


def axis(
    position: int, name: str, hierarchy: Hierarchy, values: Sequence[Any], *, kind: str
) -> Axis | None:
    """The axis of a dimension whose asked ``values`` are public, or None when its
    hierarchy cannot place them (a value outside every group: left as asked)."""
    if not values:
        return None
    if hierarchy.pooled:
        if not _is_year_list(values):
            return None
        labels = _year_labels(hierarchy, values)
        kind = "years" if kind == "codes" else kind
    else:
        try:
            labels = _code_labels(hierarchy, values)
        except NotFound:  # a value in no group: the dimension stays as asked
            return None
    names = (AS_ASKED, *hierarchy.level_names)
    return Axis(position, name, names, tuple(labels), kind)


def ladder(axes: Sequence[Axis]) -> Ladder | None:
    """Round by round, each axis up one level: codes, then years, then values (whose
    top level is never used). None when nothing can coarsen."""
    order = {"codes": 0, "years": 1, "values": 2}
    ranked = sorted(axes, key=lambda a: (order[a.kind], a.position))
    highest = [len(a.levels) - 1 - (1 if a.kind == "values" else 0) for a in ranked]
    if not ranked or max(highest) <= 0:
        return None
    levels = [0] * len(ranked)
    steps = [tuple(levels)]
    while any(level < high for level, high in zip(levels, highest, strict=True)):
        for index, high in enumerate(highest):
            if levels[index] < high:
                levels[index] += 1
                steps.append(tuple(levels))
    return Ladder(axes=tuple(ranked), steps=tuple(steps))


# --- the tree ------------------------------------------------------------------------


@dataclass
class Node:
    key: GroupKey
    step: int
    leaves: list[GroupKey]
    children: list[Node] = field(default_factory=list)
    #: For a published remainder: the labels, on the dimension its step coarsened, of
    #: the children it stands for (the rest of its node, beside the children published,
    #: which are its ``children``).
    covers: list[Any] | None = None

    def value(self, values: Mapping[tuple[int, GroupKey], float]) -> float:
        """This cell's value among a tree's consistent ``values`` (a remainder's is
        the sum of the children it stands for)."""
        if self.covers is None:
            return values[(self.step, self.key)]
        return sum(values[(child.step, child.key)] for child in self.children)


def tree(leaves: Sequence[GroupKey], ladder_: Ladder) -> list[Node]:
    """The roots of the tree over ``leaves`` (in table order), each with its children."""
    below: dict[GroupKey, Node] = {leaf: Node(leaf, 0, [leaf]) for leaf in leaves}
    for step in range(1, len(ladder_.steps)):
        nodes: dict[GroupKey, Node] = {}
        for child in below.values():
            key = ladder_.node(child.leaves[0], step)
            node = nodes.get(key)
            if node is None:
                node = nodes[key] = Node(key, step, [])
            node.children.append(child)
            node.leaves.extend(child.leaves)
        below = nodes
    return list(below.values())


# --- decisions -----------------------------------------------------------------------


@dataclass
class Decisions:
    """The published cells (disjoint: nodes and remainders), the roots suppressed, and
    the remainders suppressed beside siblings published on their own."""

    published: list[Node] = field(default_factory=list)
    suppressed: list[Node] = field(default_factory=list)
    hidden: list[Node] = field(default_factory=list)


def decide_tree(
    roots: Sequence[Node],
    clears: Callable[[Sequence[GroupKey]], bool],
    stepped: Callable[[int], int],
) -> Decisions:
    """Top-down (module docstring): ``clears`` says whether a set of leaves, merged,
    has a noisy sum at its threshold and a true count at the minimum; ``stepped(step)``
    is the position of the dimension that step coarsened.

    Under a node that clears, each child that clears is decided in turn; the children
    that do not are published together as the node's remainder when they clear
    together; otherwise, beside two or more children that clear, they are suppressed
    together (the node itself is then never published, so they cannot be worked out
    from it), and beside one, the node is published whole (the whole says more than
    one part). A node none of whose children clears is published whole.
    """
    out = Decisions()
    for root in roots:
        if not clears(root.leaves):
            out.suppressed.append(root)
            continue
        stack = [root]
        while stack:
            node = stack.pop()
            passing = [child for child in node.children if clears(child.leaves)]
            if not passing:
                out.published.append(node)
                continue
            failing = [child for child in node.children if not clears(child.leaves)]
            rest = [leaf for child in failing for leaf in child.leaves]
            if rest and len(passing) < 2 and not clears(rest):
                # One child beside a rest too small to show: the whole says more.
                out.published.append(node)
                continue
            stack.extend(reversed(passing))
            if rest:
                position = stepped(node.step)
                labels = [child.key[position] for child in failing]
                # Named for what it holds ("secondary: SECSCI, SECSS"), never the
                # node's own name, which would read as the whole node.
                key = list(node.key)
                key[position] = f"{node.key[position]}: {', '.join(map(str, labels))}"
                remainder = Node(tuple(key), node.step, rest, children=failing, covers=labels)
                (out.published if clears(rest) else out.hidden).append(remainder)
    return out


# --- consistent values ---------------------------------------------------------------


def project(values: Sequence[float], weights: Sequence[float], total: float) -> list[float]:
    """The non-negative ``x`` closest to ``values`` in the ``weights``-weighted least
    squares sense (weights: the variances) with ``sum(x) == total`` (``total >= 0``):
    ``x_i = max(0, v_i - lambda w_i)``, ``lambda`` found over the sorted breakpoints."""
    if not values:
        return []
    if total <= 0:
        return [0.0] * len(values)
    order = sorted(range(len(values)), key=lambda i: values[i] / weights[i], reverse=True)
    kept_value = kept_weight = 0.0
    lam = 0.0
    for rank, i in enumerate(order):
        kept_value += values[i]
        kept_weight += weights[i]
        lam = (kept_value - total) / kept_weight
        following = order[rank + 1] if rank + 1 < len(order) else None
        if following is None or values[following] / weights[following] <= lam:
            break
    return [max(0.0, values[i] - lam * weights[i]) for i in range(len(values))]


def consistent(
    roots: Sequence[Node], noisy: Mapping[GroupKey, float], *, non_negative: bool
) -> dict[tuple[int, GroupKey], float]:
    """Every node's value (keyed by step and key): its leaves' noisy sum, made
    non-negative and additive top-down when ``non_negative`` (counts); else the plain
    sums, which are additive already."""
    out: dict[tuple[int, GroupKey], float] = {}
    stack: list[tuple[Node, float]] = []
    for root in roots:
        raw = sum(noisy[leaf] for leaf in root.leaves)
        value = max(raw, 0.0) if non_negative else raw
        stack.append((root, value))
    while stack:
        node, value = stack.pop()
        out[(node.step, node.key)] = value
        if not node.children:
            continue
        sums = [sum(noisy[leaf] for leaf in child.leaves) for child in node.children]
        if non_negative:
            weights = [float(len(child.leaves)) for child in node.children]
            shares = project(sums, weights, value)
        else:
            shares = sums
        stack.extend(zip(node.children, shares, strict=True))
    return out
