"""
The super-resolution degradation and the models' input: area (box) downsampling, bilinear
upsampling back to the high-res size.
"""

import torch.nn.functional as F


def area_downsample(images, small_size):
    """The low-res image: area (box) averaging to small_size."""
    return F.interpolate(images, small_size, mode="area")


def bilinear_upsample(images, large_size):
    """The mean/variance models' input: the low-res image resized bilinearly to large_size."""
    return F.interpolate(images, (large_size, large_size), mode="bilinear")


def low_res_input(high_res, small_size):
    """Area down to small_size, then bilinear back up: the mean model's input."""
    return bilinear_upsample(area_downsample(high_res, small_size), high_res.shape[-1])
