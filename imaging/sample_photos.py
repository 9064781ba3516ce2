"""
A small ImageNet-style image folder made from the photos that scikit-image ships: what the
tests and benchmarks run the real loading code on, since nothing can be downloaded.
"""

import os

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left")


def photo(name):
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def make_image_folder(folder, num_classes=3, per_class=8, seed=0):
    """
    An ImageNet-like flat folder of JPEGs `n{class:08d}_{i}.JPEG`: random crops (of random
    size and aspect) of the bundled photos, one photo per class.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    names = []
    for c in range(num_classes):
        src = photo(PHOTOS[c % len(PHOTOS)])
        H, W = src.shape[:2]
        for i in range(per_class):
            h = int(rng.integers(min(H, W) // 4, min(H, W) // 2))
            w = int(h * rng.uniform(0.8, 1.4))
            w = min(w, W)
            y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            name = f"n{c:08d}_{i}"
            Image.fromarray(np.ascontiguousarray(src[y0:y0 + h, x0:x0 + w, :3])).save(
                os.path.join(folder, f"{name}.JPEG"), quality=90)
            names.append(name)
    return names
