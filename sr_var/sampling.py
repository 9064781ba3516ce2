"""
DDPM-SR sampling: many super-resolution samples of each evaluation image, written as

    {output_dir}/{file_name}/low_res.png                       (the small_size input)
    {output_dir}/{file_name}/high_res_samples/sample_{i}.png   (i = 0 .. N-1)

Every file is written atomically and samples are numbered, so a rerun (after a crash or
`kill -9`) counts the valid samples already there and makes only the missing ones; at most
the batch in flight is lost. Images are sharded across MPI ranks.

`--model_path` may also name a testbed description (testbed.json): the sampler then runs the
testbed's exact denoiser instead of a network (`TestbedTeacher`).
"""

import hashlib
import os
import time

import numpy as np
import torch as th

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import UserError
from guided_diffusion.io_util import load_model_weights, png_is_complete, remove_stale_tmp, save_png
from guided_diffusion.script_util import SR_FLAG_NAMES, diffusion_from_flags, sr_create_model_and_diffusion

from .data import area_downsample, flatten_data_info, load_data_info, load_image, resolve_images, to_float, to_uint8
from .testbed import is_testbed_file, load_testbed


def sampling_defaults():
    """Flags of ddpm_sr_sample.py besides the model's (original defaults)."""
    return dict(
        log_dir="",
        output_dir="",
        data_dir="",
        model_path="",
        to_sample_images_dict_path="",
        num_samples_per_image=100,
        batch_size=1,
        use_ddim=False,
        clip_denoised=True,
        local_rank=0,
        seed=0,
        compile=False,  # torch.compile the network: ~1 min to compile, then faster steps on a GPU
    )


class TestbedTeacher(th.nn.Module):
    """
    Stands in for the DDPM-SR network on the exact testbed: returns the exact epsilon
    E[eps | x_t, y] and, for a learned-sigma diffusion, the variance channel that makes the
    sampler's reverse step use the exact per-pixel variance of x_{t-1} given x_t:
    posterior_variance + coef1^2 Var[x_0 | x_t, y].
    """

    def __init__(self, testbed, diffusion, learn_sigma):
        super().__init__()
        if diffusion.rescale_timesteps:
            raise UserError("the testbed teacher needs --rescale_timesteps False")
        self.testbed = testbed
        self.learn_sigma = learn_sigma
        # The sampler calls the model with the base process's timesteps; map them back.
        inverse = np.full(max(diffusion.timestep_map) + 1, -1)
        inverse[diffusion.timestep_map] = np.arange(len(diffusion.timestep_map))
        self.register_buffer("respaced_index", th.from_numpy(inverse), persistent=False)
        for name in ("alphas_cumprod", "posterior_variance", "posterior_mean_coef1",
                     "posterior_log_variance_clipped", "log_betas"):
            self.register_buffer(name, th.from_numpy(getattr(diffusion, name)), persistent=False)
        self.dtype = th.float32

    def forward(self, x, timesteps, low_res=None, y=None):
        del y  # the testbed's posterior does not depend on the class
        j = self.respaced_index[timesteps]
        alpha_bar = self.alphas_cumprod[j]
        x0, var_x0 = self.testbed.denoise(x, alpha_bar, low_res)
        view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
        eps = (x.double() - view(alpha_bar.sqrt()) * x0) / view((1 - alpha_bar).sqrt())
        if not self.learn_sigma:
            return eps.float()
        step_var = view(self.posterior_variance[j]) + view(self.posterior_mean_coef1[j]) ** 2 * var_x0
        min_log, max_log = view(self.posterior_log_variance_clipped[j]), view(self.log_betas[j])
        frac = (th.log(step_var.clamp(min=1e-20)) - min_log) / (max_log - min_log)
        return th.cat([eps, 2 * frac - 1], dim=1).float()


def load_sampler_model(args, model_and_diffusion_args):
    """The DDPM-SR network (or the testbed teacher) and its diffusion."""
    if not args.model_path:
        raise UserError("--model_path is required (OpenAI's 64_256_upsampler.pt, or a testbed.json)")
    if is_testbed_file(args.model_path):
        testbed = load_testbed(args.model_path)
        if testbed.params.large_size != args.large_size or testbed.params.small_size != args.small_size:
            raise UserError(f"the testbed {args.model_path!r} is {testbed.params.small_size}->"
                            f"{testbed.params.large_size} px; set --small_size and --large_size to match")
        diffusion = diffusion_from_flags(model_and_diffusion_args)
        logger.log(f"using the exact testbed teacher {args.model_path}")
        return TestbedTeacher(testbed, diffusion, args.learn_sigma), diffusion
    try:
        model, diffusion = sr_create_model_and_diffusion(**model_and_diffusion_args)
    except ValueError as e:
        raise UserError(f"cannot build the DDPM-SR model from its flags: {e}") from None
    load_model_weights(model, args.model_path, "model_path", SR_FLAG_NAMES)
    return model, diffusion


