"""Connected components in Beam: alternating large-star / small-star rounds (Kiveris et al., 2014).

Scales on any runner: every round is a ``GroupByKey`` over the edge list, and nothing is collected on the
driver (Broder, 1997). Nodes are string keys; each component ends as a star around its smallest key,
which becomes the component's id (deterministic, whatever order the runner delivers elements in).

The graph is unrolled for a fixed number of rounds (``max_rounds``). A last step checks that the result is
converged (every labelled node points at a root that has no smaller label itself) and raises otherwise,
so a too-small ``max_rounds`` fails loudly instead of splitting groups silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

__all__ = ["ConnectedComponents"]

Edge = tuple[str, str]


def _large_star(item: tuple[str, Iterable[str]]) -> Iterator[Edge]:
    """Link every larger neighbour of ``u`` to the smallest node of ``u``'s closed neighbourhood."""
    u, neighbours = item
    nbrs = set(neighbours)
    m = min(nbrs | {u})
    for v in nbrs:
        if v > u:
            yield (v, m)


def _small_star(item: tuple[str, Iterable[str]]) -> Iterator[Edge]:
    """Link ``u`` and its smaller neighbours to the smallest of them."""
    u, smaller = item
    nodes = set(smaller) | {u}
    m = min(nodes)
    for v in nodes:
        if v != m:
            yield (v, m)


def _both_ways(edge: Edge) -> Iterator[Edge]:
    a, b = edge
    if a != b:
        yield (a, b)
        yield (b, a)


def _larger_to_smaller(edge: Edge) -> Iterator[Edge]:
    a, b = edge
    if a != b:
        yield (max(a, b), min(a, b))


class _Round(beam.PTransform):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def expand(self, edges):
        large = (
            edges
            | f"BothWays{self.index}" >> beam.FlatMap(_both_ways)
            | f"GroupLarge{self.index}" >> beam.GroupByKey()
            | f"LargeStar{self.index}" >> beam.FlatMap(_large_star)
        )
        return (
            large
            | f"Orient{self.index}" >> beam.FlatMap(_larger_to_smaller)
            | f"GroupSmall{self.index}" >> beam.GroupByKey()
            | f"SmallStar{self.index}" >> beam.FlatMap(_small_star)
            | f"Distinct{self.index}" >> beam.Distinct()
        )


def _check_converged(item: tuple[str, dict[str, list]]) -> Iterator[Edge]:
    node, joined = item
    parents = set(joined["parent"])
    if len(parents) > 1:
        raise RuntimeError(
            f"connected components did not converge (node {node!r} has {len(parents)} roots); "
            "raise curate.minhash.max_cc_rounds"
        )
    if parents and joined["as_parent_of"]:
        raise RuntimeError(
            f"connected components did not converge (root chain at {node!r}); raise curate.minhash.max_cc_rounds"
        )
    for parent in parents:
        yield (node, parent)


class ConnectedComponents(beam.PTransform):
    """``PCollection[(a, b)]`` edges -> ``PCollection[(node, component_id)]`` for every non-root node.

    ``component_id`` is the smallest key of the component. Roots (and nodes without edges) do not
    appear: callers treat a missing node as its own component id.
    """

    def __init__(self, max_rounds: int = 12) -> None:
        super().__init__()
        self.max_rounds = max_rounds

    def expand(self, edges):
        current = edges | "Canonical" >> beam.FlatMap(_larger_to_smaller) | "DistinctInput" >> beam.Distinct()
        for index in range(self.max_rounds):
            current = current | f"Round{index}" >> _Round(index)
        roots = current | "Roots" >> beam.Map(lambda e: (e[1], e[0]))
        return (
            {"parent": current, "as_parent_of": roots}
            | "JoinForCheck" >> beam.CoGroupByKey()
            | "CheckConverged" >> beam.FlatMap(_check_converged)
        )
