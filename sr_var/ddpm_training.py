"""
Training the DDPM-SR upsampler as guided-diffusion's scripts/super_res_train.py does, through
the project's one TrainLoop: a SuperResModel conditioned on the area-downsampled low-res image
(and the class with --class_cond True), the diffusion's training loss (with --learn_sigma True
improved DDPM's hybrid loss: the MSE on eps plus the variational-bound term in bits/dim, whose
gradient reaches only the variance channels), timesteps drawn uniformly or by importance
(guided_diffusion.resample), and EMAs of the weights. Its checkpoints are state_dicts of the
model that ddpm_sr_sample.py builds from the same model and diffusion flags.

What differs from upstream, on purpose:
- Training on a respaced diffusion is refused (--timestep_respacing is a sampling flag; upstream
  would silently train on the kept timesteps only, with their betas).
- Every random draw of a step (flips, timesteps, noise) comes from streams seeded by --seed, the
  rank and the step, and a resumed run continues the data order where the stopped one was, with
  the timestep sampler's history restored: a run stopped and resumed writes the same bytes as
  one that was not stopped (with --dropout 0, the default: dropout draws from torch's global
  stream). Upstream draws from the global streams.
- The timesteps of a step are drawn once for its whole batch (upstream draws per microbatch, the
  loss-aware weights updated in between; the same distribution, as the weights hardly move
  within a step).
- The loss terms per quartile of t are summed on the device and written every --log_interval
  (upstream moves every sample's loss to the CPU at every microbatch).
"""

import numpy as np
import torch as th
import torch.nn.functional as F

