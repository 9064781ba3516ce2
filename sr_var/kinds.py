"""
One object per kind of model (mean, variance, principal components): everything the stages
need to know of a kind, so that training, testing, the verification and the studies call it
instead of branching on a name. Adding a kind is one new subclass here, an entry in KINDS,
and its two stage scripts (docs/conventions.md, "Adding a model kind").

Units: a network works in [-1, 1] units (variances in [-1, 1]^2); `in_255` turns its raw
output into the [0, 255] units (variances [0, 255]^2) that every file and score uses.
"""

import os

import numpy as np
import torch as th
import torch.nn.functional as F

from imaging import VAR_SCALE, to_255, to_uint8
from runkit import UserError
from runkit.fileio import load_pickle, save_pickle, save_png
from runkit.finite import require_finite

from . import networks
from . import principal_components as pcs
from . import quantiles as quantiles_mod
from .data import read_image
from .visualize import std_to_uint8, tile


class ModelKind:
    """What the stages need of one kind of model; subclasses fill in the kind's parts."""

    name = ""  # the kind's name in files and logs: {name}_model_args.pkl, "{name} test"
    title = ""  # in messages: "the {title} model"
    needs_mean_model = True  # its input is [low-res, mean-model output]
    mean_model_optional = False  # a model flag decides whether it takes the mean model's output (uses_mean_model)
    defaults = staticmethod(networks.mean_model_defaults)  # the model's flags (the args pickle's keys)
    rules = networks.MEAN_MODEL_RULES  # their numeric rules
    checks = networks.SIZE_CHECKS
    create = staticmethod(networks.create_mean_model)
    stage = ""  # the test stage that writes its outputs (for messages)

    # -- building ---------------------------------------------------------------------------

    @property
    def args_pickle(self):
        return f"{self.name}_model_args.pkl"

    def build(self, model_args):
        try:
            return self.create(**model_args)
        except (ValueError, TypeError, AssertionError) as e:
            raise UserError(f"cannot build the {self.name} model from its flags: {e}") from None

    @property
    def mean_model_flags(self):
        """Whether the kind's stages take --mean_model_path / --mean_model_args_path."""
        return self.needs_mean_model or self.mean_model_optional

    def uses_mean_model(self, model_args):
        """Whether a model of these flags takes the mean model's output as input."""
        return self.needs_mean_model

    def network_input(self, mean_model, low_res_up):
        """The network's input and the mean model's output (None without a mean model); no gradients."""
        if mean_model is None:
            return low_res_up, None
        with th.no_grad():
            mean = mean_model(low_res_up).float()
        return th.cat([low_res_up, mean], dim=1), mean

    # -- training ---------------------------------------------------------------------------

    def loss(self, net, low_res_up, high_res, mean_model):
        """(mean loss over the batch, the output shown in TensorBoard)."""
        raise NotImplementedError

    def train_tiles(self, micro, shown, mean_model):
        """The TensorBoard tiles of a training microbatch (uint8 [3, H', W'])."""
        raise NotImplementedError

    # -- testing ----------------------------------------------------------------------------

    def predict(self, net, low_res_up, mean_model):
        """(the network's raw output in [-1, 1] units, the mean model's output or None); no gradients."""
        inputs, mean = self.network_input(mean_model, low_res_up)
        with th.no_grad():
            return net(inputs).float(), mean

    def in_255(self, raw):
        """The raw output of a batch in [0, 255] units (variances [0, 255]^2) as float64 arrays."""
        raise NotImplementedError

    def output_paths(self, output_dir, file_name, step):
        """{what: path} of the files the test stage writes for one image."""
        raise NotImplementedError

    def write(self, raw, j, paths, low_res_up):
        """Write image j of a batch's raw output to its `paths`."""
        raise NotImplementedError

    def test_tiles(self, low_res_up, raw, mean):
        """The columns of a test batch's TensorBoard image (uint8 [B, 3, H, W] each)."""
        raise NotImplementedError

    def missing_output(self, path, step_flag):
        return UserError(f"missing {self.title}-model output {path!r}: run {self.stage} with this --output_dir, "
                         f"or set --{step_flag} / --sr_model_output_dir")


