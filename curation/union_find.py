"""Connected components and deterministic group ids, without FAISS or Beam.

Union-find (path halving, union by smallest root) over string keys or integer indices. Every group is named
by its smallest member key, so ids do not depend on the order the edges or keys arrive in: Beam runners
differ in order, the ids must not (Broder, 1997, "never by arrival order").
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

__all__ = ["UnionFind", "connected_components", "connected_labels", "group_ids", "group_members"]


class UnionFind:
    """Disjoint sets over ``0..n-1``; the root of a set is always its smallest element."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        """Merge the sets of ``a`` and ``b``; True when they were separate."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return True

    def labels(self) -> np.ndarray:
        """int64 label per element: the smallest element of its set."""
        return np.fromiter((self.find(x) for x in range(len(self.parent))), dtype=np.int64)


def connected_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Plain connected components of the graph with edges ``(i[k], j[k])``: label = smallest index.

    No protection against chaining: see :func:`copyguard.curation.clustering.cluster_components` for that.
    """
    uf = UnionFind(n)
    for a, b in zip(
        np.asarray(i, dtype=np.int64).tolist(), np.asarray(j, dtype=np.int64).tolist(), strict=True
    ):
        uf.union(a, b)
    return uf.labels()


def connected_components(
    keys: Iterable[Hashable], edges: Iterable[tuple[Hashable, Hashable]]
) -> dict[Hashable, Hashable]:
    """Union-find over ``keys``: ``{key: group_key}`` where ``group_key`` is the smallest key of its group.

    Keys that appear only in ``edges`` are added; keys without edges are their own group.
    """
    index: dict[Hashable, int] = {}
    for key in keys:
        index.setdefault(key, len(index))
    pairs = []
    for a, b in edges:
        pairs.append((index.setdefault(a, len(index)), index.setdefault(b, len(index))))
    # Sorting the keys first makes the smallest index the smallest key, so the root is the group's id.
    ordered = sorted(index)
    rank = {key: r for r, key in enumerate(ordered)}
    remap = [rank[key] for key in index]
    uf = UnionFind(len(ordered))
    for a, b in pairs:
        uf.union(remap[a], remap[b])
    return {key: ordered[uf.find(rank[key])] for key in index}


def group_ids(keys: Sequence[str], labels: Sequence[int] | np.ndarray) -> list[str]:
    """Name each sample's group by the smallest key among its members (stable across runners)."""
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    smallest: dict[int, str] = {}
    for key, label in zip(keys, np.asarray(labels).tolist(), strict=True):
        best = smallest.get(label)
        if best is None or key < best:
            smallest[label] = key
    return [smallest[label] for label in np.asarray(labels).tolist()]


def group_members(groups: dict[Hashable, Hashable]) -> dict[Hashable, list[Hashable]]:
    """Invert ``{key: group}`` into ``{group: sorted member keys}``."""
    out: dict[Hashable, list[Hashable]] = {}
    for key, group in groups.items():
        out.setdefault(group, []).append(key)
    for members in out.values():
        members.sort()
    return out
