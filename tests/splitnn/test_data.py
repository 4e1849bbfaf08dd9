import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitnn import (
    ArrayDataset,
    BatchStream,
    DatasetError,
    dataset_names,
    load_dataset,
    partition_indices,
    shard,
)

# --- digits -------------------------------------------------------------------------------------


def test_digits_split_is_stratified_and_fixed() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test", seed=99)
    assert len(train) + len(test) == 1797
    assert train.input_shape == test.input_shape == (1, 8, 8)
    assert train.x.dtype == np.float32
    assert train.y.dtype == np.int64
    assert train.x.min() >= 0.0
    assert train.x.max() <= 1.0
    test_share = np.bincount(test.y) / (np.bincount(test.y) + np.bincount(train.y))
    np.testing.assert_allclose(test_share, 0.2, atol=0.01)
    again = load_dataset("digits", "test", seed=1)  # the split ignores the seed
    assert np.array_equal(again.x, test.x)
    assert np.array_equal(again.y, test.y)


# --- cifar10 ------------------------------------------------------------------------------------


def _write_fake_cifar(root: Path, per_batch: int = 4) -> Path:
    """A tiny directory in the CIFAR-10 python format (protocol 2 like the real files)."""
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data = np.full((per_batch, 3072), i, dtype=np.uint8)
        data[0, :1024] = 255  # sample 0: red channel saturated
        labels = [(i + j) % 10 for j in range(per_batch)]
        with (batches / name).open("wb") as f:
            pickle.dump({b"batch_label": b"fake", b"data": data, b"labels": labels}, f, protocol=2)
    return batches


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_reads_the_python_format(tmp_path: Path, use_parent: bool) -> None:
    batches = _write_fake_cifar(tmp_path)
    train = load_dataset("cifar10", "train", data_dir=tmp_path if use_parent else batches)
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert (len(train), len(test)) == (20, 4)
    assert train.input_shape == (3, 32, 32)
    assert train.num_classes == 10
    assert train.y.tolist()[:5] == [0, 1, 2, 3, 1]
    assert test.y.tolist() == [5, 6, 7, 8]
    np.testing.assert_allclose(train.x[0, 0], (1.0 - 0.4914) / 0.2470, rtol=1e-5)
    np.testing.assert_allclose(train.x[0, 1], (0.0 - 0.4822) / 0.2435, rtol=1e-5)


def test_cifar10_missing_files_say_where_and_what(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data_batch_1\b.*data_batch_1\.\.5") as info:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(DatasetError, match="no data_dir"):
        load_dataset("cifar10", "test")
    batches = _write_fake_cifar(tmp_path)
    (batches / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


class _Sneaky:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return os.getcwd, ()


@pytest.mark.parametrize(
    "payload",
    [
        {b"data": _Sneaky(), b"labels": [0]},  # would call a function when unpickled
        {b"data": np.zeros((2, 3072), np.uint8)},  # no labels
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},  # wrong image size
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},  # label out of range
    ],
)
def test_cifar10_rejects_malformed_batches(tmp_path: Path, payload: dict[bytes, object]) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# --- synthetic ----------------------------------------------------------------------------------


def _nearest_mean_accuracy(train: ArrayDataset, test: ArrayDataset) -> float:
    means = np.stack([train.x[train.y == c].mean(axis=0).ravel() for c in range(10)])
    flat = test.x.reshape(len(test), -1)
    distances = ((flat[:, None, :] - means[None]) ** 2).sum(axis=-1)
    return float((distances.argmin(axis=1) == test.y).mean())


