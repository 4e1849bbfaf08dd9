"""Data sources (registry, local files), fit checks and the partition schemes."""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from schemas.errors import AresError
from splitnn.datasets import (
    ArrayDataset,
    DatasetError,
    DatasetRegistry,
    PartitionError,
    PartitionScheme,
    check_against,
    dataset_names,
    fit_problem,
    load_dataset,
    load_local,
    local_path,
    parse_partition,
    partition_indices,
    register_dataset,
    shard,
)
from splitnn.datasets import registry as registry_module

RED, BLUE = (255, 0, 0), (0, 0, 255)


def tiny_loader(split: str, *, seed: int) -> ArrayDataset:
    """A user's loader, named as ``tests.splitnn.test_datasets:tiny_loader``."""
    x = np.full((4, 2, 5), seed, dtype=np.float32)
    return ArrayDataset(x, np.array([0, 1, 0, 1], dtype=np.int64), 2, f"tiny-{split}")


# --- the registry -------------------------------------------------------------------------------


def test_builtins_are_registered_and_unknown_names_say_what_is_known() -> None:
    assert dataset_names()[:3] == ("digits", "cifar10", "synthetic")
    assert len(load_dataset("synthetic", "test", synthetic_size=20)) == 20
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnist'.*digits.*a path") as info:
        load_dataset("mnist", "train")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AresError)


def test_a_users_loader_gets_the_arguments_it_declares() -> None:
    registry = DatasetRegistry()
    seen: dict[str, Any] = {}

    def everything(split: str, **kwargs: Any) -> ArrayDataset:
        seen.update(kwargs, split=split)
        return tiny_loader(split, seed=1)

    registry.register("tiny", tiny_loader, description="four samples")
    registry.register("tiny", tiny_loader)  # the same loader again: a no-op
    registry.register("everything", everything)
    assert registry.names() == ("digits", "cifar10", "synthetic", "tiny", "everything")
    data = load_dataset("tiny", "test", seed=3, data_dir=Path("/nowhere"), registry=registry)
    assert (data.name, float(data.x[0, 0, 0])) == ("tiny-test", 3.0)
    load_dataset("everything", "train", seed=5, input_shape=[1, 2, 5], registry=registry)
    assert seen == {
        "split": "train",
        "data_dir": None,
        "seed": 5,
        "synthetic_size": 2000,
        "input_shape": (1, 2, 5),
    }
    assert "tiny" not in dataset_names()  # a registry of its own


def test_registration_errors() -> None:
    registry = DatasetRegistry()
    with pytest.raises(DatasetError, match="already registered"):
        registry.register("digits", tiny_loader)
    with pytest.raises(DatasetError, match="must be a word"):
        registry.register("my/data", tiny_loader)
    registry.register("broken", lambda split: np.zeros(3))  # type: ignore[arg-type, return-value]
    with pytest.raises(DatasetError, match="broken: its loader must return an ArrayDataset"):
        load_dataset("broken", "train", registry=registry)


def test_register_dataset_adds_to_the_process_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "DATASETS", DatasetRegistry())
    register_dataset("tiny", tiny_loader)
    assert "tiny" in dataset_names()
    assert load_dataset("tiny", "train", seed=2).name == "tiny-train"


def test_a_loader_named_by_its_import_path() -> None:
    data = load_dataset("tests.splitnn.test_datasets:tiny_loader", "train", seed=7)
    assert data.input_shape == (2, 5)
    with pytest.raises(DatasetError, match="cannot import no_such_package"):
        load_dataset("no_such_package.data:load", "train")
    with pytest.raises(DatasetError, match="has no callable 'missing'"):
        load_dataset("tests.splitnn.test_datasets:missing", "train")


def test_the_rule_that_tells_a_path_from_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    (tmp_path / "cams").mkdir()
    assert local_path("digits") is None  # a name wins over a same-named folder...
    assert local_path("./digits") == Path("digits")  # ...unless it is written as a path
    assert local_path("file:digits") == Path("digits")
    assert local_path("cams") == Path("cams")  # an existing path that is no name
    assert local_path("data/cams") == Path("data/cams")
    assert local_path("windows.NPZ") == Path("windows.NPZ")
    assert local_path("~/x.csv") == Path.home() / "x.csv"
    assert local_path("mypkg.data:load") is None
    assert local_path("no-such-thing") is None
    with pytest.raises(DatasetError, match="no-such-thing"):
        load_dataset("no-such-thing", "train")
    with pytest.raises(DatasetError, match=r"missing\.npz: no such file"):
        load_dataset("missing.npz", "train")


