"""
The paper's networks on guided-diffusion's UNet trunk, without timestep input: the mean
model, the variance model and the posterior principal components model, with the original
code's flag defaults (what the `{kind}_model_args.pkl` files hold) and their builders.
"""

import math

import torch as th
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.script_util import attention_downsample_rates, attention_reached, parse_channel_mult
from guided_diffusion.unet import UNetModel
from runkit import AT_LEAST_ONE, FRACTION, UNSET_OR_AT_LEAST_ONE, UserError, multiple_of

from .quantiles import parse_levels

# Flag names by role, for naming the flag behind a checkpoint that does not fit.
MEAN_FLAG_NAMES = {"width": "model_channels", "classes": "class_cond", "out": "out_channels",
                   "in": "in_channels", "size": "large_size"}
_PLAIN_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4)}


def set_norm_groups(model, groups):
    """
    Every GroupNorm of `model` with `groups` groups (guided-diffusion's are 32: on 32 channels
    that is one channel a group, instance normalisation, which drops each channel's amplitude).
    The parameters are per channel, so checkpoints keep their keys; a count that does not
    divide a layer's channels is a ValueError.
    """
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            if m.num_channels % groups:
                raise ValueError(f"norm_groups {groups} does not divide a normalisation layer's {m.num_channels} "
                                 f"channels")
            m.num_groups = groups


class PlainUNetModel(UNetModel):
    """
    The paper's mean model: the UNet trunk without timestep input, forward(x). An input
    that is not `image_size` square is first resized bilinearly, as in the original code.
    With `residual`, the output is added to the last image of the input (the mean model's:
    the bilinear low-res image), so that an untrained network (its last layer starts at 0)
    predicts that image instead of 0. `norm_groups` as set_norm_groups.
    """

    def __init__(self, *args, residual=False, norm_groups=32, **kwargs):
        super().__init__(*args, use_timestep=False, **kwargs)
        self.residual = residual
        if norm_groups != 32:
            set_norm_groups(self, norm_groups)

    def resize(self, x):
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, (self.image_size, self.image_size), mode="bilinear")
        return x

    def base(self, x, channels):
        """What a residual output is added to: the input's last `channels` channels."""
        return x[:, -channels:]

    def forward(self, x):
        x = self.resize(x)
        out = super().forward(x)
        return out + self.base(x, out.shape[1]) if self.residual else out


class _Exp(nn.Module):
    def forward(self, x):
        return th.exp(x)


class VarianceModel(PlainUNetModel):
    """
    The paper's variance model: a plain UNet on [low-res, mean-model output] (so twice
    `in_channels`), with an optional positive last layer: "none" | "exp" | "sigmoid".
    """

    def __init__(self, image_size, in_channels, *args, last_layer_type="none", **kwargs):
        if kwargs.get("residual"):
            raise ValueError("residual applies to the mean and quantile models, not the variance model")
        super().__init__(image_size, in_channels * 2, *args, **kwargs)
        if last_layer_type == "none":
            self.last_layer = nn.Identity()
        elif last_layer_type == "exp":
            self.last_layer = _Exp()
        elif last_layer_type == "sigmoid":
            self.last_layer = nn.Sigmoid()
        else:
            raise ValueError(f"unknown last_layer_type {last_layer_type!r} (none | exp | sigmoid)")
        self.last_layer_type = last_layer_type

    def forward(self, x):
        return self.last_layer(super().forward(x))


def gram_schmidt(vectors, eps=1e-12):
    """
    Orthonormalise vectors [B, K, D] along K, in order (modified Gram-Schmidt): returns the
    unit vectors [B, K, D] and the norms [B, K] of the vectors before normalisation (after
    removing the earlier ones). Each vector's gradient stops at the vectors before it: trained
    to capture variance, the k-th then captures what the first k - 1 leave, which orders them
    as principal components.
    """
    done, norms = [], []
    for k in range(vectors.shape[1]):
        v = vectors[:, k]
        for q in done:
            q = q.detach()
            v = v - (v * q).sum(dim=-1, keepdim=True) * q
        norm = v.norm(dim=-1, keepdim=True)
        done.append(v / norm.clamp(min=eps))
        norms.append(norm[:, 0])
    return th.stack(done, dim=1), th.stack(norms, dim=1)