def test_synthetic_is_deterministic_balanced_and_learnable() -> None:
    train = load_dataset("synthetic", "train", seed=3, synthetic_size=500)
    test = load_dataset("synthetic", "test", seed=3, synthetic_size=300)
    assert train.input_shape == (3, 32, 32)
    assert train.x.dtype == np.float32
    assert np.bincount(train.y).tolist() == [50] * 10
    assert abs(float(train.x.std()) - 1.0) < 0.05
    again = load_dataset("synthetic", "train", seed=3, synthetic_size=500)
    assert np.array_equal(again.x, train.x)
    assert np.array_equal(again.y, train.y)
    assert not np.array_equal(train.x[:300], test.x)  # disjoint noise
    # Same templates for train and test: even a nearest-class-mean classifier works...
    assert _nearest_mean_accuracy(train, test) > 0.5
    # ...and they come from the seed: another seed's templates do not.
    other = load_dataset("synthetic", "test", seed=4, synthetic_size=300)
    assert _nearest_mean_accuracy(train, other) < 0.3


def test_unknown_dataset_or_split() -> None:
    assert set(dataset_names()) == {"digits", "cifar10", "synthetic"}
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")  # type: ignore[arg-type]


def test_array_dataset_basics() -> None:
    x = np.arange(5 * 2 * 3 * 3, dtype=np.float32).reshape(5, 2, 3, 3)
    ds = ArrayDataset(x, np.arange(5, dtype=np.int64), num_classes=5, name="toy")
    assert len(ds) == 5
    assert ds.input_shape == (2, 3, 3)
    sub = ds.subset(np.array([4, 1]))
    assert sub.y.tolist() == [4, 1]
    assert np.array_equal(sub.x[0], x[4])
    assert sub.name == "toy"
    with pytest.raises(ValueError, match="float32"):
        ArrayDataset(x.astype(np.float64), ds.y, 5, "toy")
    with pytest.raises(ValueError, match="N,"):
        ArrayDataset(x, ds.y[:4], 5, "toy")


# --- sharding -----------------------------------------------------------------------------------


@st.composite
def _labels_and_shards(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    labels = draw(st.lists(st.integers(0, 9), min_size=1, max_size=300))
    num_shards = draw(st.integers(1, len(labels)))
    return np.array(labels, dtype=np.int64), num_shards, draw(st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(
    case=_labels_and_shards(),
    scheme=st.sampled_from(["iid", "label_skew"]),
    seed=st.integers(0, 2**32),
)
def test_shards_are_disjoint_non_empty_and_cover_everything(
    case: tuple[np.ndarray, int, int], scheme: Literal["iid", "label_skew"], seed: int
) -> None:
    labels, num_shards, per_shard = case
    shards = partition_indices(
        labels, num_shards, scheme=scheme, seed=seed, classes_per_shard=per_shard
    )
    assert len(shards) == num_shards
    assert all(len(s) > 0 and s.dtype == np.int64 for s in shards)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))
    if scheme == "iid":
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _top_share(labels: np.ndarray, shard_indices: np.ndarray, top: int) -> float:
    counts = np.sort(np.bincount(labels[shard_indices], minlength=10))[::-1]
    return float(counts[:top].sum() / counts.sum())


@settings(max_examples=60, deadline=None)
@given(
    per_class=st.integers(10, 60),
    num_shards=st.integers(5, 20),
    per_shard=st.integers(2, 3),
    seed=st.integers(0, 2**32),
)
def test_label_skew_shards_are_dominated_by_few_classes(
    per_class: int, num_shards: int, per_shard: int, seed: int
) -> None:
    # Balanced labels and num_shards * per_shard >= classes, so every run of sorted labels is at
    # most one class long and spans at most two classes.
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))
    skewed = partition_indices(
        labels, num_shards, scheme="label_skew", seed=seed, classes_per_shard=per_shard
    )
    iid = partition_indices(labels, num_shards, scheme="iid", seed=seed)
    for s in skewed:
        assert len(np.unique(labels[s])) <= 2 * per_shard
        assert _top_share(labels, s, per_shard) >= 0.5
    skewed_share = np.mean([_top_share(labels, s, per_shard) for s in skewed])
    iid_share = np.mean([_top_share(labels, s, per_shard) for s in iid])
    assert skewed_share > iid_share


