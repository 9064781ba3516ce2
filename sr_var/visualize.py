"""
Image tiles for TensorBoard and the verification figures.
"""

import torch as th


def tile(rows):
    """
    A grid image from columns of image batches: `rows` is a list of uint8 [B, 3, H, W]
    (one per column); image b of every column goes on row b. Returns uint8 [3, B*H, n*W].
    """
    grid = th.cat(rows, dim=-1)  # [B, 3, H, n*W]
    return th.cat(list(grid), dim=-2)


def std_to_uint8(var, max_value=None):
    """
    A variance map -> a uint8 image of the standard deviation, each image scaled to its own
    maximum (or to `max_value`, a standard deviation, when given) as the original code does.
    """
    std = var.float().clamp(min=0).sqrt()
    if max_value is None:
        max_value = std.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None, None]
    return (std / max_value * 255).clamp(0, 255).round().to(th.uint8)