class MeanModel(ModelKind):
    """E[x | y] by the MSE to x, from the bilinear low-res input alone."""

    name, title, stage = "mean", "mean", "sr_mean_test.py"
    needs_mean_model = False

    def loss(self, net, low_res_up, high_res, mean_model):
        output = net(low_res_up)
        return F.mse_loss(output.float(), high_res), output

    def train_tiles(self, micro, shown, mean_model):
        low_res_up, high_res = micro
        return tile([to_uint8(t[:4].float().cpu()) for t in (low_res_up, shown, high_res)])

    def in_255(self, raw):
        return to_255(raw.double()).numpy()

    def output_paths(self, output_dir, file_name, step):
        folder = os.path.join(output_dir, file_name)
        return {"low_res": os.path.join(folder, "low_res.png"),
                "mean": os.path.join(folder, f"high_res_mean_{step}.png")}

    def write(self, raw, j, paths, low_res_up):
        save_png(to_uint8(low_res_up[j]).permute(1, 2, 0).cpu().numpy(), paths["low_res"])
        save_png(to_uint8(raw[j]).permute(1, 2, 0).cpu().numpy(), paths["mean"])

    def read(self, paths):
        """The stored output, float64 HWC in [0, 255]."""
        return read_image(paths["mean"]).astype(np.float64)

    def test_tiles(self, low_res_up, raw, mean):
        return [to_uint8(low_res_up.cpu()), to_uint8(raw.cpu())]


class VarianceModel(ModelKind):
    """Var[x | y] by the MSE to (x - m(y))^2, from [low-res, mean-model output]."""

    name, title, stage = "var", "variance", "sr_var_test.py"
    defaults = staticmethod(networks.var_model_defaults)
    rules = networks.VAR_MODEL_RULES
    create = staticmethod(networks.create_var_model)

    def loss(self, net, low_res_up, high_res, mean_model):
        inputs, mean = self.network_input(mean_model, low_res_up)
        output = net(inputs)
        return F.mse_loss(output.float(), (high_res - mean) ** 2), output

    def train_tiles(self, micro, shown, mean_model):
        low_res_up, high_res = micro
        _, mean = self.network_input(mean_model, low_res_up)
        label = (high_res - mean) ** 2
        n = 4
        return tile([to_uint8(low_res_up[:n].cpu()), to_uint8(mean[:n].cpu()),
                     std_to_uint8(shown[:n].cpu()), std_to_uint8(label[:n].cpu())])

    def in_255(self, raw):
        return raw.double().numpy() * VAR_SCALE

    def output_paths(self, output_dir, file_name, step):
        return {"var": os.path.join(output_dir, file_name, f"high_res_var_{step}.pkl")}

    def write(self, raw, j, paths, low_res_up):
        save_pickle((raw[j] * VAR_SCALE).permute(1, 2, 0).cpu().numpy(), paths["var"])

    def read(self, paths):
        """The stored output, float64 HWC in [0, 255]^2."""
        var = np.asarray(load_pickle(paths["var"], what="variance pickle"), dtype=np.float64)
        return require_finite(var, f"variance output {paths['var']!r}")

    def test_tiles(self, low_res_up, raw, mean):
        return [to_uint8(low_res_up.cpu()), to_uint8(mean.cpu()), std_to_uint8(raw.cpu())]


