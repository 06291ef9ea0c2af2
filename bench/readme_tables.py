"""Copy the committed result tables into README.md, under the README's bold headings that name them.

    python bench/readme_tables.py [--check]

Sources: each benchmark section of bench/RESULTS.md and bench/RESULTS-trace.md ("## standard order 1" → the table
under "**standard order 1**" in the README), and the summary table of bench/CLAIMS.md / bench/CLAIMS-short.md
(under "**Claims check**" / "**Reduced claims check**"). A source whose heading the README does not have is
skipped; the README's prose around the tables is not touched (it interprets the numbers and is written by hand).
`--check` changes nothing and exits 1 when a table differs (the tests check the same).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"


def table_span(lines: list[str], start: int) -> tuple[int, int]:
    """[first, end) of the first markdown table at or after ``start`` (empty at the end when there is none)."""
    first = next((k for k in range(start, len(lines)) if lines[k].startswith("|")), len(lines))
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return first, end


def first_table(lines: list[str]) -> list[str]:
    """The rows of the first markdown table in ``lines`` ([] if none)."""
    first, end = table_span(lines, 0)
    return lines[first:end]


def source_tables(bench: Path = HERE) -> dict[str, list[str]]:
    """README heading -> the table that belongs under it, from every committed source that exists."""
    tables = {}
    for name in ("RESULTS.md", "RESULTS-trace.md"):
        path = bench / name
        if path.exists():
            for part in path.read_text().split("\n## ")[1:]:
                heading, *lines = part.splitlines()
                if heading != "Invocations" and any(line.startswith("|") for line in lines):
                    tables[f"**{heading}**"] = first_table(lines)
    for name, heading in (("CLAIMS.md", "**Claims check**"), ("CLAIMS-short.md", "**Reduced claims check**")):
        path = bench / name
        if path.exists() and "\n## Summary\n" in path.read_text():
            tables[heading] = first_table(path.read_text().split("\n## Summary\n")[1].splitlines())
    return tables


def synced(readme: str, tables: dict[str, list[str]]) -> str:
    lines = readme.splitlines()
    for heading, table in tables.items():
        where = [k for k, line in enumerate(lines) if line.strip() == heading or line.startswith(heading + " ")]
        if len(where) != 1:
            continue
        first, end = table_span(lines, where[0] + 1)
        lines[first:end] = table
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether README.md is in sync")
    args = parser.parse_args(argv)
    before = README.read_text()
    after = synced(before, source_tables())
    if args.check:
        print("README.md tables are in sync" if after == before else "README.md tables differ from bench/")
        return 0 if after == before else 1
    if after != before:
        README.write_text(after)
        print("README.md: tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
