"""
The exact testbeds: image priors whose super-resolution posterior is known in closed form
(SPEC.md, "Exact testbed" and "Second exact testbed"), in the forms the stages and studies use.

    mixture.py                 what every testbed offers, and the shared parts (per-pixel
                               posterior quantiles of a mixture)
    gaussian_scale_mixture.py  the first testbed: x ~ N(0, s_k^2 S), E[x | y] linear in y
    covariance_mixture.py      the second: components of their own covariance (oriented,
                               anisotropic kernels), E[x | y] nonlinear, Cov[x | y] turning
    files.py                   testbed.json (by kind), the image folder, uint8 rounding
    teachers.py                the ideal and exact teachers (DDPM-SR stand-ins)
    oracles.py                 the exact mean as a mean model, the exact covariance
    scoring.py                 the one scorer against the exact posterior: per image, per
                               mixture component, with the Monte Carlo floor and intervals

It depends on the run kit and `imaging` only; the SR stages and the studies use it.
"""

from . import scoring  # noqa: F401,E402 (after the oracles it uses)
from .covariance_mixture import Component, CovarianceMixture, CovarianceMixtureParams
from .files import (
    TESTBED_KINDS,
    image_prefix,
    is_testbed_file,
    load_testbed,
    quantize,
    study_testbed,
    write_testbed_dataset,
)
from .gaussian_scale_mixture import TESTBED_CHECKS, TESTBED_RULES, GaussianScaleMixture, TestbedParams
from .oracles import ExactCovariance, ExactMeanModel, MixtureCovariance
from .teachers import ExactTestbedTeacher, TestbedTeacher

__all__ = [
    "TESTBED_CHECKS", "TESTBED_KINDS", "TESTBED_RULES", "Component", "CovarianceMixture", "CovarianceMixtureParams",
    "ExactCovariance", "ExactMeanModel", "ExactTestbedTeacher", "GaussianScaleMixture", "MixtureCovariance",
    "TestbedParams", "TestbedTeacher", "image_prefix", "is_testbed_file", "load_testbed", "quantize", "study_testbed",
    "write_testbed_dataset",
]