from guided_diffusion.resample import SCHEDULE_SAMPLERS, LossAwareSampler, create_named_schedule_sampler
from guided_diffusion.script_util import (
    NUM_CLASSES,
    SR_FLAG_NAMES,
    SR_MODEL_AND_DIFFUSION_RULES,
    SR_SIZE_CHECKS,
    diffusion_from_flags,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from imaging import area_downsample, to_float, to_uint8
from runkit import UserError, check_choice, create_argparser, dist_util, logger
from runkit.training import TrainLoop, parse_resume_step_from_filename

from .data import training_batches
from .training import TRAINING_RULES, ema_rates, loop_flags, open_run_folders, start_training, training_defaults
from .visualize import tile


def ddpm_training_defaults():
    """The flags of sr_ddpm_train.py beyond the mean model's training flags (upstream's defaults)."""
    return dict(
        schedule_sampler="uniform",  # or loss-second-moment (improved DDPM's importance sampling)
        ema_rate="0.9999",  # comma-separated rates; "" keeps no EMA
    )


def _check_training_flags(args):
    if args.timestep_respacing:
        raise UserError(f"--timestep_respacing {args.timestep_respacing!r} is a sampling flag: training uses all "
                        f"--diffusion_steps {args.diffusion_steps} steps, as guided-diffusion's super_res_train.py; "
                        f"leave it out here and give it to ddpm_sr_sample.py")
    ema_rates(args.ema_rate)
    check_choice(args.schedule_sampler, SCHEDULE_SAMPLERS, "schedule_sampler")


class Upsampler:
    """The DDPM-SR upsampler, as the training stage's shared parts see a model kind (sr_var.training)."""

    name, title = "ddpm_sr", "DDPM-SR"
    args_pickle = "ddpm_sr_model_args.pkl"
    defaults = staticmethod(sr_model_and_diffusion_defaults)

    def build(self, model_args):
        """(SuperResModel, its diffusion) from the model and diffusion flags."""
        if model_args["timestep_respacing"]:
            raise UserError(f"the run's flags have timestep_respacing={model_args['timestep_respacing']!r}; "
                            f"training uses every step of the diffusion")
        diffusion_from_flags(model_args)  # an unknown schedule: one line
        try:
            return sr_create_model_and_diffusion(**model_args)
        except (ValueError, TypeError, AssertionError) as e:
            raise UserError(f"cannot build the DDPM-SR model from its flags: {e}") from None


UPSAMPLER = Upsampler()


def training_parser(description=None):
    """The flags of sr_ddpm_train.py: the training loop's, the timestep sampler and EMA, the upsampler's."""
    return create_argparser({**training_defaults(), **ddpm_training_defaults(), **sr_model_and_diffusion_defaults()},
                            rules={**TRAINING_RULES, **SR_MODEL_AND_DIFFUSION_RULES},
                            checks=(*SR_SIZE_CHECKS, _check_training_flags), description=description)


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------

def step_streams(seed, rank, step, device):
    """(a torch generator on `device`, a numpy Generator): the random streams of one step of one rank."""
    torch_seq, numpy_seq = np.random.SeedSequence([seed, rank, step]).spawn(2)
    generator = th.Generator(device=device).manual_seed(int(torch_seq.generate_state(1, np.uint64)[0] >> 1))
    return generator, np.random.default_rng(numpy_seq)


def upsampler_batches(paths, labels, *, large_size, small_size, batch_size, device, schedule_sampler, seed=0,
                      start_step=0, num_workers=4, max_cache_gb=2.0, random_flip=True):
    """
    An endless iterator, from step `start_step` on, of this rank's batches as the loss takes
    them: (high_res [B,3,L,L] in [-1, 1], low_res [B,3,l,l] (area-downsampled), class y [B],
    timesteps t [B], their importance weights [B], noise [B,3,L,L]), all on `device`. Each step
    draws from streams of its own (step_streams), so a resumed run draws what the stopped one
    would have; the timesteps are drawn when the step starts, from the sampler's state then.
    """
    labels = th.as_tensor(labels, dtype=th.long)
    rank = dist_util.get_rank()
    batches = training_batches(paths, image_size=large_size, batch_size=batch_size, num_workers=num_workers,
                               max_cache_gb=max_cache_gb, seed=seed, start_batch=start_step, with_index=True)
    for step, (uint8, index) in enumerate(batches, start_step):
        generator, rng = step_streams(seed, rank, step, device)
        high_res = to_float(uint8.to(device, non_blocking=True))
        if random_flip:
            flip = th.rand(high_res.shape[0], device=device, generator=generator) < 0.5
            high_res = th.where(flip[:, None, None, None], high_res.flip(-1), high_res)
        t, weights = schedule_sampler.sample(high_res.shape[0], device, rng)
        noise = th.randn(high_res.shape, device=device, generator=generator)
        yield high_res, area_downsample(high_res, small_size), labels[index].to(device), t, weights, noise


# ---------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------

class UpsamplerLoss:
    """
    The TrainLoop's loss_fn: the diffusion's training_losses on a microbatch, weighted by the
    timesteps' importance weights and averaged, as upstream's TrainLoop; the terms (`loss`,
    `mse`, `vb`, each weighted) are summed per quartile of t on the device, and `log()` writes
    `mse`, `vb` and `{term}_q{0..3}` (the loop writes `loss`).
    """

    def __init__(self, diffusion, schedule_sampler, class_cond):
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler
        self.class_cond = class_cond
        self._sums = {}  # term -> [4] sums over the samples of each quartile of t
        self._counts = None

    def __call__(self, net, high_res, low_res, y, t, weights, noise):
        model_kwargs = {"low_res": low_res}
        if self.class_cond:
            model_kwargs["y"] = y
        outputs = []

        def model(x, timesteps, **kwargs):  # the network's output, kept for the image tiles
            outputs.append(net(x, timesteps, **kwargs))
            return outputs[-1]

        terms = self.diffusion.training_losses(model, high_res, t, model_kwargs=model_kwargs, noise=noise)
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, terms["loss"].detach())
        self._record(t, {k: v.detach() * weights for k, v in terms.items()})
        return (terms["loss"] * weights).mean(), outputs[0]

    def _record(self, t, terms):
        quartile = 4 * t // self.diffusion.num_timesteps
        if self._counts is None:
            self._counts = th.zeros(4, dtype=th.float64, device=t.device)
        self._counts.index_add_(0, quartile, th.ones_like(t, dtype=th.float64))
        for key, values in terms.items():
            if key not in self._sums:
                self._sums[key] = th.zeros(4, dtype=th.float64, device=t.device)
            self._sums[key].index_add_(0, quartile, values.double())

    def values(self):
        """{name: value} of the terms recorded since the last call (overall and per quartile), and a reset."""
        if self._counts is None:
            return {}
        counts = self._counts.cpu().numpy()
        sums = {key: self._sums[key].cpu().numpy() for key in sorted(self._sums)}  # loss, mse, vb
        out = {key: float(s.sum() / counts.sum()) for key, s in sums.items()}
        for key, s in sums.items():
            out.update({f"{key}_q{q}": float(s[q] / counts[q]) for q in range(4) if counts[q]})
        self._sums, self._counts = {}, None
        return out

    def log(self):
        for key, value in self.values().items():
            if key != "loss":  # the loop's own
                logger.logkv(key, value)