class PrincipalComponentsModel(PlainUNetModel):
    """
    Posterior principal components in one forward pass, after NPPC (Nehme et al., NeurIPS
    2023): a plain UNet on [low-res, mean-model output] (twice `in_channels`) whose last
    layer has K direction images. forward(x) returns the directions, orthonormalised by
    Gram-Schmidt as flat vectors [B, K, C, H, W] (float32), and the variance along each
    [B, K]: the squared norm of its image before normalisation, as in NPPC. The direction
    loss sees only where an image points, the variance loss only how long it is, so the two
    do not compete for the output layer. Both in [-1, 1] units.
    """

    def __init__(self, image_size, in_channels, image_channels, num_pcs, *args, **kwargs):
        if kwargs.get("residual"):
            raise ValueError("residual applies to the mean and quantile models, not the PC model")
        super().__init__(image_size, in_channels * 2, *args, **kwargs)
        if num_pcs < 1 or self.out_channels != num_pcs * image_channels:
            raise ValueError(f"num_pcs {num_pcs} must be at least 1, with out_channels K * C")
        self.num_pcs, self.image_channels = num_pcs, image_channels
        # The last conv starts at zero (guided-diffusion's zero_module), and a zero vector has
        # no direction: it starts from PyTorch's default conv init instead, scaled by
        # 1 / sqrt(C H W) so that the squared norms (the variances) start near 0.1, not at D / 10.
        conv = self.out[-1]
        with th.no_grad():
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            conv.weight.mul_((image_channels * image_size ** 2) ** -0.5)

    def forward(self, x):
        raw = super().forward(x).float()
        B, _, H, W = raw.shape
        directions, norms = gram_schmidt(raw.reshape(B, self.num_pcs, -1))
        return directions.reshape(B, self.num_pcs, self.image_channels, H, W), norms ** 2



class QuantileModel(PlainUNetModel):
    """
    Per-pixel conditional quantiles in one forward pass: a plain UNet on the bilinear low-res
    image (and, with condition_on_mean, the mean model's output: twice `in_channels`) whose last
    layer has one image per level. forward(x) returns [B, L, C, H, W] in [-1, 1] units; the
    levels are a buffer (`levels`), so a checkpoint carries them.
    """

    def __init__(self, image_size, in_channels, image_channels, levels, condition_on_mean, *args, **kwargs):
        super().__init__(image_size, in_channels * (2 if condition_on_mean else 1), *args, **kwargs)
        if self.out_channels != len(levels) * image_channels:
            raise ValueError(f"out_channels must be L * C = {len(levels)} * {image_channels}")
        self.image_channels = image_channels
        self.register_buffer("levels", th.tensor(levels, dtype=th.float64))

    def forward(self, x):
        x = self.resize(x)
        raw = UNetModel.forward(self, x)
        B, _, H, W = raw.shape
        out = raw.reshape(B, len(self.levels), self.image_channels, H, W)
        # residual: each level about the input's last image (the mean model's output, or the bilinear low-res)
        return out + self.base(x, self.image_channels)[:, None] if self.residual else out


# Our additions to the paper's networks' flags; their defaults build the original's networks.
ADDED_FLAGS = dict(
    residual=False,  # the output added to the bilinear input (mean) or the last input image (quantile)
    norm_groups=32,  # groups of every GroupNorm (32: guided-diffusion's)
)


def mean_model_defaults():
    """The original code's defaults for the mean model (what mean_model_args.pkl holds), and our additions."""
    return dict(
        large_size=256,
        small_size=64,
        in_channels=3,
        model_channels=128,
        out_channels=3,
        num_res_blocks=2,
        attention_resolutions="16, 8",
        dropout=0.0,
        channel_mult="",
        conv_resample=True,
        dims=2,
        use_checkpoint=False,
        use_fp16=False,
        num_heads=4,
        num_head_channels=-1,
        num_heads_upsample=-1,
        resblock_updown=False,
        use_new_attention_order=False,
        **ADDED_FLAGS,
    )


MEAN_MODEL_RULES = dict(
    large_size=AT_LEAST_ONE, small_size=AT_LEAST_ONE, in_channels=AT_LEAST_ONE, model_channels=AT_LEAST_ONE,
    out_channels=AT_LEAST_ONE, num_res_blocks=AT_LEAST_ONE, dropout=FRACTION, dims=AT_LEAST_ONE,
    num_heads=AT_LEAST_ONE, num_head_channels=UNSET_OR_AT_LEAST_ONE, num_heads_upsample=UNSET_OR_AT_LEAST_ONE,
    norm_groups=AT_LEAST_ONE,
)
SIZE_CHECKS = (multiple_of("large_size", "small_size"), attention_reached("large_size", _PLAIN_CHANNEL_MULT))


def var_model_defaults():
    """The original code's defaults for the variance model (var_model_args.pkl)."""
    return dict(mean_model_defaults(), last_layer_type="none")


