"""Datasets: idx parsing, the embedded Fashion-MNIST reader, per-class sampling, imagefolder, normalisation."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import NUM_CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, write_fashion_dir, write_idx
from PIL import Image

from gendistill.data import FASHION_CLASSES, get_dataset, list_datasets, normalize, read_idx

# ----------------------------------------------------------------------------------------------- idx files


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_round_trip(tmp_path, name):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, a)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:8] == (2).to_bytes(4, "big")
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, a)


def test_read_idx_labels(tmp_path):
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    path = write_idx(tmp_path / "labels.gz", y)
    assert gzip.decompress(path.read_bytes())[:4] == b"\x00\x00\x08\x01"
    np.testing.assert_array_equal(read_idx(path), y)


def test_read_idx_truncated(tmp_path):
    path = write_idx(tmp_path / "x.idx", np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "x.idx.gz", np.zeros((4, 5, 5), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(ValueError):
        read_idx(path)


@pytest.mark.parametrize("magic", [b"\x12\x34\x08\x03", b"\x00\x00\x0d\x03", b"PK\x03\x04"])
def test_read_idx_bad_magic(tmp_path, magic):
    path = tmp_path / "x.idx"
    path.write_bytes(magic + b"\x00" * 32)
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)


def test_read_idx_empty_file(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        read_idx(path)


# --------------------------------------------------------------------------------------------- fashion-mnist


def test_fashion_from_env(tiny_idx_dir):
    train = get_dataset("fashion-mnist")
    assert train.name == "fashion-mnist" and train.split == "train"
    assert len(train) == NUM_CLASSES * TRAIN_PER_CLASS
    assert train.images.dtype == torch.uint8 and train.images.shape == (NUM_CLASSES * TRAIN_PER_CLASS, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    assert train.image_shape == (1, 28, 28)
    assert train.num_classes == 10 and train.classes == FASHION_CLASSES
    test = get_dataset("fashion-mnist", "test")
    assert test.split == "test" and len(test) == NUM_CLASSES * TEST_PER_CLASS
    assert not torch.equal(train.images[: len(test)], test.images)


def test_fashion_from_data_dir(tmp_path, monkeypatch):
    d = write_fashion_dir(tmp_path / "plain", train_per_class=3, test_per_class=2, gz=False)
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")
    train = get_dataset("fashion-mnist", "train", data_dir=str(d))
    assert len(train) == 30
    assert len(get_dataset("fashion-mnist", "test", data_dir=str(d))) == 20


def test_fashion_data_dir_wins_over_env(tmp_path):
    d = write_fashion_dir(tmp_path / "other", train_per_class=2, test_per_class=1)
    assert len(get_dataset("fashion-mnist", data_dir=str(d))) == 20


def test_fashion_missing_dir(tmp_path, monkeypatch, no_system_fashion):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("GENDISTILL_FASHION_MNIST_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist") as e:
        get_dataset("fashion-mnist", data_dir=str(empty))
    assert "--data-dir" in str(e.value)
    with pytest.raises(FileNotFoundError, match="GENDISTILL_FASHION_MNIST_DIR"):
        get_dataset("fashion-mnist")
    monkeypatch.delenv("GENDISTILL_FASHION_MNIST_DIR")
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        get_dataset("fashion-mnist", "test")


def test_fashion_missing_label_file(tmp_path):
    d = write_fashion_dir(tmp_path / "partial", train_per_class=1, test_per_class=1)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        get_dataset("fashion-mnist", "test", data_dir=str(d))


def test_fashion_disagreeing_files(tmp_path):
    d = write_fashion_dir(tmp_path / "bad", train_per_class=2, test_per_class=1)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ValueError, match="disagree"):
        get_dataset("fashion-mnist", data_dir=str(d))


def test_fashion_label_out_of_range(tmp_path):
    d = write_fashion_dir(tmp_path / "bad", train_per_class=1, test_per_class=1)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8))
    with pytest.raises(ValueError, match="0..9"):
        get_dataset("fashion-mnist", data_dir=str(d))


def test_unknown_dataset():
    with pytest.raises(ValueError) as e:
        get_dataset("no-such-set")
    for name in ("fashion-mnist", "mnist", "cifar10", "imagefolder"):
        assert name in str(e.value)
    assert "fashion-mnist" in list_datasets()


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        get_dataset("fashion-mnist", "val")


# ------------------------------------------------------------------------------------------ per-class views


def test_class_indices_and_sampling():
    ds = get_dataset("fashion-mnist")
    seen = []
    for c in range(ds.num_classes):
        idx = ds.class_indices(c)
        assert len(idx) == TRAIN_PER_CLASS
        assert (ds.labels[idx] == c).all()
        seen.append(idx)
    assert torch.cat(seen).sort().values.equal(torch.arange(len(ds)))
    g = torch.Generator().manual_seed(0)
    pick = ds.sample_class(3, 7, g)
    assert len(pick) == 7 and len(set(pick.tolist())) == 7
    assert (ds.labels[pick] == 3).all()
    again = ds.sample_class(3, 7, torch.Generator().manual_seed(0))
    assert torch.equal(pick, again)
    everything = ds.sample_class(3, TRAIN_PER_CLASS, g)
    assert sorted(everything.tolist()) == sorted(ds.class_indices(3).tolist())


def test_sample_class_too_many():
    ds = get_dataset("fashion-mnist")
    with pytest.raises(ValueError, match="fewer than"):
        ds.sample_class(0, TRAIN_PER_CLASS + 1)


def test_float_images_and_fingerprint():
    ds = get_dataset("fashion-mnist")
    x = ds.float_images(slice(0, 4))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(ds.images[:4], (x * 255).round().byte())  # float_images did not modify the uint8 data
    assert ds.fingerprint() == get_dataset("fashion-mnist").fingerprint()
    assert ds.fingerprint() != get_dataset("fashion-mnist", "test").fingerprint()


def test_classes_differ():
    ds = get_dataset("fashion-mnist")
    means = torch.stack([ds.float_images(ds.class_indices(c)).mean(0) for c in range(ds.num_classes)])
    d = torch.cdist(means.flatten(1), means.flatten(1))
    assert (d + torch.eye(10) * 1e9).min() > 1.0


def test_meta():
    m = get_dataset("fashion-mnist").meta()
    assert m == {"name": "fashion-mnist", "num_classes": 10, "image_shape": [1, 28, 28], "mean": [0.2860],
                 "std": [0.3530], "classes": FASHION_CLASSES}
    import json

    assert json.loads(json.dumps(m)) == m


def test_image_dataset_validation():
    from gendistill.data import ImageDataset

    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("x", "train", torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ["a"], (0.5,), (0.5,))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset("x", "train", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"],
                     (0.5,), (0.5,))


# -------------------------------------------------------------------------------------------- imagefolder


def _write_folder(root, mode="L", size=(12, 10), per_class=3, classes=("cat", "dog"), seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                a = (rng.integers(0, 100, size=shape) + 120 * c).astype(np.uint8)
                Image.fromarray(a, mode=mode).save(d / f"{i}.png")
            (d / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_grayscale(tmp_path):
    root = _write_folder(tmp_path / "gray", mode="L")
    train = get_dataset("imagefolder", "train", data_dir=str(root))
    assert train.classes == ["cat", "dog"]
    assert train.images.shape == (6, 1, 10, 12) and train.image_shape == (1, 10, 12)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(train.mean) == 1 and len(train.std) == 1
    x = train.float_images()
    assert train.mean[0] == pytest.approx(x.mean().item(), abs=1e-5)
    test = get_dataset("imagefolder", "test", data_dir=str(root))
    assert len(test) == 4 and test.classes == train.classes
    assert test.mean == train.mean and test.std == train.std  # stats come from the train split
    first = np.asarray(Image.open(root / "train" / "cat" / "0.png"))
    assert torch.equal(train.images[0, 0], torch.from_numpy(first.copy()))


def test_imagefolder_rgb(tmp_path):
    root = _write_folder(tmp_path / "rgb", mode="RGB")
    train = get_dataset("imagefolder", "train", data_dir=str(root))
    assert train.images.shape == (6, 3, 10, 12)
    assert len(train.mean) == 3 and len(train.std) == 3
    assert train.meta()["image_shape"] == [3, 10, 12]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        get_dataset("imagefolder")
    with pytest.raises(FileNotFoundError):
        get_dataset("imagefolder", data_dir=str(tmp_path / "nothing"))
    root = _write_folder(tmp_path / "f")
    (root / "test" / "dog").rename(root / "test" / "bird")
    with pytest.raises(ValueError, match="class folders"):
        get_dataset("imagefolder", "test", data_dir=str(root))


# ------------------------------------------------------------------------------------------------- normalize


def test_normalize():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    y = normalize(x, mean, std)
    for c in range(3):
        torch.testing.assert_close(y[:, c], (x[:, c] - mean[c]) / std[c])
    g = normalize(torch.full((1, 1, 2, 2), 0.5), (0.5,), (0.1,))
    assert torch.equal(g, torch.zeros(1, 1, 2, 2))
    assert normalize(x.double(), mean, std).dtype == torch.float64


def test_imagefolder_more_files_than_fd_limit(tmp_path):
    import os
    import resource

    root = tmp_path / "many"
    for split in ("train", "test"):
        for name in ("a", "b"):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(60 if split == "train" else 1):
                Image.fromarray(np.full((4, 4), i, dtype=np.uint8)).save(d / f"{i:03d}.png")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = len(os.listdir("/proc/self/fd")) + 80  # fewer spare descriptors than the 120 train images
    if soft != resource.RLIM_INFINITY and soft < limit:
        pytest.skip("open-file limit already lower than this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        ds = get_dataset("imagefolder", data_dir=str(root))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(ds) == 120


# ------------------------------------------------------------------------------------- image modes and limits


def _folder_of(tmp_path, train_images: dict[str, list], test_images: dict[str, list] | None = None):
    """DIR/{train,test}/<class>/<i>.png from PIL images."""
    for split, images in (("train", train_images), ("test", test_images or train_images)):
        for name, ims in images.items():
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i, im in enumerate(ims):
                im.save(d / f"{i}.png")
    return tmp_path


def test_imagefolder_16_bit_grey_is_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1/255, 128/255 and full scale in 16 bits
    im = Image.fromarray(levels)
    assert im.mode == "I;16"
    root = _folder_of(tmp_path, {"a": [im], "b": [im]})
    train = get_dataset("imagefolder", data_dir=str(root))
    assert train.image_shape == (1, 1, 4)
    assert train.images[0, 0, 0].tolist() == [0, 1, 128, 255]  # Pillow's convert("L") would give 0, 255, 255, 255


def test_imagefolder_16_bit_grey_beside_rgb_images(tmp_path):
    grey = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    rgb = Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8))
    train = get_dataset("imagefolder", data_dir=str(_folder_of(tmp_path, {"a": [grey], "b": [rgb]})))
    assert train.image_shape == (3, 2, 2)
    assert train.images[0].unique().tolist() == [255] and train.images[1].unique().tolist() == [0]


def test_imagefolder_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)  # opaque red
    rgba[0, 1] = (200, 0, 0, 0)  # fully transparent: white, whatever its colour
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black: mid grey
    im = Image.fromarray(rgba, "RGBA")
    train = get_dataset("imagefolder", data_dir=str(_folder_of(tmp_path, {"a": [im], "b": [im]})))
    assert train.image_shape == (3, 1, 3)
    px = train.images[0, :, 0].T.tolist()
    assert px == [[200, 0, 0], [255, 255, 255], [127, 127, 127]]


def test_imagefolder_grey_with_alpha_stays_grey(tmp_path):
    la = Image.fromarray(np.array([[[10, 255], [10, 0]]], dtype=np.uint8), "LA")
    train = get_dataset("imagefolder", data_dir=str(_folder_of(tmp_path, {"a": [la], "b": [la]})))
    assert train.image_shape == (1, 1, 2)
    assert train.images[0, 0, 0].tolist() == [10, 255]


def test_imagefolder_palette_images_with_and_without_transparency(tmp_path):
    palette = [0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6)
    p = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    p.putpalette(palette)
    transparent = p.copy()
    transparent.info["transparency"] = 0  # palette entry 0 is transparent: white
    root = _folder_of(tmp_path, {"a": [p], "b": [transparent]})
    train = get_dataset("imagefolder", data_dir=str(root))
    assert train.image_shape == (3, 1, 2)
    assert train.images[0, :, 0].T.tolist() == [[0, 0, 0], [255, 0, 0]]
    assert train.images[1, :, 0].T.tolist() == [[255, 255, 255], [255, 0, 0]]


def test_imagefolder_grey_with_trns_transparency(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.array([[50, 60]], dtype=np.uint8)).save(path, transparency=50)
    root = _folder_of(tmp_path / "f", {"a": [Image.open(path)], "b": [Image.open(path)]})
    train = get_dataset("imagefolder", data_dir=str(root))
    assert train.image_shape == (1, 1, 2) and train.images[0, 0, 0].tolist() == [255, 60]


def test_imagefolder_refuses_a_decompression_bomb_in_one_line(tmp_path):
    from test_bad_input import png_header_claiming

    root = _folder_of(tmp_path, {"a": [Image.new("L", (4, 4))], "b": [Image.new("L", (4, 4))]})
    (root / "train" / "a" / "huge.png").write_bytes(png_header_claiming(40000, 40000))
    with pytest.raises(ValueError) as e:
        get_dataset("imagefolder", data_dir=str(root))
    msg = str(e.value)
    assert "huge.png" in msg and "1600000000 pixels" in msg and "decompression bomb" in msg and "\n" not in msg


def test_image_pixels_modes():
    from gendistill.data import image_pixels

    assert image_pixels(Image.new("1", (2, 1), 1), gray=True).tolist() == [[255, 255]]
    assert image_pixels(Image.new("L", (1, 1), 7), gray=False).tolist() == [[[7, 7, 7]]]
    assert image_pixels(Image.new("CMYK", (1, 1), (0, 0, 0, 0)), gray=False).tolist() == [[[255, 255, 255]]]
    assert image_pixels(Image.new("RGBA", (1, 1), (10, 20, 30, 255)), gray=False).tolist() == [[[10, 20, 30]]]
    with pytest.raises(ValueError, match="floating-point image"):
        image_pixels(Image.new("F", (1, 1), 0.5), gray=True)
