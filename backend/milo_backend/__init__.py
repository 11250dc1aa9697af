"""MILo training backend: photos -> cameras -> Gaussians (+ mesh in the loop)."""

__version__ = "0.1.0"
