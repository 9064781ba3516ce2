"""Small data sets for tests, made from photos that scikit-image ships; a folder snapshot."""

import hashlib
import os

from imaging.sample_photos import PHOTOS, make_image_folder, photo  # noqa: F401 (the tests' helpers)


def photo_folder_run(root, num_classes, per_class, out_dir, num_per_class=1):
    """An ImageNet-style folder root/imagenet/train and its data-info pickles in root/out_dir."""
    from tests.conftest import run_script

    make_image_folder(str(root / "imagenet" / "train"), num_classes=num_classes, per_class=per_class)
    run_script(["scripts/build_data_info.py", "--data_dir", "imagenet/train", "--out_dir", out_dir,
                "--num_per_class", str(num_per_class)], cwd=root)
    return root


def snapshot(root):
    """{relative path: sha1} of every file under root: to show that nothing was changed."""
    result = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return result
