"""guided-diffusion's dist_util module: the run kit's (one process group for every stage)."""

from runkit.dist_util import *  # noqa: F401,F403
