"""
ImageNet-style super-resolution data: a flat `data_dir` of images named by file name
(`n01440764_10026.JPEG`; any PIL-readable extension), a data-info pickle
`{synset: {"y": class index, "file_names": [...]}}` choosing the images, guided-diffusion's
centre crop, and batches of (bilinear low-res input, high-res target) made on the device.

Per image, the loader does only what must be done per image (decode, crop) and hands
uint8 tensors over; scaling, flips and resampling run batched on the device. Small data
sets are decoded once and kept in memory.
"""

import itertools
import os
import random

import numpy as np
import torch as th
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from imaging import low_res_input, to_float
from runkit import UserError, dist_util, ignore_stop_signals, logger, require_dir
from runkit.fileio import load_pickle

IMAGE_EXTENSIONS = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG", ".bmp", ".webp")


class BadImageError(UserError):
    """A listed image that cannot be decoded (a one-line error, also from loader workers)."""


# ---------------------------------------------------------------------------------------
# Data info
# ---------------------------------------------------------------------------------------

def load_data_info(path, flag="data_info_dict_path"):
    """
    Load a data-info pickle and check it as data, before any work: {synset: {"y": class
    index, "file_names": [str, ...]}} with integer class indices of 0 or more, file names
    that are non-empty strings, no file listed twice (under one class or two), and at least one.
    """
    info = load_pickle(path, flag, what="data-info pickle")
    where = f"{path!r} (--{flag})"
    ok = isinstance(info, dict) and all(
        isinstance(v, dict) and "file_names" in v and isinstance(v["file_names"], (list, tuple))
        for v in info.values()
    )
    if not ok:
        raise UserError(f"{where} is not a data-info pickle of the form "
                        "{synset: {'y': class index, 'file_names': [...]}}")
    listed_under = {}
    for synset, v in info.items():
        y = v.get("y", 0)
        if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer)) or y < 0:
            raise UserError(f"{where}: the class index of {synset!r} is {y!r}, not an integer of 0 or more")
        for name in v["file_names"]:
            if not isinstance(name, str) or not name:
                raise UserError(f"{where}: {synset!r} lists {name!r}, which is not a file name")
            if name in listed_under:
                raise UserError(f"{where}: {name!r} is listed twice (under {listed_under[name]!r} and {synset!r}); "
                                f"each image may be listed once")
            listed_under[name] = synset
    if not listed_under:
        raise UserError(f"{where} lists no images")
    return info


def flatten_data_info(info):
    """[(file_name, y), ...] in the pickle's order (synsets, then their files)."""
    return [(name, int(v.get("y", -1))) for v in info.values() for name in v["file_names"]]


def index_data_dir(data_dir, flag="data_dir"):
    """{file_name: path} for the images of a flat directory (one listdir)."""
    require_dir(data_dir, flag)
    index = {}
    for entry in os.listdir(data_dir):
        stem, ext = os.path.splitext(entry)
        if ext in IMAGE_EXTENSIONS and (stem not in index or ext == ".JPEG"):
            index[stem] = os.path.join(data_dir, entry)
    return index


def resolve_images(data_dir, file_names, data_info_path=None):
    """Paths of the listed images; a missing one is a UserError that names it."""
    index = index_data_dir(data_dir)
    paths = []
    for name in file_names:
        if name not in index:
            listed = f" (listed in {data_info_path!r})" if data_info_path else ""
            raise UserError(f"image {name!r}{listed} is not in --data_dir {data_dir!r} "
                            f"(looked for {name}.JPEG and other image extensions)")
        paths.append(index[name])
    return paths


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------

