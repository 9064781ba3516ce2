"""
Flag defaults and model/diffusion builders, with guided-diffusion's names. Each defaults
function has its numeric flags' rules beside it (the run kit's flag parser checks them).
"""

import numpy as np

from runkit import AT_LEAST_ONE, FRACTION, UNSET_OR_AT_LEAST_ONE, UserError, comma_list, multiple_of
from runkit.flags import add_dict_to_argparser, args_to_dict, str2bool  # noqa: F401 (upstream API)

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps
from .unet import SuperResModel, UNetModel

NUM_CLASSES = 1000

# Flag names by role, for naming the flag behind a checkpoint that does not fit.
SR_FLAG_NAMES = {"width": "num_channels", "classes": "class_cond", "out": "learn_sigma",
                 "in": "large_size/small_size", "size": "large_size"}


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


DIFFUSION_RULES = dict(diffusion_steps=AT_LEAST_ONE)


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


MODEL_AND_DIFFUSION_RULES = dict(
    num_channels=AT_LEAST_ONE, num_res_blocks=AT_LEAST_ONE, num_heads=AT_LEAST_ONE,
    num_heads_upsample=UNSET_OR_AT_LEAST_ONE, num_head_channels=UNSET_OR_AT_LEAST_ONE, dropout=FRACTION,
    **DIFFUSION_RULES,
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


SR_MODEL_AND_DIFFUSION_RULES = dict(large_size=AT_LEAST_ONE, small_size=AT_LEAST_ONE, **MODEL_AND_DIFFUSION_RULES)
def attention_reached(size_flag, table):
    """
    A flag check: every --attention_resolutions is a resolution the UNet works at (its size
    halved once per --channel_mult level but the last); upstream's image_size // res would
    put a resolution it never reaches (12 at 32 px) silently at another, or nowhere.
    """

    def check(args):
        size = getattr(args, size_flag)
        resolutions = comma_list(args.attention_resolutions, "attention_resolutions", int, example="16,8")
        if not resolutions:  # upstream's int("") would fail inside the model builder
            raise UserError(f"--attention_resolutions {args.attention_resolutions!r} is an empty list; give the "
                            f"resolutions to attend at, e.g. 16,8")
        try:
            mult = parse_channel_mult(comma_list(args.channel_mult, "channel_mult", float, example="1,2,2")
                                      if args.channel_mult else "", size, table)
        except ValueError:
            return  # a size without a default channel_mult: building the model says so
        reached = [size // 2 ** level for level in range(len(mult))]
        never = [r for r in resolutions if r not in reached]
        if never:
            raise UserError(f"--attention_resolutions {args.attention_resolutions!r}: the network works at "
                            f"{', '.join(map(str, reached))} px (--{size_flag} {size}, --channel_mult "
                            f"{args.channel_mult or 'default'}), never at {', '.join(map(str, never))}")

    return check




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
SR_SIZE_CHECKS = (multiple_of("large_size", "small_size"), attention_reached("large_size", _SR_CHANNEL_MULT))


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
    if flags["noise_schedule"] == "linear" and flags["diffusion_steps"] <= 20:
        # upstream's AssertionError (beta > 1), or at 20 steps alphabar_T = 0 and a NaN loss at the last step
        raise UserError(f"--diffusion_steps {flags['diffusion_steps']} with --noise_schedule linear gives a last beta "
                        f"of {20 / flags['diffusion_steps']:g} (the linear betas scale with 1000 / steps and must stay "
                        f"below 1); use more than 20 steps, or --noise_schedule cosine")
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
