"""
The project's two units for images: float [-1, 1] (what networks see, as in guided-diffusion)
and [0, 255] (what files and every score use; variances in [0, 255]^2).
"""

import torch as th

VAR_SCALE = 127.5 ** 2  # [-1, 1]^2 units -> [0, 255]^2 units


def to_float(images_uint8):
    """uint8 [0, 255] -> float32 [-1, 1] (the same arithmetic as guided-diffusion)."""
    return images_uint8.float() / 127.5 - 1


def to_uint8(images):
    """
    float [-1, 1] -> uint8, rounding to the nearest level. (guided-diffusion and the
    original code truncate, which lowers every stored image by half a level on average.)
    """
    return ((images + 1) * 127.5).round().clamp(0, 255).to(th.uint8)


def to_255(images):
    """float [-1, 1] -> float [0, 255], unrounded (same dtype and type: tensor or array)."""
    return (images + 1) * 127.5
