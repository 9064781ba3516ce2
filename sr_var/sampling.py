"""
DDPM-SR sampling: many super-resolution samples of each evaluation image, written as

    {output_dir}/{file_name}/low_res.png                       (the small_size input)
    {output_dir}/{file_name}/high_res_samples/sample_{i}.png   (i = 0 .. N-1)

Every file is written atomically and samples are numbered, so a rerun (after a crash or
`kill -9`) counts the valid samples already there and makes only the missing ones; at most
the batch in flight is lost. Images are sharded across MPI ranks.

Every sample has a random stream of its own (seeded by --seed, the image and the sample's
index), so its content does not depend on the batch it was drawn in: a rerun that redraws a
lost sample redraws the same one. The folder records the flags that decide the samples
(`sampling_flags.json`); a rerun with other ones is refused, so a folder never mixes two
samplers' work.

`--model_path` may also name a testbed description (testbed.json); `--teacher` then picks
what stands in for the network:
    ideal_ddpm (the default there)  the exact eps and per-pixel variance through the sampler:
                                    the best a guided-diffusion upsampler sampled as the
                                    paper samples it can do (`TestbedTeacher`)
    exact                           the chain of exact reverse transitions: exact posterior
                                    samples at any step count (`ExactTestbedTeacher`)
"""

import hashlib
import os
import time

import numpy as np
import torch as th

from guided_diffusion import samplers
from guided_diffusion.samplers import SAMPLERS
from guided_diffusion.script_util import NUM_CLASSES, SR_FLAG_NAMES, diffusion_from_flags, sr_create_model_and_diffusion
from imaging import area_downsample, to_float, to_uint8
from runkit import AT_LEAST_ONE, NON_NEGATIVE, UserError, check_choice, check_stop, dist_util, logger
from runkit.fileio import load_model_weights, png_is_complete, record_run_flags, remove_stale_tmp, save_png
from runkit.finite import require_finite
from testbed import ExactTestbedTeacher, TestbedTeacher, is_testbed_file, load_testbed

from .data import IMAGE_CHANNELS, flatten_data_info, load_data_info, load_image, require_image_size, resolve_images


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
        teacher="",  # with a testbed.json --model_path: ideal_ddpm (the default there) or exact
        sampler="ancestral",  # ancestral, ddim, dpmpp_2m, dpmpp_2m_sde, analytic_ddim (guided_diffusion.samplers)
        eta=0.0,  # the noise of ddim and analytic_ddim (0: deterministic DDIM; 1: the ancestral process)
    )


SAMPLING_RULES = dict(num_samples_per_image=AT_LEAST_ONE, batch_size=AT_LEAST_ONE, local_rank=NON_NEGATIVE,
                      seed=NON_NEGATIVE, eta=NON_NEGATIVE)


def sampler_name(args):
    """The sampler that --sampler (and the seed's --use_ddim, a synonym of --sampler ddim) ask for."""
    name = check_choice(args.sampler, SAMPLERS, "sampler")
    if args.use_ddim:
        if name not in ("ancestral", "ddim"):
            raise UserError(f"--use_ddim True asks for DDIM, --sampler {name}; give one of them")
        return "ddim"
    return name


TEACHERS = ("ideal_ddpm", "exact")