def train_tiles(diffusion, micro, output, large_size):
    """TensorBoard tiles of a microbatch: low-res (nearest) | x_t | the predicted x_0 | high-res."""
    high_res, low_res, _, t, _, noise = (v[:4] for v in micro)
    x_t = diffusion.q_sample(high_res, t, noise=noise)
    pred = diffusion.p_mean_variance(lambda *_, **__: output[:4].float(), x_t, t, clip_denoised=True)["pred_xstart"]
    low_up = F.interpolate(low_res, (large_size, large_size), mode="nearest")
    return tile([to_uint8(v.float().cpu()) for v in (low_up, x_t, pred, high_res)])


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------

def train_upsampler(args, explicit):
    """The body of sr_ddpm_train.py."""
    # Check everything the run needs before the (slow) start, and before writing anything.
    images, paths, resume, model_args = start_training(args, explicit, UPSAMPLER)
    labels = [y for _, y in images]
    if model_args["class_cond"]:
        bad = next(((name, y) for name, y in images if not 0 <= y < NUM_CLASSES), None)
        if bad:
            has = f"class index {bad[1]}" if bad[1] >= 0 else "no class index (its entry has no 'y')"
            raise UserError(f"image {bad[0]!r} has {has} in --data_info_dict_path {args.data_info_dict_path!r}; a "
                            f"class-conditional upsampler (--class_cond True) takes 0..{NUM_CLASSES - 1}")
    model, diffusion = UPSAMPLER.build(model_args)
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)
    rates = ema_rates(args.ema_rate)
    open_run_folders(args, UPSAMPLER, model_args, model, len(paths))
    hybrid = model_args["learn_sigma"] and not model_args["use_kl"]
    logger.log(f"diffusion: {diffusion.num_timesteps} steps, {model_args['noise_schedule']} schedule, loss "
               f"{diffusion.loss_type.name}{' + vb (hybrid)' if hybrid else ''}, timesteps sampled "
               f"{args.schedule_sampler}, EMA rates {', '.join(map(str, rates)) or 'none'}")

    device = dist_util.dev()
    batches = upsampler_batches(paths, labels, large_size=model_args["large_size"],
                                small_size=model_args["small_size"], batch_size=args.batch_size, device=device,
                                schedule_sampler=schedule_sampler, seed=args.seed,
                                start_step=parse_resume_step_from_filename(resume), num_workers=args.num_workers,
                                max_cache_gb=args.max_cache_gb, random_flip=args.random_flip)
    loss = UpsamplerLoss(diffusion, schedule_sampler, model_args["class_cond"])

    def image_fn(step, micro, output):
        logger.write_image("train_images", train_tiles(diffusion, micro, output, model_args["large_size"]), step)

    TrainLoop(
        model=model,
        data=batches,
        loss_fn=loss,
        image_fn=image_fn,
        flag_names=SR_FLAG_NAMES,
        extra_state=schedule_sampler,
        log_fn=loss.log,
        **loop_flags(args, resume),
    ).run_loop()
    logger.log("training complete")
