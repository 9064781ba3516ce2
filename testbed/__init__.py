"""
The exact testbed: a Gaussian scale mixture prior on images whose super-resolution posterior
is known in closed form (SPEC.md, "Exact testbed"), in the forms the stages and studies use.

    gaussian_scale_mixture.py  the prior, the exact posterior (p(k | y), mean, variance,
                               covariance eigenpairs, samples), the data set writer
    teachers.py                the ideal and exact teachers (DDPM-SR stand-ins)
    oracles.py                 the exact mean as a mean model, the exact covariance
    scoring.py                 the one scorer against the exact posterior: per image, per
                               mixture scale, with the Monte Carlo floor and intervals

It depends on the run kit and `imaging` only; the SR stages and the studies use it.
"""

from . import scoring  # noqa: F401,E402 (after the oracles it uses)
from .gaussian_scale_mixture import (
    TESTBED_CHECKS,
    TESTBED_RULES,
    GaussianScaleMixture,
    TestbedParams,
    is_testbed_file,
    load_testbed,
    quantize,
    write_testbed_dataset,
)
from .oracles import ExactCovariance, ExactMeanModel
from .teachers import ExactTestbedTeacher, TestbedTeacher

__all__ = [
    "TESTBED_CHECKS", "TESTBED_RULES", "ExactCovariance", "ExactMeanModel", "ExactTestbedTeacher",
    "GaussianScaleMixture", "TestbedParams", "TestbedTeacher", "is_testbed_file", "load_testbed", "quantize",
    "write_testbed_dataset",
]
