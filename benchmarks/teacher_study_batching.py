"""
The teacher study's sampling (studies.sampler_run.sampled_moments), samples/s with a batch
that holds one image's samples (--per_image samples: how it sampled before its batches
spanned images) against a batch of --batch_size spanning images, in interleaved rounds
(median ratio): the teacher study's trained network (TEACHER_MODEL_FLAGS, random weights)
and the testbed's ideal teacher, at 32 px on the covariance mixture.

    python benchmarks/teacher_study_batching.py
"""

import argparse
import time

import torch as th
from bench_util import device_name, round_ratios

from guided_diffusion.script_util import sr_create_model_and_diffusion
from runkit import dist_util
from studies.sampler_run import evaluation_images, sampled_moments
from studies.teacher_run import teacher_model_flags
from testbed import CovarianceMixture


def teacher_network(large_size, small_size):
    """The study's teacher architecture with random weights, on this process's device, and its flags."""
    flags = teacher_model_flags(large_size, small_size)
    model, _ = sr_create_model_and_diffusion(**flags)
    return model.to(dist_util.dev()).eval(), flags


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--per_image", type=int, default=20, help="samples per image (the per-image batch)")
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    images = evaluation_images(CovarianceMixture(), a.images, 0)
    network = teacher_network(32, 8)
    print(f"{device_name(dist_util.dev())}; {a.images} images x {a.per_image} samples, ancestral {a.nfe} steps")
    for label, net in (("trained network", network), ("ideal teacher", None)):
        rates = {a.per_image: [], a.batch_size: []}
        for _ in range(a.rounds):
            for batch in rates:
                start = time.perf_counter()
                sampled_moments(images, "ancestral", a.nfe, a.per_image, batch, 0, network=net)
                rates[batch].append(a.images * a.per_image / (time.perf_counter() - start))
        ratios, median = round_ratios(rates[a.batch_size], rates[a.per_image])
        print(f"{label}: {th.tensor(rates[a.per_image]).median():.1f} samples/s in batches of {a.per_image} "
              f"(one image), {th.tensor(rates[a.batch_size]).median():.1f} in batches of {a.batch_size}; "
              f"ratio per round {', '.join(f'{r:.2f}' for r in ratios)}, median {median:.2f}")


if __name__ == "__main__":
    main()