def test_load_dataset_reads_local_files(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs")
    data = load_dataset(str(tmp_path / "imgs"), "train", input_shape=(1, 6, 6))
    assert data.input_shape == (1, 6, 6)
    assert data.label_names == ("cat", "dog", "empty")
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2, 7)), y=np.array([0, 1, 1]))
    assert load_dataset(f"file:{tmp_path / 's.npz'}", "test").input_shape == (2, 7)


# --- the data set -------------------------------------------------------------------------------


def test_array_dataset_takes_any_rank_per_sample() -> None:
    series = ArrayDataset(np.zeros((4, 3, 50), np.float32), np.zeros(4, np.int64), 2, "s")
    assert series.input_shape == (3, 50)
    named = ArrayDataset(series.x, series.y, 2, "s", label_names=("a", "b"))
    assert named.subset(np.array([1, 2])).label_names == ("a", "b")
    with pytest.raises(ValueError, match="N, C"):
        ArrayDataset(np.zeros((4, 50), np.float32), series.y, 2, "s")
    with pytest.raises(ValueError, match="3 label names for 2 classes"):
        ArrayDataset(series.x, series.y, 2, "s", label_names=("a", "b", "c"))


# --- a folder of images -------------------------------------------------------------------------


def _solid(path: Path, colour: Any, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def _write_images(root: Path) -> None:
    """cat: two red PNGs (one nested); dog: a blue JPEG (upper-case extension), a grayscale PNG
    and a corrupt PNG; empty: no images. Plus files that are not images."""
    _solid(root / "cat" / "a.png", RED)
    _solid(root / "cat" / "more" / "b.png", RED, size=(40, 30))
    _solid(root / "dog" / "c.JPG", BLUE)
    _solid(root / "dog" / "d.png", 255, mode="L")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"junk")  # e.g. macOS ._ files
    (root / "empty").mkdir()
    (root / "readme.md").write_text("files beside the class folders are ignored")


def test_a_folder_of_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_images(tmp_path)
    with caplog.at_level(logging.WARNING, logger="splitnn.datasets"):
        loaded = load_local(tmp_path, input_shape=(3, 8, 8))
    data = loaded.dataset
    assert loaded.kind == "images"
    assert data.input_shape == (3, 8, 8)
    assert data.label_names == ("cat", "dog", "empty")
    assert data.num_classes == 3
    assert data.y.tolist() == [0, 0, 1, 1]  # sorted: cat/a, cat/more/b, dog/c.JPG, dog/d
    # Scaled to [0, 1], normalised by 0.5 and 0.5: red is (1, -1, -1) everywhere.
    np.testing.assert_allclose(data.x[0], np.array([1, -1, -1]).reshape(3, 1, 1) * np.ones((8, 8)))
    np.testing.assert_allclose(data.x[1], data.x[0])  # resized from 40 x 30 alike
    assert data.x[2, 2].mean() > 0.9 > data.x[2, 0].mean()  # blue (JPEG: nearly exact)
    np.testing.assert_allclose(data.x[3], 1.0)  # white grayscale, as RGB
    assert (loaded.skipped, loaded.skipped_names) == (1, ("dog/broken.png",))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 1 of 5 images" in warnings[0].getMessage()
    assert "dog/broken.png" in warnings[0].getMessage()
    assert "skipped 1 that do not decode (dog/broken.png)" in loaded.summary()


def test_images_in_grayscale_any_size_and_one_thread(tmp_path: Path) -> None:
    _write_images(tmp_path)
    gray = load_local(tmp_path, input_shape=(1, 5, 7), workers=1).dataset
    assert gray.input_shape == (1, 5, 7)
    np.testing.assert_allclose(gray.x[3], 1.0)
    red_luma = 299 / 1000  # Pillow's L = R * 299/1000 + G * 587/1000 + B * 114/1000
    np.testing.assert_allclose(gray.x[0], (round(255 * red_luma) / 255 - 0.5) / 0.5, atol=1e-6)
    default = load_local(tmp_path).dataset
    assert default.input_shape == (3, 32, 32)
    custom = load_local(tmp_path, input_shape=(3, 4, 4), mean=0.0, std=(1.0, 1.0, 0.5)).dataset
    np.testing.assert_allclose(custom.x[2, 2], 2.0, atol=0.05)  # blue / 0.5


