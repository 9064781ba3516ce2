"""
The original code's SimpleCNN (same layers, same state_dict keys, so its checkpoints load),
written in the form that trains fastest on a CPU, and StackedCNN, K of them trained as one
network (the sweep's runs, which differ only in their labels).
"""

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from runkit import AT_LEAST_ONE, UserError
from runkit.fileio import load_model_weights

NUM_CLASSES = 10
# conv1 -> pool -> conv2 -> pool leaves 16 channels of 4x4 on a 28x28 image.
CONV_FEATURES = 16 * 4 * 4


def model_defaults():
    return dict(input_dim=CONV_FEATURES, hidden_dims="128,64")


MODEL_RULES = dict(input_dim=AT_LEAST_ONE)


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


class StackedCNN(nn.Module):
    """
    K SimpleCNNs that see the same images, trained as one network: conv1 is one convolution
    with 6K output channels, conv2 a convolution of K groups, the linear layers batched
    matmuls. forward(x [B, 1, 28, 28]) gives the K models' logits [K, B, 10]. The runs share
    no parameter and Adam is elementwise, so training the stack on the sum of the K losses
    is training each model on its own loss; the wide layers use the CPU better than K
    separate small ones. Parameter `conv1_weight` is the K models' `conv1.weight` stacked.
    """

    def __init__(self, models):
        super().__init__()
        self.num_runs = len(models)
        self.original_keys = {}  # conv1_weight -> conv1.weight
        for key in models[0].state_dict():
            stacked = th.stack([m.state_dict()[key].detach() for m in models]).contiguous()
            name = key.replace(".", "_")
            self.register_parameter(name, nn.Parameter(stacked))
            self.original_keys[name] = key

    def forward(self, x):
        k, b = self.num_runs, x.shape[0]
        # channels_last weights select the faster kernels. clone, not contiguous: conv1's one
        # input channel makes a plain [6K, 1, 5, 5] count as channels_last already.
        conv1_weight = self.conv1_weight.flatten(0, 1).clone(memory_format=th.channels_last)
        conv2_weight = self.conv2_weight.flatten(0, 1).clone(memory_format=th.channels_last)
        x = F.conv2d(x, conv1_weight, self.conv1_bias.flatten())
        x = F.relu(F.max_pool2d(x, 2))
        x = F.conv2d(x, conv2_weight, self.conv2_bias.flatten(), groups=k)
        x = F.relu(F.max_pool2d(x, 2))  # [B, 16K, 4, 4]: model i's channels are 16i..16i+15
        x = x.reshape(b, k, CONV_FEATURES).transpose(0, 1)
        x = F.relu(th.baddbmm(self.fc1_bias[:, None], x, self.fc1_weight.transpose(1, 2)))
        x = F.relu(th.baddbmm(self.fc2_bias[:, None], x, self.fc2_weight.transpose(1, 2)))
        return th.baddbmm(self.fc3_bias[:, None], x, self.fc3_weight.transpose(1, 2))

    def unstack(self, state_dict=None):
        """The K models' state_dicts with SimpleCNN's keys (of `state_dict`, a stack's, if given)."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        return [{self.original_keys[name]: value[i].clone() for name, value in state_dict.items()}
                for i in range(self.num_runs)]


def parse_hidden_dims(hidden_dims):
    """"128,64" -> (128, 64); anything else is a UserError naming --hidden_dims."""
    try:
        dims = tuple(int(d) for d in str(hidden_dims).split(","))
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 1:
        raise UserError(f"--hidden_dims {hidden_dims!r} should be two positive sizes, e.g. 128,64")
    return dims


def create_model(input_dim, hidden_dims, device, num_runs=0, seeds=None):
    """
    A SimpleCNN on `device`, in channels_last memory format (the faster CPU kernels); with
    num_runs >= 1 a StackedCNN of that many, each initialised as a SimpleCNN created here
    at the same point of the random stream would be (so all alike after th.manual_seed),
    or, given `seeds` (one per run), as a SimpleCNN created right after th.manual_seed(seed).
    """
    if input_dim != CONV_FEATURES:
        raise UserError(f"--input_dim {input_dim} must be {CONV_FEATURES} "
                        f"(16 channels x 4 x 4 after the convolutions of a 28x28 image)")
    dims = parse_hidden_dims(hidden_dims)
    if num_runs:
        if seeds is not None and len(seeds) != num_runs:
            raise ValueError(f"{len(seeds)} seeds for {num_runs} runs")
        state = th.random.get_rng_state()
        models = []
        for i in range(num_runs):
            if seeds is None:
                th.random.set_rng_state(state)
            else:
                th.manual_seed(seeds[i])
            models.append(SimpleCNN(input_dim, dims))
        return StackedCNN(models).to(device)
    return SimpleCNN(input_dim, dims).to(device, memory_format=th.channels_last)


def load_weights(model, path, flag):
    """Load a checkpoint strictly, or fail with one line (its shapes follow --hidden_dims)."""
    return load_model_weights(model, path, flag, "hidden_dims")


@th.no_grad()
def predict_logits(model, images, batch_size):
    """The float32 logits [N, 10] (a StackedCNN's: [K, N, 10]) of input images [N, 1, 28, 28], in eval mode."""
    model.eval()
    return th.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)], dim=-2)