def test_label_skew_with_class_sized_runs_gives_pure_pairs() -> None:
    labels = np.repeat(np.arange(10), 100)
    shards = partition_indices(labels, 5, scheme="label_skew", seed=0, classes_per_shard=2)
    assert all(len(np.unique(labels[s])) == 2 and len(s) == 200 for s in shards)


def test_shard_of_a_dataset() -> None:
    ds = load_dataset("synthetic", "train", synthetic_size=60)
    parts = [shard(ds, 3, i, scheme="label_skew", seed=1) for i in range(3)]
    assert sum(map(len, parts)) == 60
    assert sorted(np.concatenate([p.y for p in parts]).tolist()) == sorted(ds.y.tolist())
    with pytest.raises(ValueError, match="shard index"):
        shard(ds, 3, 3, scheme="iid", seed=1)


@pytest.mark.parametrize(
    ("num_shards", "kwargs", "message"),
    [
        (0, {}, "num_shards"),
        (11, {}, "num_shards"),
        (2, {"classes_per_shard": 0}, "classes_per_shard"),
        (2, {"scheme": "shuffled"}, "unknown partition"),
    ],
)
def test_bad_partition_arguments(num_shards: int, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"scheme": "iid", "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        partition_indices(np.zeros(10, dtype=np.int64), num_shards, **args)


# --- batch stream -------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(num_samples=st.integers(1, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 2**32))
def test_an_epoch_covers_every_index_once(num_samples: int, batch_size: int, seed: int) -> None:
    stream = BatchStream(num_samples, batch_size, seed)
    epoch = [stream.next_batch() for _ in range(stream.batches_per_epoch)]
    assert np.array_equal(np.sort(np.concatenate(epoch)), np.arange(num_samples))
    assert all(len(b) == batch_size for b in epoch[:-1])
    assert 1 <= len(epoch[-1]) <= batch_size
    assert stream.state() == {"epoch": 1, "position": 0}


def test_stream_is_deterministic_and_reshuffles() -> None:
    first, second = BatchStream(10, 4, seed=5), BatchStream(10, 4, seed=5)
    a = [first.next_batch().tolist() for _ in range(6)]
    assert a == [second.next_batch().tolist() for _ in range(6)]
    assert [len(b) for b in a] == [4, 4, 2, 4, 4, 2]
    assert a[0] + a[1] + a[2] != a[3] + a[4] + a[5]  # epoch 1 is a new permutation
    assert a[0] != BatchStream(10, 4, seed=6).next_batch().tolist()


def test_stream_resumes_from_its_state() -> None:
    stream = BatchStream(23, 5, seed=1)
    for _ in range(7):
        stream.next_batch()
    resumed = BatchStream.from_state(23, 5, 1, stream.state())
    assert resumed.state() == stream.state() == {"epoch": 1, "position": 10}
    for _ in range(12):
        assert np.array_equal(resumed.next_batch(), stream.next_batch())


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"epoch": 0},
        {"epoch": -1, "position": 0},
        {"epoch": 0, "position": 23},
        {"epoch": 0.0, "position": 0},
    ],
)
def test_bad_stream_state_is_rejected(state: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="stream state"):
        BatchStream.from_state(23, 5, 1, state)


def test_a_larger_data_share_takes_consecutive_shards():
    ds = load_dataset("digits", "train")
    parts = [shard(ds, 4, i, scheme="iid", seed=1) for i in range(4)]
    double = shard(ds, 4, 1, scheme="iid", seed=1, count=2)
    assert len(double) == len(parts[1]) + len(parts[2])
    np.testing.assert_array_equal(double.y, np.concatenate([parts[1].y, parts[2].y]))


def test_digits_read_from_the_bundled_file_equal_scikit_learns():
    from sklearn.datasets import load_digits

    from splitnn.datasets.builtin import digits_arrays

    images, target = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images)
    assert np.array_equal(target, bunch.target)
