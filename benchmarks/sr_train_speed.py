"""
Mean-model training speed, images/s: this project's pipeline against a loop in the style of
the original code, measured in one run on the same images, model config and device.

    ours       images decoded once into memory (uint8), flips and area/bilinear resampling
               batched on the device, SDPA attention, fused AdamW, the project's TrainLoop
    reference  a Dataset that decodes, crops, converts and flips one image at a time in
               NumPy, a DataLoader with one worker, resampling on the CPU, guided-diffusion's
               einsum attention recomputed in the backward pass (its AttentionBlock always
               checkpoints), fp32, AdamW without fused kernels

It reports the speed-up as the ratio of each loop's best round and per round, and on a CPU the
share of each loop's step spent in convolutions (torch.profiler): the same oneDNN kernels in
both loops, so that share bounds what the rest of our pipeline can gain there.

    python benchmarks/sr_train_speed.py                       # a CPU-sized config
    python benchmarks/sr_train_speed.py --preset seed --use_fp16 True   # the seed's, on a GPU
"""

import argparse
import json
import os
import random
import tempfile

import numpy as np
import torch as th
import torch.nn.functional as F
from bench_util import device_name, quiet_stderr, round_ratios, seconds_per_call
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from guided_diffusion.unet import AttentionBlock, set_attention_backend
from imaging.sample_photos import make_image_folder
from runkit import logger, str2bool
from runkit.training import TrainLoop
from sr_var.data import center_crop_arr, sr_training_pairs, training_batches
from sr_var.networks import create_mean_model, mean_model_defaults

PRESETS = {
    "cpu": dict(large_size=64, small_size=16, model_channels=32, channel_mult="1,2,2,2", num_res_blocks=1,
                attention_resolutions="16,8", resblock_updown=True, num_heads=4, batch_size=16),
    "seed": dict(large_size=256, small_size=64, model_channels=128, channel_mult="1,1,2,2,4", num_res_blocks=2,
                 attention_resolutions="16", resblock_updown=True, num_heads=4, batch_size=8),
}


class PerItemDataset(Dataset):
    """The original code's loading: one image at a time, float conversion and flip in NumPy."""

    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, idx):
        with open(self.paths[idx], "rb") as f:
            image = Image.open(f)
            image.load()
        arr = center_crop_arr(image.convert("RGB"), self.size)
        if random.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr.astype(np.float32) / 127.5 - 1
        return np.transpose(arr, [2, 0, 1]), idx


def build(cfg, device, reference):
    flags = {**mean_model_defaults(), **{k: v for k, v in cfg.items() if k in mean_model_defaults()}}
    th.manual_seed(0)
    model = create_mean_model(**flags).to(device)
    if reference:
        set_attention_backend(model, "einsum")
        for module in model.modules():
            if isinstance(module, AttentionBlock):
                module.use_checkpoint = True
    return model


def convolution_share(step, steps=2):
    """The share of the CPU time of `steps` steps spent in convolution kernels (torch.profiler)."""
    with quiet_stderr(), th.profiler.profile(activities=[th.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if "convolution" in e.key) / total


def time_steps(step, cfg, device, steps, warmup):
    """(images/s over `steps` steps after `warmup`, the convolutions' share of a step on a CPU, else None)."""
    rate = cfg["batch_size"] / seconds_per_call(step, steps, warmup, device)
    return rate, convolution_share(step) if device.type == "cpu" else None


def measure_ours(cfg, paths, device, steps, warmup, use_fp16):
    model = build(cfg, device, reference=False)
    batches = training_batches(paths, image_size=cfg["large_size"], batch_size=cfg["batch_size"], num_workers=1)
    pairs = sr_training_pairs(batches, cfg["small_size"], device)

    def loss_fn(net, low_res_up, high_res):
        out = net(low_res_up)
        return F.mse_loss(out.float(), high_res), out

    with tempfile.TemporaryDirectory() as tmp:
        loop = TrainLoop(model=model, data=pairs, loss_fn=loss_fn, batch_size=cfg["batch_size"], lr=1e-4,
                         model_save_dir=tmp, use_fp16=use_fp16, progress=False)
        # the warm-up includes decoding the images into memory
        return time_steps(lambda: loop.run_step(next(pairs)), cfg, device, steps, warmup)


def measure_reference(cfg, paths, device, steps, warmup):
    model = build(cfg, device, reference=True)
    opt = th.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    loader = DataLoader(PerItemDataset(paths, cfg["large_size"]), batch_size=cfg["batch_size"], shuffle=True,
                        num_workers=1, drop_last=True, pin_memory=device.type == "cuda", persistent_workers=True)

    def batches():
        while True:
            yield from loader

    data = batches()

    def step():
        large, _ = next(data)
        small = F.interpolate(large, cfg["small_size"], mode="area")
        small = F.interpolate(small, (cfg["large_size"],) * 2, mode="bilinear")
        opt.zero_grad()
        loss = F.mse_loss(model(small.to(device)), large.to(device))
        loss.backward()
        opt.step()

    return time_steps(step, cfg, device, steps, warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds; the best of each, and the ratio of each round, are reported")
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--use_fp16", type=str2bool, default=False, help="ours only (the reference is fp32)")
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    cfg, device = PRESETS[args.preset], th.device(args.device)
    logger.configure(tempfile.mkdtemp(), format_strs=())
    with tempfile.TemporaryDirectory() as folder:
        names = make_image_folder(folder, num_classes=4, per_class=args.num_images // 4)
        paths = [os.path.join(folder, f"{n}.JPEG") for n in names]
        results, conv_share = {"ours": [], "reference": []}, {"ours": [], "reference": []}
        measure = {"reference": lambda: measure_reference(cfg, paths, device, args.steps, args.warmup),
                   "ours": lambda: measure_ours(cfg, paths, device, args.steps, args.warmup, args.use_fp16)}
        for round_index in range(args.rounds):
            # alternate which goes first, so that neither is always timed in the same part of a round
            for name in (("reference", "ours") if round_index % 2 == 0 else ("ours", "reference")):
                rate, share = measure[name]()
                results[name].append(rate)
                conv_share[name].append(share)
    best = {k: max(v) for k, v in results.items()}
    name = device_name(device)
    print(f"preset {args.preset} ({cfg['large_size']} px, batch {cfg['batch_size']}), device {name}")
    print(f"reference-style loop: {best['reference']:.2f} images/s  (rounds: "
          f"{', '.join(f'{v:.2f}' for v in results['reference'])})")
    print(f"ours:                 {best['ours']:.2f} images/s  (rounds: "
          f"{', '.join(f'{v:.2f}' for v in results['ours'])})")
    per_round, median = round_ratios(results["ours"], results["reference"])  # rates: ours / reference
    print(f"ours / reference: {best['ours'] / best['reference']:.2f}x (best round of each); per round "
          f"{', '.join(f'{r:.2f}x' for r in per_round)}, median {median:.2f}x")
    if device.type == "cpu":
        # Both loops run the same convolutions; what they take of our step bounds the speed-up here.
        share = {k: sum(v) / len(v) for k, v in conv_share.items()}
        print(f"convolutions (oneDNN, the same kernels in both loops): {100 * share['ours']:.0f}% of our step's "
              f"CPU time, {100 * share['reference']:.0f}% of the reference-style loop's")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(vars(args), results=results, ratio=best["ours"] / best["reference"],
                           ratio_per_round=per_round, ratio_median_of_rounds=median,
                           convolution_share=conv_share), f, indent=1)


if __name__ == "__main__":
    main()
