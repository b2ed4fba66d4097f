import torch

from cifarlab.data.augment import augment, normalize, random_crop, random_flip


def test_normalize_uses_channel_statistics():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(out[:, 0], torch.tensor(2.0)) and torch.allclose(out[:, 2], torch.tensor(0.5))


def test_flip_mirrors_about_half_the_batch():
    x = torch.arange(32.0).repeat(1000, 3, 32, 1)
    g = torch.Generator().manual_seed(0)
    out = random_flip(x, g)
    flipped = (out[:, 0, 0, 0] == 31).sum().item()
    assert 400 < flipped < 600
    assert torch.equal(out[out[:, 0, 0, 0] == 31], x[out[:, 0, 0, 0] == 31].flip(-1))


def test_crop_is_a_translation_within_pad():
    x = torch.randn(64, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(64):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])]
        assert matches, f"image {i} is not a translated crop"
    assert not torch.equal(out, x)  # some images moved


def test_augment_off_is_identity_and_seeded_is_reproducible():
    x = torch.randn(8, 3, 32, 32)
    assert torch.equal(augment(x, 0, False), x)
    a = augment(x, 4, True, torch.Generator().manual_seed(1))
    b = augment(x, 4, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_normalize_builds_its_constants_once_per_device():
    """No tensor from Python numbers per call: on a GPU that would be a host-to-device copy in every training step."""
    from cifarlab.data.augment import pixel_statistics

    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    normalize(x, [0.5, 0.4, 0.3], (0.2, 0.2, 0.2))  # lists and tuples share one entry
    before = pixel_statistics.cache_info()
    with torch.inference_mode():
        normalize(x, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    normalize(x, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    after = pixel_statistics.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)
    mean, _ = pixel_statistics(x.device, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert not mean.is_inference() and mean.shape == (1, 3, 1, 1)