def pc_model_defaults():
    """The posterior principal components model (pc_model_args.pkl): the mean model's flags and K."""
    return dict(mean_model_defaults(), num_pcs=5)


def quantile_model_defaults():
    """The quantile model (quantile_model_args.pkl): the mean model's flags, the levels, and its input."""
    return dict(mean_model_defaults(), quantiles="0.05,0.5,0.95", condition_on_mean=False)


VAR_MODEL_RULES = MEAN_MODEL_RULES
PC_MODEL_RULES = dict(MEAN_MODEL_RULES, num_pcs=AT_LEAST_ONE)


def _pcs_fit_the_image(args):
    """Gram-Schmidt gives at most as many orthonormal directions as an image has values."""
    values = args.out_channels * args.large_size ** 2
    if args.num_pcs > values:
        raise UserError(f"--num_pcs {args.num_pcs} is more than the {values} values of a {args.large_size} px image "
                        f"of --out_channels {args.out_channels}: at most {values} orthonormal directions exist")


PC_MODEL_CHECKS = (*SIZE_CHECKS, _pcs_fit_the_image)
QUANTILE_MODEL_RULES = MEAN_MODEL_RULES
QUANTILE_MODEL_CHECKS = (*SIZE_CHECKS, lambda args: parse_levels(args.quantiles))


def _plain_unet_kwargs(flags, defaults, out_channels=None):
    """
    The UNet keywords of a plain model's flags (exactly the keys of `defaults`, as the
    original's keyword-only builders took them: a missing or unknown flag is a TypeError).
    """
    f = {**ADDED_FLAGS, **flags}  # flags of the original code's networks (args pickles, vectors) lack the additions
    if set(f) != set(defaults):
        raise TypeError(f"model flags {sorted(set(f) ^ set(defaults))} missing or unknown")
    return dict(
        in_channels=f["in_channels"],
        image_size=f["large_size"],
        model_channels=f["model_channels"],
        out_channels=f["out_channels"] if out_channels is None else out_channels,
        num_res_blocks=f["num_res_blocks"],
        attention_resolutions=attention_downsample_rates(f["attention_resolutions"], f["large_size"]),
        dropout=f["dropout"],
        channel_mult=parse_channel_mult(f["channel_mult"], f["large_size"], _PLAIN_CHANNEL_MULT),
        conv_resample=f["conv_resample"],
        dims=f["dims"],
        use_checkpoint=f["use_checkpoint"],
        use_fp16=f["use_fp16"],
        num_heads=f["num_heads"],
        num_head_channels=f["num_head_channels"],
        num_heads_upsample=f["num_heads_upsample"],
        resblock_updown=f["resblock_updown"],
        use_new_attention_order=f["use_new_attention_order"],
        residual=f["residual"],
        norm_groups=f["norm_groups"],
    )


def create_mean_model(**flags):
    """The mean model (the flags of mean_model_defaults()): input the bilinear low-res image, output E[x_hr | x_lr]."""
    return PlainUNetModel(**_plain_unet_kwargs(flags, mean_model_defaults()))


def create_var_model(**flags):
    """The variance model (var_model_defaults()): input [low-res, mean-model output] (2 x in_channels), output Var."""
    unet = _plain_unet_kwargs(flags, var_model_defaults())
    return VarianceModel(last_layer_type=flags["last_layer_type"], **unet)


def create_pc_model(**flags):
    """
    The principal components model (pc_model_defaults()): input [low-res, mean-model output],
    output num_pcs orthonormal directions of out_channels-channel images and the variance along each.
    """
    _plain_unet_kwargs(flags, pc_model_defaults())  # the flags' check, before they are read
    num_pcs, channels = flags["num_pcs"], flags["out_channels"]
    if num_pcs < 1:
        raise ValueError(f"num_pcs {num_pcs} must be at least 1")
    return PrincipalComponentsModel(image_channels=channels, num_pcs=num_pcs,
                                    **_plain_unet_kwargs(flags, pc_model_defaults(), num_pcs * channels))


def create_quantile_model(**flags):
    """
    The quantile model (quantile_model_defaults()): input the bilinear low-res image (with
    condition_on_mean, and the mean model's output), output one image per level of `quantiles`.
    """
    _plain_unet_kwargs(flags, quantile_model_defaults())  # the flags' check, before they are read
    levels, channels = parse_levels(flags["quantiles"]), flags["out_channels"]
    unet = _plain_unet_kwargs(flags, quantile_model_defaults(), len(levels) * channels)
    return QuantileModel(image_channels=channels, levels=levels, condition_on_mean=flags["condition_on_mean"], **unet)
