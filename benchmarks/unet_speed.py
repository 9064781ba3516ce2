"""
UNet speed: forward and forward+backward images/s of a model config on a device, with the
attention computed by F.scaled_dot_product_attention and by guided-diffusion's legacy
einsum form, measured in one run (interleaved, same weights and inputs).

    python benchmarks/unet_speed.py                      # a CPU-sized DDPM-SR config
    python benchmarks/unet_speed.py --preset seed_sr --batch_size 4 --dtype fp16   # on a GPU
"""

import argparse
import json

import torch as th
from bench_util import device_name, seconds_per_call

from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults
from guided_diffusion.unet import set_attention_backend
from runkit import str2bool
from sr_var.networks import create_mean_model, mean_model_defaults

PRESETS = {
    # A small DDPM-SR upsampler with attention at 32x32 (1,024 tokens), CPU-sized.
    "cpu_sr": dict(kind="sr", large_size=64, small_size=16, num_channels=64, num_res_blocks=1,
                   attention_resolutions="32,16,8", channel_mult="1,2,2,4", class_cond=True,
                   learn_sigma=True, resblock_updown=True, num_heads=4),
    # The seed's DDPM-SR MODEL_FLAGS (OpenAI's 64->256 upsampler).
    "seed_sr": dict(kind="sr", large_size=256, small_size=64, num_channels=192, num_res_blocks=2,
                    attention_resolutions="32,16,8", class_cond=True, learn_sigma=True,
                    resblock_updown=True, num_heads=4),
    # The seed's mean-model flags.
    "seed_mean": dict(kind="mean", large_size=256, small_size=64, model_channels=128,
                      attention_resolutions="16", channel_mult="1,1,2,2,4", resblock_updown=True,
                      num_heads=4),
    "cpu_mean": dict(kind="mean", large_size=64, small_size=16, model_channels=32, num_res_blocks=1,
                     attention_resolutions="32,16", channel_mult="1,2,2", resblock_updown=True, num_heads=4),
}


def build(preset):
    cfg = dict(PRESETS[preset])
    kind = cfg.pop("kind")
    if kind == "sr":
        args = sr_model_and_diffusion_defaults()
        args.update(cfg)
        model, _ = sr_create_model_and_diffusion(**args)
        size, small = args["large_size"], args["small_size"]

        def make_inputs(n, device):
            return (th.randn(n, 3, size, size, device=device), th.randint(0, 1000, (n,), device=device)), dict(
                low_res=th.randn(n, 3, small, small, device=device), y=th.randint(0, 1000, (n,), device=device))
    else:
        args = mean_model_defaults()
        args.update(cfg)
        model = create_mean_model(**args)
        size = args["large_size"]

        def make_inputs(n, device):
            return (th.randn(n, 3, size, size, device=device),), {}
    return model, make_inputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu_sr", choices=sorted(PRESETS))
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per backend")
    parser.add_argument("--device", default="cuda" if th.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="fp16/bf16: autocast (GPU)")
    parser.add_argument("--backward", type=str2bool, default=True)
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()

    th.manual_seed(0)
    device = th.device(args.device)
    model, make_inputs = build(args.preset)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    inputs, kwargs = make_inputs(args.batch_size, device)
    autocast_dtype = {"fp16": th.float16, "bf16": th.bfloat16}.get(args.dtype)

    def forward():
        with th.no_grad(), th.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            model(*inputs, **kwargs)

    def forward_backward():
        with th.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(*inputs, **kwargs)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    results = {b: {"forward": [], "forward_backward": []} for b in ("sdpa", "einsum")}
    for _ in range(args.rounds):
        for backend in ("sdpa", "einsum"):
            set_attention_backend(model, backend)
            model.eval()
            results[backend]["forward"].append(args.batch_size / seconds_per_call(forward, args.iters, 1, device))
            if args.backward:
                model.train()
                results[backend]["forward_backward"].append(
                    args.batch_size / seconds_per_call(forward_backward, args.iters, 1, device))

    print(f"preset {args.preset} ({n_params / 1e6:.1f}M parameters), batch {args.batch_size}, "
          f"{args.dtype}, device {device} ({device_name(device)})")
    summary = {}
    for mode in ("forward", "forward_backward"):
        if not results["sdpa"][mode]:
            continue
        best = {b: max(results[b][mode]) for b in results}
        summary[mode] = dict(best, ratio=best["sdpa"] / best["einsum"])
        print(f"{mode:>17}: sdpa {best['sdpa']:8.2f} img/s | einsum {best['einsum']:8.2f} img/s | "
              f"sdpa/einsum {best['sdpa'] / best['einsum']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(vars(args), params=n_params, results=summary), f, indent=1)


if __name__ == "__main__":
    main()
