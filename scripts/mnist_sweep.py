"""
The paper's MNIST experiment in one command: the clean model, then for each noise type
(uniform, fix = the paper's "biased", model = "generated") and level the noisy labels, a
model trained on them and its analysis; results.json / results.csv and figures under
--out_dir. Rerun the same command to continue a stopped sweep.

    python scripts/mnist_sweep.py --data_dir data/mnist --out_dir logs/mnist_sweep
    python scripts/mnist_sweep.py --levels 0.9,0.5 --max_step 2000      # a shorter sweep
    python -m noisy_mnist.figures logs/mnist_sweep/results.json FIG_DIR  # redraw the figures

Levels are target correct-label ratios (default: the paper's measured ones); for uniform
and fix noise alpha is the ratio itself, for model noise the alpha whose mean p[c] over the
training images (the expected ratio, with --model_noise's formula on the clean model's
softmax) is the target, found by bisection; at most 1. Each noisy-label run starts from
initial weights of its own (--init independent; --init shared: the clean model's, as the
sweeps before it), and every analysis is also made on the held-out test images.
"""

import argparse

from noisy_mnist.sweep import SWEEP_RULES, run_sweep, sweep_defaults
from runkit import create_argparser, list_flags, run_main


@run_main
def main():
    parser = create_argparser(sweep_defaults(), rules=SWEEP_RULES, checks=(list_flags("levels", "noise_types"),),
                              description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    run_sweep(vars(parser.parse_args()))


if __name__ == "__main__":
    main()
