"""
Flag defaults and model/diffusion builders, with guided-diffusion's names, plus the
builders of the paper's mean and variance models with the original code's defaults.
"""

import numpy as np

from . import gaussian_diffusion as gd
from .cli import UserError, add_dict_to_argparser, args_to_dict, str2bool  # noqa: F401 (public API)
from .respace import SpacedDiffusion, space_timesteps
from .unet import PlainUNetModel, PrincipalComponentsModel, SuperResModel, UNetModel, VarianceModel

NUM_CLASSES = 1000

# Flag names by role, for naming the flag behind a checkpoint that does not fit.
SR_FLAG_NAMES = {"width": "num_channels", "classes": "class_cond", "out": "learn_sigma",
                 "in": "large_size/small_size", "size": "large_size"}
MEAN_FLAG_NAMES = {"width": "model_channels", "classes": "class_cond", "out": "out_channels",
                   "in": "in_channels", "size": "large_size"}


def diffusion_defaults():
    """Defaults for the diffusion process (image and super-resolution models alike)."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def model_and_diffusion_defaults():
    """Defaults for guided-diffusion's image models."""
    return dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        **diffusion_defaults(),
    )


def sr_model_and_diffusion_defaults():
    """Defaults for the super-resolution (DDPM-SR) models; `channel_mult` is an addition."""
    return dict(
        large_size=256,
        small_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        **diffusion_defaults(),
    )


def parse_channel_mult(channel_mult, image_size, table):
    """A channel_mult flag ("1,1,2,2,4", a tuple, or "" for the table's size default)."""
    if isinstance(channel_mult, (tuple, list)):
        return tuple(channel_mult)
    if channel_mult == "":
        if image_size not in table:
            raise ValueError(f"unsupported image size {image_size}: set --channel_mult")
        return table[image_size]
    return tuple(int(ch_mult) for ch_mult in channel_mult.split(","))


def attention_downsample_rates(attention_resolutions, image_size):
    """Resolutions ("32,16,8") -> the downsample rates the UNet uses (256 px: 8, 16, 32)."""
    return tuple(image_size // int(res) for res in str(attention_resolutions).split(","))


_IMAGE_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                       64: (1, 2, 3, 4)}
_SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
_PLAIN_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4)}


def create_model(image_size, num_channels, num_res_blocks, channel_mult="", learn_sigma=False,
                 class_cond=False, use_checkpoint=False, attention_resolutions="16", num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False, dropout=0,
                 resblock_updown=False, use_fp16=False, use_new_attention_order=False):
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=(3 if not learn_sigma else 6),
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_downsample_rates(attention_resolutions, image_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, image_size, _IMAGE_CHANNEL_MULT),
        num_classes=(NUM_CLASSES if class_cond else None),
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_model_and_diffusion(image_size, class_cond, learn_sigma, num_channels, num_res_blocks,
                               channel_mult, num_heads, num_head_channels, num_heads_upsample,
                               attention_resolutions, dropout, diffusion_steps, noise_schedule,
                               timestep_respacing, use_kl, predict_xstart, rescale_timesteps,
                               rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
                               resblock_updown, use_fp16, use_new_attention_order):
    model = create_model(
        image_size, num_channels, num_res_blocks, channel_mult=channel_mult, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, use_new_attention_order=use_new_attention_order,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule, use_kl=use_kl,
        predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
    )
    return model, diffusion


def sr_create_model(large_size, small_size, num_channels, num_res_blocks, learn_sigma, class_cond,
                    use_checkpoint, attention_resolutions, num_heads, num_head_channels,
                    num_heads_upsample, use_scale_shift_norm, dropout, resblock_updown, use_fp16,
                    channel_mult=""):
    del small_size  # the low-res size is set by the data, not the network
    return SuperResModel(
        image_size=large_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=(3 if not learn_sigma else 6),
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_downsample_rates(attention_resolutions, large_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, large_size, _SR_CHANNEL_MULT),
        num_classes=(NUM_CLASSES if class_cond else None),
        use_checkpoint=use_checkpoint,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
    )


def sr_create_model_and_diffusion(large_size, small_size, class_cond, learn_sigma, num_channels,
                                  num_res_blocks, num_heads, num_head_channels, num_heads_upsample,
                                  attention_resolutions, dropout, diffusion_steps, noise_schedule,
                                  timestep_respacing, use_kl, predict_xstart, rescale_timesteps,
                                  rescale_learned_sigmas, use_checkpoint, use_scale_shift_norm,
                                  resblock_updown, use_fp16, channel_mult=""):
    model = sr_create_model(
        large_size, small_size, num_channels, num_res_blocks, learn_sigma=learn_sigma,
        class_cond=class_cond, use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions,
        num_heads=num_heads, num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm, dropout=dropout, resblock_updown=resblock_updown,
        use_fp16=use_fp16, channel_mult=channel_mult,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, noise_schedule=noise_schedule, use_kl=use_kl,
        predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
    )
    return model, diffusion


NOISE_SCHEDULES = ("linear", "cosine")