def test_classes_fix_the_label_order(tmp_path: Path) -> None:
    _write_images(tmp_path)
    data = load_local(tmp_path, classes=["bird", "cat", "dog", "empty"]).dataset
    assert data.label_names == ("bird", "cat", "dog", "empty")
    assert data.y.tolist() == [1, 1, 2, 2]
    with pytest.raises(DatasetError, match="sub-folder 'empty' is not one of the classes"):
        load_local(tmp_path, classes=["cat", "dog"])


def test_a_folder_with_train_and_test(tmp_path: Path) -> None:
    _solid(tmp_path / "train" / "a" / "1.png", RED)
    _solid(tmp_path / "train" / "b" / "2.png", BLUE)
    _solid(tmp_path / "test" / "a" / "3.png", RED)
    assert len(load_local(tmp_path, "train").dataset) == 2
    assert load_local(tmp_path, "test").dataset.label_names == ("a",)
    with pytest.raises(DatasetError, match="holds train/ and test/; say which split"):
        load_local(tmp_path)


def test_bad_image_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path}: no class sub-folders"):
        load_local(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.txt").write_text("no images")
    with pytest.raises(DatasetError, match=f"{tmp_path}: no PNG or JPEG images"):
        load_local(tmp_path)
    (tmp_path / "cat" / "x.png").write_bytes(b"garbage")
    (tmp_path / "cat" / "y.jpeg").write_bytes(b"")
    with pytest.raises(DatasetError, match=f"{tmp_path}: none of its 2 images decodes"):
        load_local(tmp_path)
    _solid(tmp_path / "cat" / "z.png", RED)
    with pytest.raises(DatasetError, match=r"C 1 \(grayscale\) or 3 \(RGB\)"):
        load_local(tmp_path, input_shape=(2, 8, 8))
    with pytest.raises(DatasetError, match=r"input shape is \(3, 8\)"):
        load_local(tmp_path, input_shape=(3, 8))
    with pytest.raises(DatasetError, match="std must be > 0"):
        load_local(tmp_path, std=0.0)
    with pytest.raises(DatasetError, match="one per channel"):
        load_local(tmp_path, mean=(0.5, 0.5))
    (tmp_path / "data.txt").write_text("?")
    with pytest.raises(DatasetError, match="not local data"):
        load_local(tmp_path / "data.txt")


# --- .npz ---------------------------------------------------------------------------------------


def test_npz_series_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 20))  # float64 windows: 3 channels by 20 steps
    y = np.array([0, 2, 1, 2, 0, 1])
    np.savez(tmp_path / "w.npz", x=x, y=y, labels=np.array(["sit", "walk", "run"]))
    loaded = load_local(tmp_path / "w.npz")
    data = loaded.dataset
    assert loaded.kind == "npz"
    assert data.input_shape == (3, 20)
    assert data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, x.astype(np.float32))
    assert data.y.tolist() == y.tolist()
    assert (data.num_classes, data.label_names) == (3, ("sit", "walk", "run"))
    # No names: the classes are max(y) + 1; integral floats are labels too.
    np.savez(tmp_path / "v.npz", x=x.astype(np.int16), y=y.astype(np.float32))
    plain = load_local(tmp_path / "v.npz").dataset
    assert (plain.num_classes, plain.label_names, str(plain.y.dtype)) == (3, None, "int64")


def test_npz_pixels_and_splits(tmp_path: Path) -> None:
    pixels = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    pixels[1] = 255
    np.savez(tmp_path / "p.npz", x_train=pixels, y_train=[0, 1], x_test=pixels[:1], y_test=[1])
    train = load_local(tmp_path / "p.npz", "train").dataset
    assert train.x[:, 0, 0, 0].tolist() == [-1.0, 1.0]  # uint8: pixels, normalised
    assert load_local(tmp_path / "p.npz", "test").dataset.y.tolist() == [1]
    with pytest.raises(DatasetError, match=r"needs arrays x and y, has \['x_test'"):
        load_local(tmp_path / "p.npz")


