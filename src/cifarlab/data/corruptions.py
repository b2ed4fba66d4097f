"""Common corruptions of CIFAR-10 test images, generated on the fly (CIFAR-10-C-style).

Hendrycks & Dietterich published CIFAR-10-C ("Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019), made by `ImageNet-C/create_c/make_cifar_c.py` in
github.com/hendrycks/robustness. PARAMETERS below are that script's, severity 1 to 5, for 32x32
images. The code is ours (numpy, scipy.ndimage and Pillow, vectorised across images), so the
images are CIFAR-10-C-*style*: the same corruptions at the same strengths, not the published
pixels (other random draws; scipy and numpy in place of OpenCV and scikit-image). Accuracies on
them are labelled "generated, CIFAR-10-C-style", never "CIFAR-10-C".

Left out, because they need what this package does not have: motion blur and snow (ImageMagick's
motion-blur kernel, through Wand), frost (photographs of frost) and spatter (OpenCV's edge
detector and distance transform).

`corrupt(images, name, severity, seed)` is deterministic: the same images, name, severity and seed
give the same bytes, whatever else was generated before.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import numpy as np
import torch

from cifarlab.data.formats import DataError

try:
    from PIL import Image
    from scipy import ndimage
except ModuleNotFoundError as e:  # the core install has neither
    raise DataError(f"generated corruptions need scipy and Pillow ({e}); install them with: pip install 'cifarlab[robustness]'") from None

SEVERITIES = (1, 2, 3, 4, 5)
MAX_SEED = 2**63 - 1  # numpy seeds take non-negative integers; a bound keeps the message short
CHUNK = 1000  # images corrupted at a time (the random draws follow the chunks, so this is part of the result)

# make_cifar_c.py's parameters, one entry per severity 1-5.
PARAMETERS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # standard deviation, pixels in [0, 1]
    "shot_noise": [500, 250, 100, 75, 50],  # photons at full intensity (Poisson)
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # share of values set to 0 or 1
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],  # standard deviation of the multiplicative noise
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],  # sigma in pixels
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # disk radius, its anti-alias sigma
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],  # sigma, max shift, passes
    "zoom_blur": [1.06, 1.11, 1.16, 1.21, 1.26],  # zooms np.arange(1, this, 0.01) averaged with the image
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # fog strength, fractal roughness decay
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # factor on the distance from the image's channel means
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],  # HSV saturation * a + b
    "jpeg_compression": [80, 65, 58, 50, 40],  # Pillow JPEG quality
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # box-downscale to this share of the side, box-upscale back
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    # elastic: displacement alpha, its smoothing sigma, random affine shift of three points; each x 32 pixels
}
CORRUPTIONS = tuple(PARAMETERS)

# The published script's families, for grouping in tables
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("gaussian_blur", "defocus_blur", "glass_blur", "zoom_blur"),
    "weather": ("fog", "brightness"),
    "digital": ("contrast", "saturate", "jpeg_compression", "pixelate", "elastic_transform"),
}


def check_seed(seed) -> int:
    """The seed if numpy can seed with it (a whole number from 0 to MAX_SEED), else a one-line DataError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise DataError(f"corruption seed {seed!r:.40} (--corruption-seed): must be a whole number from 0 to 2**63 - 1")
    return int(seed)


