"""Real photographs for the image classifiers' accuracy checks, from scikit-image's wheel.

scikit-image ships a dozen colour images inside its package (``skimage.data``; nothing is
downloaded). ``evaluation(size, batch)`` prepares them as an ImageNet classifier expects
them: the shorter side resized to ``size * 256 / 224``, the centre ``size`` x ``size`` crop,
scaled to [0, 1] and normalized by ImageNet's channel means and deviations, NCHW float32.
Each photograph also comes mirrored, so there are twice as many inputs as photographs.
``calibration(size, count)`` gives other views of the same photographs (random crops of
a third to all of the image, mirrored at random) for a static quantization's calibration,
as a user calibrates on samples of the data the model will see.
"""

from __future__ import annotations

import numpy as np

#: skimage.data functions returning one RGB(A) photograph, and the stereo pair's two views
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
          "immunohistochemistry", "colorwheel", "logo")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def photos() -> list[np.ndarray]:
    """The photographs as float32 HWC arrays in [0, 1] (RGBA composed on white)."""
    import skimage.data as data

    images = [getattr(data, name)() for name in PHOTOS]
    left, right, _ = data.stereo_motorcycle()
    out = []
    for image in images + [left, right]:
        image = image.astype(np.float32) / 255
        if image.shape[-1] == 4:
            alpha = image[..., 3:]
            image = image[..., :3] * alpha + (1 - alpha)
        out.append(image)
    return out


def _square(image: np.ndarray, top: int, left: int, side: int, size: int) -> np.ndarray:
    """The ``side``-pixel square at (top, left) resized to ``size``, as a normalized CHW."""
    from skimage.transform import resize

    crop = image[top:top + side, left:left + side]
    crop = resize(crop, (size, size), anti_aliasing=True).astype(np.float32)
    return ((crop - MEAN) / STD).transpose(2, 0, 1)


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    """The centre crop an ImageNet evaluation takes: size/256*224 of the shorter side."""
    h, w = image.shape[:2]
    side = round(min(h, w) * 224 / 256)
    return _square(image, (h - side) // 2, (w - side) // 2, side, size)


def evaluation(size: int, batch: int) -> list[np.ndarray]:
    """The photographs and their mirror images, ``batch`` to an array (NCHW float32; a
    remainder that does not fill a batch is left out)."""
    views = []
    for image in photos():
        centre = _centre(image, size)
        views += [centre, centre[:, :, ::-1]]
    count = len(views) // batch * batch
    return [np.ascontiguousarray(np.stack(views[i:i + batch]))
            for i in range(0, count, batch)]


def calibration(size: int, batch: int, count: int) -> list[np.ndarray]:
    """``count`` batches of random crops of the photographs (seeded: the same every run)."""
    rng = np.random.default_rng(7)
    images = photos()
    out = []
    for _ in range(count):
        views = []
        for _ in range(batch):
            image = images[rng.integers(len(images))]
            h, w = image.shape[:2]
            side = int(min(h, w) * rng.uniform(0.33, 1.0))
            view = _square(image, int(rng.integers(h - side + 1)),
                           int(rng.integers(w - side + 1)), side, size)
            views.append(view[:, :, ::-1] if rng.random() < 0.5 else view)
        out.append(np.ascontiguousarray(np.stack(views)))
    return out
