"""guided-diffusion's logger module: the run kit's logger (one logger for every stage)."""

from runkit.logger import *  # noqa: F401,F403
from runkit.logger import progress_bar, warn_once  # noqa: F401