def _npz_case(name: str) -> dict[str, Any]:
    x, y = np.zeros((3, 1, 4), np.float32), np.array([0, 1, 1])
    bad_x = x.copy()
    bad_x[1, 0, 2] = np.nan
    cases: dict[str, dict[str, Any]] = {
        "no y": {"x": x},
        "lengths": {"x": x, "y": y[:2]},
        "fraction": {"x": x, "y": np.array([0, 0.5, 1])},
        "negative": {"x": x, "y": np.array([0, -1, 1])},
        "nan": {"x": bad_x, "y": y},
        "inf": {"x": np.full((3, 1, 4), np.inf), "y": y},
        "overflow": {"x": np.full((3, 1, 4), 1e300), "y": y},  # inf as float32
        "rank": {"x": np.zeros((3, 4)), "y": y},
        "text y": {"x": x, "y": np.array(["a", "b", "b"])},
        "2-D y": {"x": x, "y": y[:, None]},
        "text x": {"x": np.array([[["a"]]] * 3), "y": y},
        "empty": {"x": np.zeros((0, 1, 4)), "y": np.zeros(0, int)},
        "few names": {"x": x, "y": y, "labels": np.array(["only"])},
        "object": {"x": np.array([[[None]]] * 3, dtype=object), "y": y},
    }
    return cases[name]


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("no y", r"needs arrays x and y, has \['x'\]"),
        ("lengths", "3 samples but 2 labels"),
        ("fraction", "not integers, e.g. 0.5 at index 1"),
        ("negative", "negative labels, e.g. -1 at index 1"),
        ("nan", "NaN or infinite values .* in 1 samples, the first at index 1"),
        ("inf", "NaN or infinite"),
        ("overflow", "NaN or infinite"),
        ("rank", r"x must be N x C x \.\.\..*got shape \(3, 4\)"),
        ("text y", "integer class indices"),
        ("2-D y", "must be 1-D"),
        ("text x", "integers or floats"),
        ("empty", "no samples"),
        ("few names", "reach class 1, but the array 'labels' names only 1"),
        ("object", "not a readable .npz"),
    ],
)
def test_bad_npz_files_name_the_file_and_the_problem(
    tmp_path: Path, case: str, problem: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **_npz_case(case))
    with pytest.raises(DatasetError, match=problem) as info:
        load_local(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_a_file_that_is_no_npz(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(DatasetError, match=f"{path}: not a readable .npz"):
        load_local(path)


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_with_a_label_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\ufeffa, label ,b,c\n1,0,2,3\n\n4,2,5.5,-6e-1\n")
    loaded = load_local(path)
    data = loaded.dataset
    assert loaded.kind == "csv"
    assert data.input_shape == (1, 3)  # a 1-channel series of the features
    np.testing.assert_allclose(data.x[:, 0], np.array([[1, 2, 3], [4, 5.5, -0.6]]), rtol=1e-6)
    assert (data.y.tolist(), data.num_classes, data.label_names) == ([0, 2], 3, None)


def test_csv_label_last_or_named_with_class_names(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("x,y,activity\n1,2,walk\n3,4,sit\n5,6,walk\n")
    data = load_local(path).dataset
    assert (data.label_names, data.y.tolist()) == (("sit", "walk"), [1, 0, 1])
    assert load_local(path, classes=["walk", "run", "sit"]).dataset.y.tolist() == [0, 2, 0]
    path.write_text("x,y,z\n1,2,3\n3,4,5\n")
    by_name = load_local(path, label_column="x").dataset
    assert (by_name.y.tolist(), by_name.input_shape) == ([1, 3], (1, 2))
    np.testing.assert_array_equal(by_name.x[:, 0], [[2, 3], [4, 5]])


@pytest.mark.parametrize(
    ("text", "kwargs", "problem"),
    [
        ("a,label\n1,0\nzz,1\n", {}, "line 3, column 'a': 'zz' is not a number"),
        ("a,label\n1,0\n,1\n", {}, "line 3, column 'a': '' is not a number"),
        ("a,label\nnan,0\n", {}, "line 2, column 'a': 'nan' is not finite"),
        ("a,label\n1e39,0\n", {}, "'1e39' is not finite"),  # beyond float32
        ("a,label\n1,0.5\n", {}, "line 2: label '0.5' is not a class index"),
        ("a,label\n1,-1\n", {}, "line 2: label '-1' is not a class index"),
        ("a,label\n1,cat\n2,3\n", {}, "mixes class names and numbers .line 3: '3'."),
        ("a,label\n1,\n", {}, "line 2: no label in column 'label'"),
        ("a,label\n1,0\n1,2,3\n", {}, "line 3 has 3 fields, the header 2"),
        ("", {}, "no samples"),
        ("a,label\n", {}, "no samples"),
        ("label\n1\n", {}, "no feature columns besides the label 'label'"),
        ("a,b\n1,2\n", {"label_column": "y"}, r"no column 'y' in the header \['a', 'b'\]"),
        ("a,b\n1,cat\n", {"classes": ["dog"]}, "line 2: label 'cat' is not one of the classes"),
    ],
)
def test_bad_csv_files_name_the_file_and_the_problem(
    tmp_path: Path, text: str, kwargs: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=problem) as info:
        load_local(path, **kwargs)
    assert str(info.value).startswith(f"{path}: ")


def test_a_csv_that_is_no_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\xff")
    with pytest.raises(DatasetError, match="not a readable UTF-8 CSV"):
        load_local(path)


# --- fitting a model ----------------------------------------------------------------------------


def test_check_against_a_model() -> None:
    x = np.zeros((3, 1, 8, 8), np.float32)
    data = ArrayDataset(x, np.array([0, 4, 2]), 5, "d", label_names=tuple("abcde"))
    assert fit_problem(data, (1, 8, 8), 10) is None  # fewer classes than the model: fine
    check_against(data, [1, 8, 8], 5, "cams/")
    with pytest.raises(DatasetError, match=r"^cams/: samples are \(1, 8, 8\), the model takes"):
        check_against(data, (3, 32, 32), 10, "cams/")
    with pytest.raises(
        DatasetError, match=r"the data has 5 classes \(a, b, c, d, e\), the model 4"
    ):
        check_against(data, (1, 8, 8), 4, "cams/")
    loose = ArrayDataset(x, np.array([0, 7, 2]), 5, "d")  # labels beyond its own classes
    assert (
        fit_problem(loose, (1, 8, 8), 6) == "labels run from 0 to 7, the model's classes are 0..5"
    )
    empty = ArrayDataset(x[:0], np.zeros(0, np.int64), 5, "d")
    assert fit_problem(empty, (1, 8, 8), 5) == "no samples"


# --- partitions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme", "canonical"),
    [
        ("iid", PartitionScheme("iid"), "iid"),
        (" label_skew", PartitionScheme("label_skew"), "label_skew"),
        ("Dirichlet: 0.30 ", PartitionScheme("dirichlet", 0.3), "dirichlet:0.3"),
        ("dirichlet:100", PartitionScheme("dirichlet", 100.0), "dirichlet:100"),
        ("dirichlet:1e-3", PartitionScheme("dirichlet", 0.001), "dirichlet:0.001"),
        ("dirichlet:0.123456789", PartitionScheme("dirichlet", 0.123456789), None),
    ],
)
def test_parse_partition(text: str, scheme: PartitionScheme, canonical: str | None) -> None:
    assert parse_partition(text) == scheme
    assert parse_partition(scheme) is scheme
    assert parse_partition(str(scheme)) == scheme  # the canonical text parses back
    if canonical is not None:
        assert str(scheme) == canonical


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("dirichlet", "dirichlet needs a concentration, e.g. dirichlet:0.3"),
        ("dirichlet: ", "needs a concentration"),
        ("dirichlet:abc", "the concentration 'abc' is not a number"),
        ("dirichlet:0", "must be finite and > 0"),
        ("dirichlet:-1", "must be finite and > 0"),
        ("dirichlet:nan", "must be finite and > 0"),
        ("dirichlet:inf", "must be finite and > 0"),
        ("iid:2", "iid takes no parameter"),
        ("shards", "unknown partition 'shards'; choose iid, label_skew or dirichlet:ALPHA"),
        ("", "unknown partition ''"),
    ],
)
def test_bad_partition_text(text: str, problem: str) -> None:
    with pytest.raises(PartitionError, match=problem) as info:
        parse_partition(text)
    assert isinstance(info.value, ValueError)
    with pytest.raises(PartitionError, match="finite ALPHA > 0"):
        PartitionScheme("dirichlet", 0.0)
    with pytest.raises(PartitionError, match="only dirichlet"):
        PartitionScheme("iid", 1.0)