class PrincipalComponentsModel(ModelKind):
    """The top-K directions of Cov[x | y] and the variance along each (after NPPC), from [low-res, mean]."""

    name, title, stage = "pc", "PC", "sr_pc_test.py"
    defaults = staticmethod(networks.pc_model_defaults)
    rules = networks.PC_MODEL_RULES
    checks = networks.PC_MODEL_CHECKS
    create = staticmethod(networks.create_pc_model)

    @staticmethod
    def scaled_directions(directions, variances):
        """sigma_k w_k: each direction at its standard deviation (what the tiles show)."""
        return directions * variances.clamp(min=0).sqrt()[:, :, None, None, None]

    def loss(self, net, low_res_up, high_res, mean_model):
        inputs, mean = self.network_input(mean_model, low_res_up)
        directions, variances = net(inputs)
        return (pcs.principal_components_loss(directions, variances, high_res - mean),
                self.scaled_directions(directions, variances))

    def train_tiles(self, micro, shown, mean_model):
        low_res_up, _ = micro
        _, mean = self.network_input(mean_model, low_res_up)
        n = 4
        columns = [to_uint8(low_res_up[:n].cpu()), to_uint8(mean[:n].cpu())]
        for k in range(min(3, shown.shape[1])):  # mean +- 2 sigma_k w_k
            columns += [to_uint8((mean[:n] + sign * 2 * shown[:n, k]).cpu()) for sign in (1, -1)]
        return tile(columns)

    def predict(self, net, low_res_up, mean_model):
        inputs, mean = self.network_input(mean_model, low_res_up)
        with th.no_grad():
            return net(inputs), mean  # (directions [B, K, C, H, W], variances [B, K])

    def in_255(self, raw):
        """(directions [B, K, C, H, W] (unit flat vectors), variances [B, K] in [0, 255]^2)."""
        directions, variances = raw
        return directions.double().numpy(), variances.double().numpy() * VAR_SCALE

    def output_paths(self, output_dir, file_name, step):
        return {"pcs": pcs.pcs_path(output_dir, file_name, step)}

    def write(self, raw, j, paths, low_res_up):
        directions, variances = raw
        pcs.save_pcs(paths["pcs"], directions[j].permute(0, 2, 3, 1).cpu().numpy(),
                     variances[j].cpu().numpy() * VAR_SCALE)

    def test_tiles(self, low_res_up, raw, mean):  # mean +- 2 sigma_k w_k for the first three
        shown = self.scaled_directions(*raw)
        return [to_uint8(low_res_up.cpu()), to_uint8(mean.cpu())] + [
            to_uint8((mean + sign * 2 * shown[:, k]).cpu()) for k in range(min(3, shown.shape[1])) for sign in (1, -1)]


class QuantileModelKind(ModelKind):
    """
    Per-pixel conditional quantiles at --quantiles by the pinball loss on x (their conditional
    risk minimisers), from the low-res input, or with --condition_on_mean True from [low-res,
    mean-model output] as the variance model. The output is sorted along the levels before it
    is written, and the share of pixels that needed it is written beside it.
    """

    name, title, stage = "quantile", "quantile", "sr_quantile_test.py"
    needs_mean_model = False
    mean_model_optional = True
    defaults = staticmethod(networks.quantile_model_defaults)
    rules = networks.QUANTILE_MODEL_RULES
    checks = networks.QUANTILE_MODEL_CHECKS
    create = staticmethod(networks.create_quantile_model)

    def uses_mean_model(self, model_args):
        return bool(model_args["condition_on_mean"])

    def loss(self, net, low_res_up, high_res, mean_model):
        inputs, _ = self.network_input(mean_model, low_res_up)
        quantiles = net(inputs)
        levels = (net.module if hasattr(net, "module") else net).levels
        return quantiles_mod.pinball_loss(quantiles, high_res, levels), quantiles

    def train_tiles(self, micro, shown, mean_model):
        low_res_up, high_res = micro
        n, mid = 4, shown.shape[1] // 2
        width = (shown[:n, -1] - shown[:n, 0]).clamp(min=0)
        return tile([to_uint8(low_res_up[:n].cpu()), to_uint8(shown[:n, mid].float().cpu()),
                     std_to_uint8(width.square().float().cpu()), to_uint8(high_res[:n].cpu())])

    def predict(self, net, low_res_up, mean_model):
        inputs, mean = self.network_input(mean_model, low_res_up)
        with th.no_grad():
            return (net(inputs).float(), net.levels.double()), mean

    def in_255(self, raw):
        """(quantiles [B, L, C, H, W] in [0, 255] units, levels [L])."""
        quantiles, levels = raw
        return to_255(quantiles.double()).numpy(), levels.numpy()

    def output_paths(self, output_dir, file_name, step):
        return {"quantiles": quantiles_mod.quantiles_path(output_dir, file_name, step)}

    def write(self, raw, j, paths, low_res_up):
        quantiles, levels = raw
        quantiles_mod.save_quantiles(paths["quantiles"], levels.cpu().numpy(), to_255(quantiles[j].double()).cpu().numpy())

    def test_tiles(self, low_res_up, raw, mean):
        quantiles, _ = raw
        mid = quantiles.shape[1] // 2
        width = (quantiles[:, -1] - quantiles[:, 0]).clamp(min=0)
        return [to_uint8(low_res_up.cpu()), to_uint8(quantiles[:, mid].cpu()), std_to_uint8(width.square().cpu())]


MEAN, VAR, PC, QUANTILE = MeanModel(), VarianceModel(), PrincipalComponentsModel(), QuantileModelKind()
KINDS = {kind.name: kind for kind in (MEAN, VAR, PC, QUANTILE)}
