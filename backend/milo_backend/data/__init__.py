"""Datasets: cameras, images and sparse points from COLMAP, transforms.json or a folder of photos."""