def test_iid_and_label_skew_are_unchanged() -> None:
    # The shards the implementation before the Dirichlet scheme gave for these labels and seed.
    labels = np.arange(12) % 3
    iid = partition_indices(labels, 4, scheme="iid", seed=7)
    skew = partition_indices(labels, 4, scheme=PartitionScheme("label_skew"), seed=7)
    assert [s.tolist() for s in iid] == [[4, 6, 10], [0, 1, 3], [2, 7, 8], [5, 9, 11]]
    assert [s.tolist() for s in skew] == [[8, 11], [3, 4, 9, 10], [0, 5, 6], [1, 2, 7]]


@st.composite
def _labels_and_shards(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    labels = draw(st.lists(st.integers(0, 9), min_size=1, max_size=300))
    return np.array(labels, dtype=np.int64), draw(st.integers(1, len(labels)))


@settings(max_examples=150, deadline=None)
@given(
    case=_labels_and_shards(),
    alpha=st.sampled_from([0.01, 0.1, 0.5, 1.0, 100.0]),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_shards_are_disjoint_non_empty_and_cover_everything(
    case: tuple[np.ndarray, int], alpha: float, seed: int
) -> None:
    labels, num_shards = case
    shards = partition_indices(labels, num_shards, scheme=f"dirichlet:{alpha}", seed=seed)
    assert len(shards) == num_shards
    assert all(len(s) > 0 and s.dtype == np.int64 for s in shards)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(labels)))


