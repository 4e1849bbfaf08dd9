"""Splitting one dataset among an emulated run's devices: disjoint shards by a scheme.

The schemes (parsed by :func:`schemas.partitions.parse_partition`, so ``"dirichlet:0.3"`` and
a :class:`PartitionScheme` are both accepted wherever a scheme is):

- ``iid``: a shuffled equal split.
- ``label_skew``: the samples sorted by label are cut into ``num_shards * classes_per_shard``
  runs and each shard gets ``classes_per_shard`` random runs, so it is dominated by about that
  many classes (McMahan et al. 2017's pathological non-IID split). Equal sizes, give or take one
  run.
- ``dirichlet:ALPHA``: for each class, the shares of the shards are drawn from a symmetric
  Dirichlet(ALPHA) and the class's samples are dealt out in those proportions (Hsu et al. 2019;
  Yurochkin et al. 2019; the non-IID split of most federated-learning papers). Small ALPHA
  (0.1) gives each shard few classes and very unequal sizes; large ALPHA (100) approaches iid.
  Every shard is non-empty: a draw that leaves one empty is drawn again (up to
  ``_DIRICHLET_DRAWS`` times, as NIID-Bench does), and if one is still empty, each empty shard
  takes one sample from the then largest shard.

Every scheme is a pure function of (labels, number of shards, seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from schemas.partitions import PartitionError, PartitionScheme, parse_partition
from splitnn.data import ArrayDataset

_DIRICHLET_DRAWS = 10

__all__ = ["PartitionError", "PartitionScheme", "parse_partition", "partition_indices", "shard"]


def partition_indices(
    labels: NDArray[np.integer[Any]],
    num_shards: int,
    *,
    scheme: str | PartitionScheme,
    seed: int,
    classes_per_shard: int = 2,
) -> list[NDArray[np.int64]]:
    """Disjoint, non-empty, sorted index shards that together cover every sample.

    ``classes_per_shard`` only matters for ``label_skew``.
    """
    parsed = parse_partition(scheme)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 1 <= num_shards <= len(labels):
        raise ValueError(
            f"num_shards must be in 1..{len(labels)} (one sample each), got {num_shards}"
        )
    if classes_per_shard < 1:
        raise ValueError(f"classes_per_shard must be >= 1, got {classes_per_shard}")
    rng = np.random.default_rng(seed)
    if parsed.kind == "dirichlet":
        assert parsed.alpha is not None  # the scheme's own invariant
        shards = _dirichlet(labels, num_shards, parsed.alpha, rng)
    else:
        order = rng.permutation(len(labels))
        if parsed.kind == "iid":
            shards = np.array_split(order, num_shards)
        else:
            shards = _label_skew(labels, order, num_shards, classes_per_shard, rng)
    return [np.sort(s).astype(np.int64) for s in shards]


def _label_skew(
    labels: NDArray[Any],
    order: NDArray[np.int64],
    num_shards: int,
    classes_per_shard: int,
    rng: np.random.Generator,
) -> list[NDArray[np.int64]]:
    # Stable sort of a shuffled order: grouped by label, random within a label.
    by_label = order[np.argsort(labels[order], kind="stable")]
    runs = np.array_split(by_label, min(num_shards * classes_per_shard, len(labels)))
    # Round-robin over shuffled runs: every shard gets at least one (there are >= num_shards).
    dealt = rng.permutation(len(runs))
    return [np.concatenate([runs[r] for r in dealt[i::num_shards]]) for i in range(num_shards)]


def _dirichlet(
    labels: NDArray[Any], num_shards: int, alpha: float, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    classes = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(_DIRICHLET_DRAWS):
        shards = _dirichlet_draw(classes, num_shards, alpha, rng)
        if all(len(s) for s in shards):
            return shards
    # Still an empty shard (few samples for many shards): top up from the largest ones.
    for empty in [i for i, s in enumerate(shards) if len(s) == 0]:
        largest = max(range(num_shards), key=lambda i: len(shards[i]))
        shards[empty], shards[largest] = shards[largest][-1:], shards[largest][:-1]
    return shards


def _dirichlet_draw(
    classes: list[NDArray[np.int64]], num_shards: int, alpha: float, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    parts: list[list[NDArray[np.int64]]] = [[] for _ in range(num_shards)]
    for members in classes:
        shares = rng.dirichlet(np.full(num_shards, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for i, piece in enumerate(np.split(members, cuts)):
            parts[i].append(piece)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def shard(
    ds: ArrayDataset,
    num_shards: int,
    index: int,
    *,
    scheme: str | PartitionScheme,
    seed: int,
    classes_per_shard: int = 2,
    count: int = 1,
) -> ArrayDataset:
    """Shards ``index .. index + count - 1`` of ``partition_indices`` over ``ds``'s labels.

    ``count`` > 1 gives a device a larger share of the data (the testbed's data shares).
    """
    if index < 0 or count < 1 or index + count > num_shards:
        raise ValueError(
            f"shard index {index} (count {count}) must keep within 0..{num_shards - 1}"
        )
    shards = partition_indices(
        ds.y, num_shards, scheme=scheme, seed=seed, classes_per_shard=classes_per_shard
    )
    return ds.subset(np.concatenate(shards[index : index + count]))
