"""What the extension's benchmarks share: their command line and how a table lands in BENCHMARKS.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def bench_parser(description: str) -> argparse.ArgumentParser:
    """--splats, --subdivisions (the bumpy-sphere mesh of `bench_binding.cube_mesh`) and --no-write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--splats", type=int, default=500_000)
    parser.add_argument("--subdivisions", type=int, default=91, help="quads per cube edge (91: ~100k triangles)")
    parser.add_argument("--no-write", action="store_true", help="print the table without updating BENCHMARKS.md")
    return parser


def publish(section: str, title: str, module: str, argv: list[str] | None, preamble: str, rows: list[dict],
            columns: list[str], write: bool) -> str:
    """Print the table (with the date, machine and command) and replace its section of BENCHMARKS.md."""
    from milo_backend.bench import markdown_table, section_header, write_section

    command = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = section_header(title, command.strip()) + preamble + "\n\n" + markdown_table(rows, columns)
    print(markdown)
    if write:
        write_section(section, markdown, BENCHMARKS)
    return markdown