def test_dirichlet_is_reproducible_by_seed() -> None:
    labels = np.repeat(np.arange(10), 30)
    first = partition_indices(labels, 6, scheme="dirichlet:0.5", seed=3)
    again = partition_indices(labels, 6, scheme=PartitionScheme("dirichlet", 0.5), seed=3)
    other = partition_indices(labels, 6, scheme="dirichlet:0.5", seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_a_smaller_concentration_skews_labels_and_sizes_more() -> None:
    labels = np.repeat(np.arange(10), 100)

    def skew(alpha: float) -> tuple[float, float]:
        classes, spread = [], []
        for seed in range(5):
            shards = partition_indices(labels, 10, scheme=f"dirichlet:{alpha}", seed=seed)
            # Classes holding at least 5% of a shard: the ones that shape its training.
            classes += [
                (np.bincount(labels[s], minlength=10) >= 0.05 * len(s)).sum() for s in shards
            ]
            sizes = np.array([len(s) for s in shards])
            spread.append(sizes.std() / sizes.mean())
        return float(np.mean(classes)), float(np.mean(spread))

    (classes_01, spread_01), (classes_100, spread_100) = skew(0.1), skew(100.0)
    assert classes_01 < 4 < 9 < classes_100
    assert spread_01 > 0.5 > 0.1 > spread_100  # unequal quantities at small alpha


def test_dirichlet_tops_up_when_draws_leave_a_shard_empty() -> None:
    labels = np.zeros(5, dtype=np.int64)  # one class, as many shards as samples
    shards = partition_indices(labels, 5, scheme="dirichlet:0.01", seed=0)
    assert sorted(len(s) for s in shards) == [1] * 5


def test_shard_takes_a_scheme_text() -> None:
    ds = load_dataset("synthetic", "train", synthetic_size=60)
    parts = [shard(ds, 3, i, scheme="dirichlet:0.3", seed=1) for i in range(3)]
    assert sum(map(len, parts)) == 60


def test_every_entry_point_reads_partitions_with_the_one_parser() -> None:
    from pydantic import ValidationError

    from ares.cli import build_parser
    from device_agent.settings import DeviceSettings
    from testbed.scenario import scenario_from_data

    assert DeviceSettings(partition="Dirichlet:0.50").partition == "dirichlet:0.5"
    with pytest.raises(ValidationError, match="unknown partition 'random'"):
        DeviceSettings(partition="random")
    scenario = {"name": "s", "partition": "dirichlet:1", "devices": [{"id": "d"}]}
    assert scenario_from_data(scenario, "s.yaml").partition == "dirichlet:1"
    with pytest.raises(AresError, match="dirichlet needs a concentration"):
        scenario_from_data({**scenario, "partition": "dirichlet"}, "s.yaml")
    parser = build_parser()
    assert (
        parser.parse_args(["device", "--partition", "dirichlet:0.3"]).partition == "dirichlet:0.3"
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["device", "--partition", "dirichlet:-2"])
