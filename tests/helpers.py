"""Small data sets for tests, made from photos that scikit-image ships; a folder snapshot."""

import hashlib
import os

from imaging.sample_photos import PHOTOS, make_image_folder, photo  # noqa: F401 (the tests' helpers)


def snapshot(root):
    """{relative path: sha1} of every file under root: to show that nothing was changed."""
    result = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return result
