"""
Theorem 2.1 over seeds, with floors: the MNIST sweep (scripts/mnist_sweep.py) once per seed
(its own clean model, label draws, initial weights and batch orders), and model noise twice
more on seed 0's clean model: on a second draw of the same p (the floor) and with the runs
started from the clean model's initial weights and batch order (--init shared, beside the
default --init independent). Writes the test accuracy over seeds beside the paper's,
TV(softmax, p) on the training and the held-out images, and the floors (the TV between runs
on independent draws of one p), each with a 95% interval over images: results.json,
results.md and accuracy_vs_ratio_seeds.png under --out_dir. Rerun the same command to
continue a stopped study.

    python scripts/mnist_seeds.py                     # 3 seeds, 4 levels, 4,000 steps: 41 min on one core
    python scripts/mnist_seeds.py --levels "" --max_step 20000 --workers 2   # the paper's sweep x 3 (hours)
"""

import argparse

from noisy_mnist.seeds import SEEDS_RULES, run_study, seeds_defaults
from runkit import create_argparser, list_flags, run_main


@run_main
def main():
    parser = create_argparser(seeds_defaults(), rules=SEEDS_RULES, checks=(list_flags("noise_types"),),
                              description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    run_study(vars(parser.parse_args()))


if __name__ == "__main__":
    main()