def center_crop_arr(pil_image, image_size):
    """guided-diffusion's crop: halve with BOX while possible, BICUBIC to size, centre crop."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


IMAGE_CHANNELS = 3  # every image is read as RGB


def _open_rgb(path):
    """
    The decoded image as an 8-bit RGB PIL image; BadImageError (naming the file) when it
    cannot be. 16-bit greyscale (PIL modes I;16*, or I from a 16-bit PNG) is scaled to 8 bits;
    PIL's own convert would clip it, turning almost every pixel white. Other high-depth
    modes (32-bit integers, floats) have no agreed range and are refused.
    """
    try:
        with Image.open(path) as pil_image:
            pil_image.load()
            if pil_image.mode.startswith("I;16") or (pil_image.mode == "I" and pil_image.format == "PNG"):
                wide = np.asarray(pil_image, dtype=np.float64)
                if wide.min() < 0 or wide.max() > 65535:
                    raise ValueError(f"16-bit values outside 0..65535 ({wide.min():g}..{wide.max():g})")
                pil_image = Image.fromarray(np.round(wide * (255 / 65535)).astype(np.uint8), mode="L")
            elif pil_image.mode in ("I", "F") or pil_image.mode.startswith(("I;", "F;")):
                raise ValueError(f"PIL mode {pil_image.mode} (32-bit values) has no 8-bit range; save it as 8 or "
                                 f"16 bits per channel")
            return pil_image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"image {path!r} cannot be read: {e}") from None


def read_image(path):
    """An RGB uint8 HWC array."""
    return np.array(_open_rgb(path))


def require_image_size(paths, image_size, testbed_path):
    """
    A testbed's posterior is exact for images of its prior only: an image of another size
    would be resized and cropped (center_crop_arr) into one the prior never drew. Reads the
    headers only.
    """
    for path in paths:
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, ValueError, SyntaxError) as e:
            raise BadImageError(f"image {path!r} cannot be read: {e}") from None
        if size != (image_size, image_size):
            raise UserError(f"image {path!r} is {size[0]}x{size[1]} px, and the testbed {testbed_path!r} describes "
                            f"{image_size} px images: its exact posterior holds only for the images of its prior")


def load_image(path, image_size):
    """The centre-cropped image as a uint8 CHW tensor."""
    arr = center_crop_arr(_open_rgb(path), image_size)
    return th.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# ---------------------------------------------------------------------------------------
# Datasets and loaders
# ---------------------------------------------------------------------------------------

class ImageDataset(Dataset):
    """Decoded, cropped images as uint8 CHW tensors, with their index."""

    def __init__(self, paths, image_size):
        self.paths = paths
        self.image_size = image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, idx):
        return load_image(self.paths[idx], self.image_size), idx


class _SkipBatches:
    """A batch sampler without its first `skip` batches (their indices are drawn, no image is decoded)."""

    def __init__(self, batch_sampler, skip=0):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self):
        return max(len(self.batch_sampler) - self.skip, 0)


def iterate_images(paths, image_size, batch_size, num_workers=0, shuffle=False, sampler=None,
                   drop_last=False, epoch_seed=0, skip_batches=0):
    """
    Yield (uint8 [B,3,S,S], indices) once over `paths`, without the first `skip_batches`
    batches (a resumed run's place in its epoch). The samplers are the ones DataLoader builds
    for shuffle / sampler / drop_last, drawing from the same generator, so the order is
    DataLoader's own.
    """
    dataset = ImageDataset(paths, image_size)
    generator = th.Generator().manual_seed(epoch_seed)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    loader = DataLoader(
        dataset,
        batch_sampler=_SkipBatches(BatchSampler(sampler, batch_size, drop_last), skip_batches),
        num_workers=num_workers,
        pin_memory=th.cuda.is_available(),
        generator=generator,
        worker_init_fn=ignore_stop_signals,  # the main process stops the run (and them) cleanly
    )
    try:
        yield from loader
    except BadImageError as e:
        # From a loader worker the message carries the worker's traceback: keep its last line.
        raise BadImageError(str(e).strip().splitlines()[-1].split("BadImageError: ", 1)[-1]) from None


def load_all_images(paths, image_size, num_workers=0, batch_size=64):
    """Decode every image once into a uint8 [N,3,S,S] tensor (small data sets)."""
    images = th.empty((len(paths), 3, image_size, image_size), dtype=th.uint8)
    for batch, idx in iterate_images(paths, image_size, batch_size, num_workers):
        images[idx] = batch
    return images


def check_batch_size(num_images, batch_size, data_info_path):
    """
    Before any work: every process must get at least one full batch per epoch, or the
    endless batch iterator would never yield (a run that hangs instead of failing).
    """
    world = dist_util.get_world_size()  # an empty list never gets here: load_data_info refuses it
    if batch_size > num_images // world:
        per_rank = f" for each of the {world} processes" if world > 1 else ""
        raise UserError(f"--batch_size {batch_size} is more than the {num_images // world} training images"
                        f"{per_rank} (--data_info_dict_path {data_info_path!r} lists {num_images}); "
                        f"lower --batch_size or add images")


def training_batches(paths, *, image_size, batch_size, num_workers=4, max_cache_gb=2.0, seed=0, start_batch=0,
                     with_index=False):
    """
    An endless iterator of shuffled uint8 batches [B,3,S,S] for this rank (drop_last).
    Under torch.distributed each rank sees its own shard of every epoch. `start_batch` skips
    that many batches of the sequence (a resumed run continues where the stopped one was,
    without decoding what it skips); `with_index` yields (batch, indices into paths).
    """
    world, rank = dist_util.get_world_size(), dist_util.get_rank()
    cache_gb = len(paths) * 3 * image_size * image_size / 2**30
    if cache_gb <= max_cache_gb:
        logger.log(f"decoding {len(paths)} images into memory ({cache_gb * 1024:.0f} MiB)")
        images = load_all_images(paths, image_size, num_workers)
        generator = th.Generator().manual_seed(seed)
        per_epoch = len(range(rank, len(paths), world)) // batch_size
        for _ in range(start_batch // per_epoch):  # the skipped epochs' permutations
            th.randperm(len(paths), generator=generator)
        skip = start_batch % per_epoch
        while True:
            order = th.randperm(len(paths), generator=generator)
            order = order[rank::world]  # the same permutation on every rank, sharded
            for i in range(skip * batch_size, len(order) - batch_size + 1, batch_size):
                index = order[i:i + batch_size]
                yield (images[index], index) if with_index else images[index]
            skip = 0
    else:
        logger.log(f"streaming {len(paths)} images with {num_workers} loader workers")
        per_epoch = (len(paths) // world if world > 1 else len(paths)) // batch_size
        epoch, skip = divmod(start_batch, per_epoch)
        while True:
            sampler = None
            if world > 1:
                sampler = DistributedSampler(range(len(paths)), num_replicas=world, rank=rank,
                                             shuffle=True, seed=seed, drop_last=True)
                sampler.set_epoch(epoch)
            for batch, index in iterate_images(paths, image_size, batch_size, num_workers, shuffle=True,
                                               sampler=sampler, drop_last=True, epoch_seed=seed + epoch,
                                               skip_batches=skip):
                yield (batch, index) if with_index else batch
            epoch, skip = epoch + 1, 0


def sr_training_pairs(uint8_batches, small_size, device, random_flip=True, seed=0):
    """(bilinear low-res input, high-res target) float batches on the device, with random flips."""
    generator = th.Generator(device=device).manual_seed(seed + dist_util.get_rank())
    for batch in uint8_batches:
        high_res = to_float(batch.to(device, non_blocking=True))
        if random_flip:
            flip = th.rand(high_res.shape[0], device=device, generator=generator) < 0.5
            high_res = th.where(flip[:, None, None, None], high_res.flip(-1), high_res)
        yield low_res_input(high_res, small_size), high_res


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    th.manual_seed(seed)
