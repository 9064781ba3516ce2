"""
DDPM-SR sampling speed, samples/s: our sampler (SDPA attention; on a GPU optionally fp16
weights or bf16 autocast) against a reference-style one (the same network and weights with
guided-diffusion's einsum attention, fp32), in one run. Also the exact testbed teacher.
On a GPU it reports the peak memory of each.

    python benchmarks/sr_sample_speed.py                                    # CPU-sized
    python benchmarks/sr_sample_speed.py --preset seed --batch_size 10 --dtype fp16   # GPU
    python benchmarks/sr_sample_speed.py --preset seed --batch_size 10 --dtype fp16 --compile True
    python benchmarks/sr_sample_speed.py --sampler dpmpp_2m --timestep_respacing logsnr25

Then, for every sampler, its own cost per step (the update arithmetic, noise, clipping: the
loop run with a network that costs nothing) beside the network's cost per step, in
interleaved rounds (median).
"""

import argparse
import copy
import json
import time

import torch as th
from bench_util import device_name, sync

from guided_diffusion.samplers import SAMPLERS
from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults
from guided_diffusion.unet import set_attention_backend
from runkit import str2bool
from sr_var.sampling import sample_images
from testbed import GaussianScaleMixture, TestbedParams, TestbedTeacher

PRESETS = {
    "cpu": dict(large_size=64, small_size=16, num_channels=64, channel_mult="1,2,2,4", num_res_blocks=1,
                attention_resolutions="32,16,8", class_cond=True, learn_sigma=True, resblock_updown=True,
                num_heads=4),
    "seed": dict(large_size=256, small_size=64, num_channels=192, num_res_blocks=2, attention_resolutions="32,16,8",
                 class_cond=True, learn_sigma=True, resblock_updown=True, num_heads=4),
}


class FreeNetwork(th.nn.Module):
    """Returns zeros of the upsampler's output shape at no cost: timing a loop with it leaves the sampler's own work."""

    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels
        self.anchor = th.nn.Parameter(th.zeros(()))  # so that the loops can find a device

    def forward(self, x, timesteps, low_res=None, y=None):
        return x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])