def diffusion_from_flags(flags):
    """
    create_gaussian_diffusion from the diffusion_defaults() entries of a flags dict; an
    unknown schedule or a respacing that cannot be made is a one-line UserError.
    """
    if flags["noise_schedule"] not in NOISE_SCHEDULES:
        raise UserError(f"--noise_schedule {flags['noise_schedule']!r} is not one of: {', '.join(NOISE_SCHEDULES)}")
    try:
        return create_gaussian_diffusion(
            steps=flags["diffusion_steps"], learn_sigma=flags["learn_sigma"], noise_schedule=flags["noise_schedule"],
            use_kl=flags["use_kl"], predict_xstart=flags["predict_xstart"],
            rescale_timesteps=flags["rescale_timesteps"],
            rescale_learned_sigmas=flags["rescale_learned_sigmas"], timestep_respacing=flags["timestep_respacing"],
        )
    except ValueError as e:
        raise UserError(f"--timestep_respacing {flags['timestep_respacing']!r} cannot be made from "
                        f"--diffusion_steps {flags['diffusion_steps']}: {e} (write step counts such as 250 or "
                        f"10,20,30, ddimN or logsnrN)") from None


def create_gaussian_diffusion(*, steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear",
                              use_kl=False, predict_xstart=False, rescale_timesteps=False,
                              rescale_learned_sigmas=False, timestep_respacing=""):
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if not timestep_respacing:
        timestep_respacing = [steps]
    if learn_sigma:
        model_var_type = gd.ModelVarType.LEARNED_RANGE
    elif sigma_small:
        model_var_type = gd.ModelVarType.FIXED_SMALL
    else:
        model_var_type = gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing, np.cumprod(1.0 - betas)),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=model_var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


# ---------------------------------------------------------------------------------------
# The paper's mean and variance models (plain UNets without timestep input)
# ---------------------------------------------------------------------------------------

def mean_model_defaults():
    """The original code's defaults for the mean model (what mean_model_args.pkl holds)."""
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
    )


def var_model_defaults():
    """The original code's defaults for the variance model (var_model_args.pkl)."""
    return dict(mean_model_defaults(), last_layer_type="none")


def pc_model_defaults():
    """The posterior principal components model (pc_model_args.pkl): the mean model's flags and K."""
    return dict(mean_model_defaults(), num_pcs=5)


def _plain_unet_kwargs(large_size, model_channels, num_res_blocks, attention_resolutions, dropout,
                       channel_mult, conv_resample, dims, use_checkpoint, use_fp16, num_heads,
                       num_head_channels, num_heads_upsample, resblock_updown, use_new_attention_order,
                       out_channels):
    return dict(
        image_size=large_size,
        model_channels=model_channels,
        out_channels=out_channels,
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_downsample_rates(attention_resolutions, large_size),
        dropout=dropout,
        channel_mult=parse_channel_mult(channel_mult, large_size, _PLAIN_CHANNEL_MULT),
        conv_resample=conv_resample,
        dims=dims,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_mean_model(large_size, small_size, in_channels, model_channels, out_channels, num_res_blocks,
                      attention_resolutions, dropout, channel_mult, conv_resample, dims, use_checkpoint,
                      use_fp16, num_heads, num_head_channels, num_heads_upsample, resblock_updown,
                      use_new_attention_order):
    """The mean model: input the bilinear-upsampled low-res image, output E[x_hr | x_lr]."""
    del small_size
    return PlainUNetModel(
        in_channels=in_channels,
        **_plain_unet_kwargs(large_size, model_channels, num_res_blocks, attention_resolutions, dropout,
                             channel_mult, conv_resample, dims, use_checkpoint, use_fp16, num_heads,
                             num_head_channels, num_heads_upsample, resblock_updown,
                             use_new_attention_order, out_channels),
    )


def create_var_model(large_size, small_size, in_channels, model_channels, out_channels, num_res_blocks,
                     attention_resolutions, dropout, channel_mult, conv_resample, dims, use_checkpoint,
                     use_fp16, num_heads, num_head_channels, num_heads_upsample, resblock_updown,
                     use_new_attention_order, last_layer_type):
    """The variance model: input [low-res, mean-model output] (2 x in_channels), output Var."""
    del small_size
    return VarianceModel(
        in_channels=in_channels,
        last_layer_type=last_layer_type,
        **_plain_unet_kwargs(large_size, model_channels, num_res_blocks, attention_resolutions, dropout,
                             channel_mult, conv_resample, dims, use_checkpoint, use_fp16, num_heads,
                             num_head_channels, num_heads_upsample, resblock_updown,
                             use_new_attention_order, out_channels),
    )


def create_pc_model(large_size, small_size, in_channels, model_channels, out_channels, num_res_blocks,
                    attention_resolutions, dropout, channel_mult, conv_resample, dims, use_checkpoint,
                    use_fp16, num_heads, num_head_channels, num_heads_upsample, resblock_updown,
                    use_new_attention_order, num_pcs):
    """
    The principal components model: input [low-res, mean-model output], output num_pcs
    orthonormal directions of out_channels-channel images and the variance along each.
    """
    del small_size
    if num_pcs < 1:
        raise ValueError(f"num_pcs {num_pcs} must be at least 1")
    return PrincipalComponentsModel(
        in_channels=in_channels,
        image_channels=out_channels,
        num_pcs=num_pcs,
        **_plain_unet_kwargs(large_size, model_channels, num_res_blocks, attention_resolutions, dropout,
                             channel_mult, conv_resample, dims, use_checkpoint, use_fp16, num_heads,
                             num_head_channels, num_heads_upsample, resblock_updown,
                             use_new_attention_order, num_pcs * out_channels),
    )
