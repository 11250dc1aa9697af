"""Benchmarks and developer tools of the extension; not shipped in the add-on zip (see build_addon.py).
Run from the repository root: `python -m tools.bench_binding`, `python -m tools.bench_blender`."""
