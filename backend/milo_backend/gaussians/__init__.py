"""Gaussian parameters, activations, smoothing filter, PLY I/O, densification and simplification."""
