"""The studies' figures: pyplot without a display, each PNG written atomically."""

from runkit.fileio import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display; imported when a figure is drawn, not before)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, dpi=80):
    """Write the figure to `path` atomically (a stop leaves the old file or the new one), then free it."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    pyplot().close(fig)
