"""
Images as every super-resolution part of the project sees them, beneath the stages and the
testbed alike: the two units ([-1, 1] and [0, 255], `units`), the SR degradation and the
models' input (`resample`), and the metrics on [0, 255] images with their intervals over
images (`metrics`).
"""

from . import metrics, pc_metrics  # noqa: F401
from .resample import area_downsample, bilinear_upsample, low_res_input
from .units import VAR_SCALE, to_255, to_float, to_uint8

__all__ = ["VAR_SCALE", "area_downsample", "bilinear_upsample", "low_res_input", "to_255", "to_float", "to_uint8"]
