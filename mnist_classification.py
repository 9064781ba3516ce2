"""
MNIST classification on noisy labels (the paper's Theorem 2.1: a model trained with
cross-entropy on noisy labels outputs the noise distribution p(label | x)).

    python mnist_classification.py --task train
    python mnist_classification.py --task generate_noisy_label --noise_type model --alpha 0.8
    python mnist_classification.py --task train_on_noisy_label --noise_label_file model_noisy_label_0.8.pkl
    python mnist_classification.py --task predict_analysis --noise_label_file model_noisy_label_0.8.pkl

Noise types: uniform, fix (the paper's "biased"), model (the paper's "generated"). Data:
data/mnist/training.pt and test.pt (scripts/prepare_mnist.py makes them). The whole
experiment with figures: scripts/mnist_sweep.py.
"""

import argparse

from noisy_mnist.tasks import MNIST_RULES, mnist_defaults, run
from runkit import create_argparser, run_main


def create_parser():
    parser = create_argparser(mnist_defaults(), rules=MNIST_RULES, description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


@run_main
def main():
    run(create_parser().parse_args())


if __name__ == "__main__":
    main()