def corrupt(images, name: str, severity: int, seed: int = 0):
    """uint8 images (N, 3, H, W), torch or numpy, corrupted by `name` at `severity` (1-5); same type back."""
    seed = check_seed(seed)
    if name not in PARAMETERS:
        raise DataError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise DataError(f"severity {severity!r}: must be 1 to 5")
    as_torch = isinstance(images, torch.Tensor)
    array = images.cpu().numpy() if as_torch else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] != 3:
        raise DataError(f"corrupt() takes uint8 images (N, 3, H, W), found {array.dtype} {array.shape}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity])  # one stream per (name, severity)
    hwc = array.transpose(0, 2, 3, 1)
    # In chunks: the float temporaries of 10,000 images at once take gigabytes, and time to page in.
    chunks = [_CORRUPT[name](np.ascontiguousarray(hwc[i : i + CHUNK]), PARAMETERS[name][severity - 1], rng) for i in range(0, len(hwc), CHUNK)]
    out = np.ascontiguousarray(np.concatenate(chunks).transpose(0, 3, 1, 2)) if chunks else array.copy()
    return torch.from_numpy(out) if as_torch else out


# ---------------------------------------------------------------- helpers


def _unit(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return x.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8, rounded (the published script truncates: at most one level apart)."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian over the two image axes of (N, H, W[, C]) arrays."""
    sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices outside 0..n-1 reflected half-sample (..., 1, 0 | 0, 1, ... n-1 | n-1, ...): scipy's 'reflect'."""
    i = np.mod(i, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected about the edge pixels (... 1 | 0, 1, ... n-1 | n-2 ...): OpenCV's REFLECT_101."""
    i = np.mod(i, 2 * n - 2)
    return np.where(i < n, i, 2 * n - 2 - i)


def _bilinear(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, edge: Callable) -> np.ndarray:
    """x (N, H, W, C) sampled at float positions rows, cols (N, H, W), linearly, `edge` mapping indices outside."""
    n, h, w, _ = x.shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None].astype(x.dtype), (cols - c0)[..., None].astype(x.dtype)
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    r = (edge(r0, h), edge(r0 + 1, h))
    c = (edge(c0, w), edge(c0 + 1, w))
    k = np.arange(n)[:, None, None]
    top = x[k, r[0], c[0]] * (1 - fc) + x[k, r[0], c[1]] * fc
    bottom = x[k, r[1], c[0]] * (1 - fc) + x[k, r[1], c[1]] * fc
    return top * (1 - fr) + bottom * fr


def _hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv for (..., 3) arrays in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(-1)
    delta = value - rgb.min(-1)
    safe = np.where(delta == 0, 1, delta)
    sat = np.where(value == 0, 0, delta / np.where(value == 0, 1, value))
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = np.where(delta == 0, 0, (hue / 6) % 1)
    return np.stack([hue, sat, value], -1)


def _rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb for (..., 3) arrays."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.stack([np.choose(sector, [c[k] for c in choices]) for k in range(3)], -1)


def _per_image(x: np.ndarray, transform: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """A Pillow transform applied to each uint8 (H, W, 3) image."""
    return np.stack([np.asarray(transform(Image.fromarray(image)).convert("RGB")) for image in x])


# ---------------------------------------------------------------- noise


def gaussian_noise(x, c, rng):
    return _to_uint8(_unit(x) + c * rng.standard_normal(x.shape, dtype=np.float32))


def shot_noise(x, c, rng):
    return _to_uint8(rng.poisson(_unit(x) * c) / c)


def impulse_noise(x, c, rng):
    # skimage's random_noise(mode="s&p"): each value (channel by channel) flipped with probability c, half to 1, half to 0
    flipped = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(flipped, np.where(salt, np.uint8(255), np.uint8(0)), x)


def speckle_noise(x, c, rng):
    unit = _unit(x)
    return _to_uint8(unit + unit * c * rng.standard_normal(x.shape, dtype=np.float32))


# ---------------------------------------------------------------- blur


def gaussian_blur(x, c, rng):
    return _to_uint8(_blur(_unit(x), c))


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c's defocus kernel: a disk on a 17x17 grid, smoothed by a 3x3 Gaussian
    (OpenCV's GaussianBlur), cropped here to its non-zero part (the rest adds nothing)."""
    grid = np.arange(-8, 9)
    rows, cols = np.meshgrid(grid, grid)
    disk = (rows**2 + cols**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))
    taps /= taps.sum()
    for axis in (0, 1):
        disk = ndimage.correlate1d(disk, taps, axis=axis, mode="mirror")
    keep = np.flatnonzero(disk.any(0))
    return disk[keep[0] : keep[-1] + 1, keep[0] : keep[-1] + 1]


def defocus_blur(x, c, rng):
    kernel = _disk(*c).astype(np.float32)[None, :, :, None]
    return _to_uint8(ndimage.correlate(_unit(x), kernel, mode="mirror"))  # OpenCV filter2D's default border


def glass_blur(x, c, rng):
    sigma, delta, passes = c
    # the script rounds down to uint8 between its two blurs
    unit = np.floor(np.clip(_blur(_unit(x), sigma), 0, 1) * 255) / 255
    n, h, w, _ = unit.shape
    k = np.arange(n)
    for _ in range(passes):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                shift = rng.integers(-delta, delta, size=(n, 2))  # dx, dy in [-delta, delta)
                # The published "swap" `x[h, w], x[h', w'] = x[h', w'], x[h, w]` exchanges numpy views, so
                # it copies the neighbour into (h, w) and leaves the neighbour as it was; CIFAR-10-C was
                # made that way, and so is this.
                unit[k, row, col] = unit[k, row + shift[:, 1], col + shift[:, 0]]
    return _to_uint8(_blur(unit, sigma))


def _zoom_matrix(size: int, factor: float) -> np.ndarray:
    """(size, size) matrix M: M @ image @ M.T is make_cifar_c's clipped_zoom: the central
    ceil(size / factor) square, zoomed by `factor` with linear interpolation as
    scipy.ndimage.zoom(order=1) does (corners to corners), trimmed back to the centre `size`."""
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed = int(round(crop * factor))
    trim = (zoomed - size) // 2
    out = np.arange(trim, trim + size)
    source = out * (crop - 1) / (zoomed - 1) if zoomed > 1 else np.zeros(size)
    low = np.minimum(np.floor(source).astype(np.int64), crop - 1)
    frac = source - low
    matrix = np.zeros((size, size))
    matrix[np.arange(size), top + low] += 1 - frac
    matrix[np.arange(size), top + np.minimum(low + 1, crop - 1)] += frac
    return matrix


def zoom_blur(x, c, rng):
    n, h, w, channels = x.shape
    factors = np.arange(1, c, 0.01)  # exactly the published list: 7, 12, 16, 21 or 26 zooms
    # Each zoom is linear, image -> R @ image @ C.T, so the average of the image and its zooms is one
    # (h*w, h*w) matrix: the sum of kron(R, C) over the zooms, plus the identity for the image itself.
    blur = np.eye(h * w)
    for factor in factors:
        blur += np.kron(_zoom_matrix(h, factor), _zoom_matrix(w, factor))
    blur = (blur / (len(factors) + 1)).astype(np.float32)
    planes = _unit(x).transpose(0, 3, 1, 2).reshape(n * channels, h * w)
    return _to_uint8((planes @ blur.T).reshape(n, channels, h, w).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- weather


def plasma_fractal(n: int, size: int, decay: float, rng) -> np.ndarray:
    """n diamond-square height maps (n, size, size) in [0, 1], make_cifar_c's plasma_fractal per image."""
    assert size & (size - 1) == 0, "size must be a power of two"
    maps = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares += np.roll(squares, -1, axis=2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres, corners = maps[:, half::step, half::step], maps[:, ::step, ::step]
        maps[:, ::step, half::step] = wibbled_mean(centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2))
        maps[:, half::step, ::step] = wibbled_mean(centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1))
        step //= 2
        wibble /= decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def fog(x, c, rng):
    strength, decay = c
    unit = _unit(x)
    brightest = unit.max(axis=(1, 2, 3), keepdims=True)
    side = 1 << max(x.shape[1] - 1, x.shape[2] - 1).bit_length()  # a power of two, cropped as the script crops 32 to 32
    haze = plasma_fractal(len(x), side, decay, rng)[:, : x.shape[1], : x.shape[2], None]
    return _to_uint8((unit + strength * haze) * brightest / (brightest + strength))


def brightness(x, c, rng):
    hsv = _hsv(_unit(x))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(_rgb(hsv))


# ---------------------------------------------------------------- digital


def contrast(x, c, rng):
    unit = _unit(x)
    means = unit.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((unit - means) * c + means)


def saturate(x, c, rng):
    scale, shift = c
    hsv = _hsv(_unit(x))
    hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
    return _to_uint8(_rgb(hsv))


def jpeg_compression(x, c, rng):
    def round_trip(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=c)
        return Image.open(buffer)

    return _per_image(x, round_trip)


def pixelate(x, c, rng):
    h, w = x.shape[1:3]
    return _per_image(x, lambda image: image.resize((int(w * c), int(h * c)), Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX))


def _affine_sources(n: int, h: int, w: int, spread: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Source rows and columns (n, h, w) of make_cifar_c's random affine warp: three points around
    the centre each moved by up to `spread` pixels (OpenCV getAffineTransform + warpAffine)."""
    centre, reach = np.array([h, w], np.float32) // 2, min(h, w) // 3
    points = np.array([centre + reach, [centre[0] + reach, centre[1] - reach], centre - reach], np.float32)  # (x, y) pairs
    moved = points + rng.uniform(-spread, spread, size=(n, 3, 2)).astype(np.float32)
    # warpAffine maps each output pixel back to its source: the affine map from the moved points to the originals
    inverse = np.linalg.solve(np.concatenate([moved, np.ones((n, 3, 1))], -1), np.broadcast_to(points, (n, 3, 2)))
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    grid = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3).astype(np.float64)
    source = grid @ inverse  # (n, h*w, 2) as (x, y)
    return source[..., 1].reshape(n, h, w), source[..., 0].reshape(n, h, w)


def elastic_transform(x, c, rng):
    alpha, sigma, spread = (32 * v for v in c)
    n, h, w, _ = x.shape
    rows, cols = _affine_sources(n, h, w, spread, rng)
    warped = _bilinear(_unit(x), rows, cols, _mirror)  # warpAffine's BORDER_REFLECT_101
    dx = _blur(rng.uniform(-1, 1, size=(n, h, w)), sigma, mode="reflect", truncate=3) * alpha
    dy = _blur(rng.uniform(-1, 1, size=(n, h, w)), sigma, mode="reflect", truncate=3) * alpha
    grid_cols, grid_rows = np.meshgrid(np.arange(w), np.arange(h))
    return _to_uint8(_bilinear(warped, grid_rows + dy, grid_cols + dx, _reflect))  # map_coordinates(mode="reflect")


_CORRUPT: dict[str, Callable[[np.ndarray, object, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
    "elastic_transform": elastic_transform,
}
assert set(_CORRUPT) == set(PARAMETERS)
