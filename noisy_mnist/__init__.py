"""
The MNIST noisy-label experiment (the paper's Theorem 2.1): a small CNN trained with
cross-entropy on labels drawn from a known noise distribution p(label | x) should output
p itself. `mnist_classification.py` is the command-line front of this package.
"""