class SampleNoise:
    """
    Standard normals and uniforms from one random stream per sample, so that a sample's
    content never depends on which other samples share its batch. Each stream is drawn a
    chunk of steps at a time (the chunk fixed by the draw's size alone), which keeps the
    per-sample Python work out of the step loop.
    """

    CHUNK_BYTES = 16 * 2**20  # per sample and shape: 21 steps of a 256 px image, 32 of smaller

    def __init__(self, seeds, device):
        self.device = th.device(device)
        self.generators = [th.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        self._buffers = {}  # (shape, dtype) -> (draws [B, chunk, *shape], next index)

    def __len__(self):
        return len(self.generators)

    def _draw(self, key, make):
        draws, used = self._buffers.get(key, (None, 0))
        if draws is None or used == draws.shape[1]:
            draws, used = th.stack([make(g) for g in self.generators]), 0
        self._buffers[key] = (draws, used + 1)
        return draws[:, used]

    def normal(self, shape, dtype=th.float32):
        """[B, *shape] standard normals, row b from stream b."""
        shape = tuple(shape)
        chunk = int(min(32, max(1, self.CHUNK_BYTES // (4 * int(np.prod(shape))))))
        return self._draw(("normal", shape), lambda g: th.randn((chunk, *shape), generator=g, device=self.device)
                          ).to(dtype)

    def uniform(self):
        """[B] uniforms in [0, 1), float64."""
        return self._draw(("uniform",), lambda g: th.rand(32, generator=g, device=self.device, dtype=th.float64))

    def like(self, x):
        """A draw shaped like x [B, ...]: the noise_fn of the diffusion's samplers."""
        return self.normal(x.shape[1:], x.dtype)


def sample_seed(seed, file_name, index):
    """The seed of sample `index` of an image: reruns redraw exactly the same sample."""
    digest = hashlib.sha256(f"{seed}/{file_name}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


def load_sampler_model(args, model_and_diffusion_args):
    """The DDPM-SR network (or a testbed teacher) and its diffusion."""
    if not args.model_path:
        raise UserError("--model_path is required (OpenAI's 64_256_upsampler.pt, or a testbed.json)")
    sampler_name(args)
    if args.teacher and not is_testbed_file(args.model_path):
        raise UserError(f"--teacher {args.teacher} needs a testbed description (testbed.json) as --model_path; "
                        f"with a network checkpoint leave --teacher out")
    if is_testbed_file(args.model_path):
        teacher = check_choice(args.teacher or "ideal_ddpm", TEACHERS, "teacher")
        if teacher == "exact" and sampler_name(args) != "ancestral":
            raise UserError(f"--teacher exact draws exact reverse transitions; --sampler {sampler_name(args)} "
                            f"(or --use_ddim) does not apply to it")
        testbed = load_testbed(args.model_path, sizes=(args.large_size, args.small_size), channels=IMAGE_CHANNELS)
        diffusion = diffusion_from_flags(model_and_diffusion_args)
        logger.log(f"using the testbed teacher {teacher!r} of {args.model_path}")
        if teacher == "exact":
            return ExactTestbedTeacher(testbed, diffusion), diffusion
        return TestbedTeacher(testbed, diffusion, args.learn_sigma), diffusion
    diffusion_from_flags(model_and_diffusion_args)  # an unknown schedule or respacing: one line
    try:
        model, diffusion = sr_create_model_and_diffusion(**model_and_diffusion_args)
    except ValueError as e:
        raise UserError(f"cannot build the DDPM-SR model from its flags: {e}") from None
    load_model_weights(model, args.model_path, "model_path", SR_FLAG_NAMES)
    return model, diffusion


# The flags that decide what a sample is: a rerun into the same --output_dir must keep them
# (--num_samples_per_image, --batch_size, --use_fp16 and --compile may change).
SAMPLE_FLAGS = ("large_size", "small_size", "class_cond", "learn_sigma", "diffusion_steps", "noise_schedule",
                "timestep_respacing", "clip_denoised", "seed", "eta")


def record_sampling_flags(args, write=True):
    """
    {output_dir}/sampling_flags.json: written by the first run, and a rerun that contradicts
    it is refused (write=False: only the check, before the folder is locked).
    """
    flags = {k: getattr(args, k) for k in SAMPLE_FLAGS}
    flags["sampler"] = sampler_name(args)
    if is_testbed_file(args.model_path):
        flags["teacher"] = args.teacher or "ideal_ddpm"
        flags["model"] = load_testbed(args.model_path).to_json()
    else:
        flags["model"] = f"{os.path.basename(args.model_path)} ({os.path.getsize(args.model_path)} bytes)"
    if dist_util.get_rank() == 0:
        record_run_flags(os.path.join(args.output_dir, "sampling_flags.json"), flags, "output_dir", write)
    dist_util.barrier()


def sample_images(model, diffusion, low_res, y, seeds, large_size, *, clip_denoised=True, sampler="ancestral",
                  eta=0.0, progress=False):
    """
    One sample per seed, [len(seeds), 3, L, L] floats in [-1, 1], for one low-res image
    [1, 3, l, l] (or one per seed, [len(seeds), 3, l, l], with y a class or one per seed);
    sample b comes from the random stream of seeds[b] alone.
    """
    noise = SampleNoise(seeds, low_res.device)
    num = len(noise)
    if isinstance(model, ExactTestbedTeacher):
        return model.sample(low_res.expand(num, -1, -1, -1), noise)
    model_kwargs = {"low_res": low_res.expand(num, -1, -1, -1)}
    if y is not None:
        model_kwargs["y"] = th.as_tensor(y, device=low_res.device, dtype=th.long).expand(num)
    shape = (num, 3, large_size, large_size)
    return samplers.sample(diffusion, model, shape, sampler=sampler, eta=eta, noise=noise.normal(shape[1:]),
                           noise_fn=noise.like, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                           device=low_res.device, progress=progress)


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


def plan_sampling(args):
    """This rank's work: [(file_name, y, path, missing sample indices)], checked up front."""
    info = load_data_info(args.to_sample_images_dict_path, "to_sample_images_dict_path")
    images = flatten_data_info(info)
    if args.class_cond:
        bad = [(name, y) for name, y in images if not 0 <= y < NUM_CLASSES]
        if bad:
            has = f"class index {bad[0][1]}" if bad[0][1] >= 0 else "no class index (its entry has no 'y')"
            raise UserError(f"image {bad[0][0]!r} has {has} in --to_sample_images_dict_path "
                            f"{args.to_sample_images_dict_path!r}; a class-conditional model (--class_cond True) "
                            f"takes 0..{NUM_CLASSES - 1}")
    paths = dict(zip((n for n, _ in images),
                     resolve_images(args.data_dir, [n for n, _ in images], args.to_sample_images_dict_path)))
    if is_testbed_file(args.model_path):
        require_image_size(paths.values(), args.large_size, args.model_path)
    todo = []
    for file_name, y in dist_util.shard(images):
        missing = missing_samples(args.output_dir, file_name, args.num_samples_per_image)
        if missing:
            todo.append((file_name, y, paths[file_name], missing))
    logger.log(f"{len(images)} images, {args.num_samples_per_image} samples each: this rank has "
               f"{sum(len(m) for *_, m in todo)} samples of {len(todo)} images to make")
    return todo


def use_fp16_where_it_applies(model, device, use_fp16):
    """fp16 for a network on a GPU; elsewhere it does not apply, and the log says so once."""
    if not use_fp16:
        return model
    if not hasattr(model, "convert_to_fp16"):  # the testbed teachers are not networks
        logger.warn_once("the testbed teacher computes in float64/float32: --use_fp16 True does not apply")
    elif device.type == "cuda":
        model.convert_to_fp16()
    else:
        logger.warn_once("--use_fp16 True needs a GPU; sampling in fp32 on the CPU")
    return model


def prepare_model(model, device, use_fp16, compile_model):
    """The model on `device`, in eval mode, in fp16 and compiled where that applies."""
    model = use_fp16_where_it_applies(model.to(device).eval(), device, use_fp16)
    if compile_model:
        if not hasattr(model, "convert_to_fp16"):
            logger.warn_once("the testbed teacher is not a network: --compile True does not apply")
        else:
            # Fuses the memory-bound GroupNorm/SiLU/casts that dominate a 256 px step on a GPU.
            model = th.compile(model)
    return model


def run_sampling(args, model, diffusion, todo):
    """Make the samples of `todo` (from plan_sampling)."""
    device = dist_util.dev()
    model = prepare_model(model, device, args.use_fp16, args.compile)
    total = sum(len(m) for *_, m in todo)
    sampler = sampler_name(args)

    bar = logger.progress_bar(total=total, desc="samples", unit="sample")
    start, made = time.time(), 0
    for file_name, y, path, missing in todo:
        high_res = to_float(load_image(path, args.large_size)[None].to(device))
        low_res = area_downsample(high_res, args.small_size)
        low_res_path = os.path.join(args.output_dir, file_name, "low_res.png")
        if not os.path.exists(low_res_path):
            save_png(to_uint8(low_res[0]).permute(1, 2, 0).cpu().numpy(), low_res_path)
        for k in range(0, len(missing), args.batch_size):
            check_stop(f"sampling stopped after {made} new samples (each saved as it was made); "
                       f"the same command continues")
            indices = missing[k:k + args.batch_size]
            seeds = [sample_seed(args.seed, file_name, i) for i in indices]
            samples = sample_images(model, diffusion, low_res, y if args.class_cond else None, seeds,
                                    args.large_size, clip_denoised=args.clip_denoised, sampler=sampler, eta=args.eta)
            require_finite(samples, f"the samples of {file_name!r} from --model_path {args.model_path!r} "
                                    f"(sampler {sampler})")  # a NaN would be saved as a black PNG
            for i, sample in zip(indices, to_uint8(samples).permute(0, 2, 3, 1).cpu().numpy()):
                save_png(sample, sample_path(args.output_dir, file_name, i))
            made += len(indices)
            bar.update(len(indices))
        logger.log(f"{file_name}: {args.num_samples_per_image} samples "
                   f"({made / max(time.time() - start, 1e-9):.2f} samples/s)")
    bar.close()
    dist_util.barrier()
    logger.log("sampling complete")