def samples_per_second(model, diffusion, low_res, y, n, size, device, dtype=None, sampler="ancestral"):
    """(samples/s, peak GiB on a GPU: this model's weights plus what sampling allocated)."""
    if device.type == "cuda":
        th.cuda.reset_peak_memory_stats(device)
        held = th.cuda.memory_allocated(device)  # both networks' weights and the inputs
    sync(device)
    start = time.perf_counter()
    with th.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        sample_images(model, diffusion, low_res, y, range(n), size, sampler=sampler)
    sync(device)
    rate = n / (time.perf_counter() - start)
    peak = None
    if device.type == "cuda":
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        peak = (th.cuda.max_memory_allocated(device) - held + weights) / 2**30
    return rate, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--timestep_respacing", default="10", help="steps per sample (the seed: 250)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="ours: fp16 = convert_to_fp16 (as --use_fp16 True), bf16 = autocast")
    parser.add_argument("--compile", type=str2bool, default=False, help="ours: torch.compile the network")
    parser.add_argument("--sampler", default="ancestral", choices=SAMPLERS, help="ours: the sampler")
    parser.add_argument("--overhead_samplers", default=",".join(SAMPLERS),
                        help="samplers whose own per-step cost is measured (empty: none)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    device = th.device(args.device)
    flags = sr_model_and_diffusion_defaults()
    flags.update(PRESETS[args.preset], timestep_respacing=args.timestep_respacing)
    th.manual_seed(0)
    model, diffusion = sr_create_model_and_diffusion(**flags)
    for p in model.parameters():  # trained-looking weights: no zero-initialised layers
        p.data.normal_(0, 0.02)
    model.to(device).eval()
    size, small = flags["large_size"], flags["small_size"]
    low_res = th.rand(1, 3, small, small, device=device) * 2 - 1

    # Two copies of the same weights, so that neither is changed between the interleaved rounds.
    reference = copy.deepcopy(model)
    set_attention_backend(reference, "einsum")
    set_attention_backend(model, "sdpa")
    if args.dtype == "fp16" and device.type == "cuda":
        model.convert_to_fp16()
    ours = th.compile(model) if args.compile else model  # compiles in the warm-up round
    autocast = th.bfloat16 if args.dtype == "bf16" else None
    results = {"reference": [], "ours": []}
    peaks = {}
    for round_index in range(args.rounds + 1):  # round 0 warms up (allocator, kernels) and is dropped
        rate, peaks["reference"] = samples_per_second(reference, diffusion, low_res, 3, args.batch_size, size, device)
        if round_index:
            results["reference"].append(rate)
        rate, peaks["ours"] = samples_per_second(ours, diffusion, low_res, 3, args.batch_size, size, device, autocast,
                                                 args.sampler)
        if round_index:
            results["ours"].append(rate)

    tb = GaussianScaleMixture(TestbedParams(large_size=32, small_size=8))
    teacher = TestbedTeacher(tb, diffusion, learn_sigma=True).to(device)
    teacher_rate, _ = samples_per_second(teacher, diffusion, th.zeros(1, 3, 8, 8, device=device), None,
                                         args.batch_size, 32, device)

    overhead = sampler_overheads(model, diffusion, low_res, args, size, device)
    best = {k: max(v) for k, v in results.items()}
    name = device_name(device)
    steps = len(diffusion.timestep_map)
    ours_kind = args.dtype + (", compiled" if args.compile else "") + f", {args.sampler}"
    print(f"preset {args.preset} ({size} px), batch {args.batch_size}, {steps} steps, ours {ours_kind}, {name}")
    for k in ("reference", "ours"):
        mem = f", peak memory {peaks[k]:.2f} GiB" if peaks[k] is not None else ""
        print(f"{k:>9}: {best[k]:.3f} samples/s ({best[k] * steps:.1f} sample-steps/s){mem}")
    print(f"ours / reference: {best['ours'] / best['reference']:.2f}x")
    print(f"exact testbed teacher (32 px): {teacher_rate:.2f} samples/s")
    if overhead:
        print(f"per step, batch {args.batch_size} (ms, median of {args.rounds} rounds): the sampler's own work, "
              f"the network ({args.dtype}, ancestral loop)")
        for name, ms in overhead["samplers"].items():
            print(f"{name:>14}: {ms:8.3f}  ({100 * ms / overhead['network_ms']:.1f}% of the network's "
                  f"{overhead['network_ms']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(vars(args), results=results, peaks=peaks, teacher=teacher_rate, overhead=overhead), f,
                      indent=1)


def sampler_overheads(model, diffusion, low_res, args, size, device):
    """ms per step of each sampler's own work (a free network) and of the full ancestral loop's step, median."""
    names = [n for n in args.overhead_samplers.split(",") if n]
    if not names:
        return None
    free = FreeNetwork(6 if diffusion.model_var_type.name.startswith("LEARNED") else 3).to(device)
    steps = len(diffusion.timestep_map)
    ms = {n: [] for n in names}
    network = []
    for round_index in range(args.rounds + 1):
        for n in names:
            rate, _ = samples_per_second(free, diffusion, low_res, 3, args.batch_size, size, device, sampler=n)
            if round_index:
                ms[n].append(1000 * args.batch_size / rate / steps)
        rate, _ = samples_per_second(model, diffusion, low_res, 3, args.batch_size, size, device)
        if round_index:
            network.append(1000 * args.batch_size / rate / steps)
    median = lambda v: float(sorted(v)[len(v) // 2])  # noqa: E731
    net = median(network) - median(ms["ancestral"]) if "ancestral" in ms else median(network)
    return {"samplers": {n: median(v) for n, v in ms.items()}, "network_ms": net}


if __name__ == "__main__":
    main()
