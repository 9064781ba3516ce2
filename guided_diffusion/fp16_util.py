"""
fp16 layers of the UNets. guided-diffusion's MixedPrecisionTrainer (fp32 master weights,
dynamic loss scaling) is the run kit's, since the one training loop uses it for every model;
it is re-exported here under upstream's name.
"""

import torch.nn as nn

from runkit.mixed_precision import INITIAL_LOG_LOSS_SCALE, MixedPrecisionTrainer  # noqa: F401 (upstream API)


def convert_module_to_f16(module):
    """Convert the weights of a convolution layer to float16 (other layers stay fp32)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module):
    """Undo convert_module_to_f16()."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()
