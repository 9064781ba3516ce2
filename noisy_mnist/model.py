"""
The original code's SimpleCNN (same layers, same state_dict keys, so its checkpoints load),
written in the form that trains fastest on a CPU.
"""

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.cli import UserError
from guided_diffusion.io_util import load_model_weights

NUM_CLASSES = 10
# conv1 -> pool -> conv2 -> pool leaves 16 channels of 4x4 on a 28x28 image.
CONV_FEATURES = 16 * 4 * 4


def model_defaults():
    return dict(input_dim=CONV_FEATURES, hidden_dims="128,64")


class SimpleCNN(nn.Module):
    """conv 1->6 (5x5), ReLU, maxpool 2; conv 6->16 (5x5), ReLU, maxpool 2; fc 256-128-64-10."""

    def __init__(self, input_dim=CONV_FEATURES, hidden_dims=(128, 64), num_classes=NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(input_dim, hidden_dims[0])
        self.fc2 = nn.Linear(hidden_dims[0], hidden_dims[1])
        self.fc3 = nn.Linear(hidden_dims[1], num_classes)

    def forward(self, x):
        # Max-pooling before the ReLU: both are monotone, so they commute (same function,
        # same gradients), and the ReLU then runs on a 4x smaller tensor.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def parse_hidden_dims(hidden_dims):
    """"128,64" -> (128, 64); anything else is a UserError naming --hidden_dims."""
    try:
        dims = tuple(int(d) for d in str(hidden_dims).split(","))
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 1:
        raise UserError(f"--hidden_dims {hidden_dims!r} should be two positive sizes, e.g. 128,64")
    return dims


def create_model(input_dim, hidden_dims, device):
    """A SimpleCNN on `device`, in channels_last memory format (the faster CPU kernels)."""
    if input_dim != CONV_FEATURES:
        raise UserError(f"--input_dim {input_dim} must be {CONV_FEATURES} "
                        f"(16 channels x 4 x 4 after the convolutions of a 28x28 image)")
    model = SimpleCNN(input_dim, parse_hidden_dims(hidden_dims))
    return model.to(device, memory_format=th.channels_last)


def load_weights(model, path, flag):
    """Load a checkpoint strictly, or fail with one line (its shapes follow --hidden_dims)."""
    return load_model_weights(model, path, flag, "hidden_dims")


@th.no_grad()
def predict_logits(model, images, batch_size):
    """The model's float32 logits [N, 10] for input images [N, 1, 28, 28], in eval mode."""
    model.eval()
    return th.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