def sample_images(model, diffusion, low_res, y, num, large_size, *, clip_denoised=True, use_ddim=False,
                  progress=False):
    """`num` samples [num, 3, L, L] (floats in [-1, 1]) for one low-res image [1, 3, l, l]."""
    model_kwargs = {"low_res": low_res.expand(num, -1, -1, -1)}
    if y is not None:
        model_kwargs["y"] = th.full((num,), int(y), device=low_res.device, dtype=th.long)
    loop = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
    return loop(model, (num, 3, large_size, large_size), clip_denoised=clip_denoised,
                model_kwargs=model_kwargs, device=low_res.device, progress=progress)


def sample_path(output_dir, file_name, i):
    return os.path.join(output_dir, file_name, "high_res_samples", f"sample_{i}.png")


def missing_samples(output_dir, file_name, num_samples):
    """Indices of the samples still to make (a sample counts when its PNG is complete)."""
    folder = os.path.join(output_dir, file_name, "high_res_samples")
    if not os.path.isdir(folder):
        return list(range(num_samples))
    remove_stale_tmp(folder)
    present = set(os.listdir(folder))
    return [i for i in range(num_samples)
            if f"sample_{i}.png" not in present or not png_is_complete(sample_path(output_dir, file_name, i))]


def _chunk_seed(seed, file_name, first_index):
    """A seed per (image, first sample of the batch): reruns redraw the same samples."""
    digest = hashlib.sha256(f"{seed}/{file_name}/{first_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


def plan_sampling(args):
    """This rank's work: [(file_name, y, path, missing sample indices)], checked up front."""
    info = load_data_info(args.to_sample_images_dict_path, "to_sample_images_dict_path")
    images = flatten_data_info(info)
    paths = dict(zip((n for n, _ in images),
                     resolve_images(args.data_dir, [n for n, _ in images], args.to_sample_images_dict_path)))
    todo = []
    for file_name, y in dist_util.shard(images):
        missing = missing_samples(args.output_dir, file_name, args.num_samples_per_image)
        if missing:
            todo.append((file_name, y, paths[file_name], missing))
    logger.log(f"{len(images)} images, {args.num_samples_per_image} samples each: this rank has "
               f"{sum(len(m) for *_, m in todo)} samples of {len(todo)} images to make")
    return todo


def run_sampling(args, model, diffusion, todo):
    """Make the samples of `todo` (from plan_sampling)."""
    device = dist_util.dev()
    model.to(device).eval()
    if args.use_fp16:
        if device.type == "cuda":
            model.convert_to_fp16()
        else:
            logger.warn_once("--use_fp16 True needs a GPU; sampling in fp32 on the CPU")
    if args.compile:
        # Fuses the memory-bound GroupNorm/SiLU/casts that dominate a 256 px step on a GPU.
        model = th.compile(model)
    total = sum(len(m) for *_, m in todo)

    bar = logger.progress_bar(total=total, desc="samples", unit="sample")
    start, made = time.time(), 0
    for file_name, y, path, missing in todo:
        high_res = to_float(load_image(path, args.large_size)[None].to(device))
        low_res = area_downsample(high_res, args.small_size)
        low_res_path = os.path.join(args.output_dir, file_name, "low_res.png")
        if not os.path.exists(low_res_path):
            save_png(to_uint8(low_res[0]).permute(1, 2, 0).cpu().numpy(), low_res_path)
        for k in range(0, len(missing), args.batch_size):
            indices = missing[k:k + args.batch_size]
            th.manual_seed(_chunk_seed(args.seed, file_name, indices[0]))
            samples = sample_images(model, diffusion, low_res, y if args.class_cond else None, len(indices),
                                    args.large_size, clip_denoised=args.clip_denoised, use_ddim=args.use_ddim)
            for i, sample in zip(indices, to_uint8(samples).permute(0, 2, 3, 1).cpu().numpy()):
                save_png(sample, sample_path(args.output_dir, file_name, i))
            made += len(indices)
            bar.update(len(indices))
        logger.log(f"{file_name}: {args.num_samples_per_image} samples "
                   f"({made / max(time.time() - start, 1e-9):.2f} samples/s)")
    bar.close()
    dist_util.barrier()
    logger.log("sampling complete")
