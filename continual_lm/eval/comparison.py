"""What ``continual-lm report`` writes: a comparison of runs in every format, into one folder beside the runs.

    comparison/
      comparison.md     the per-run table, then (repeated runs) mean ± std per experiment and the Avg over orders
      comparison.csv    one row per experiment: mean, std, n per metric, protocol, cost (eval/formats.py)
      comparison.tex    the same as a booktabs table, mean ± std, best per column in bold
      comparison.html   everything above with every figure embedded: one file that opens offline (eval/html.py)
      comparison.png    AP and BWT per run;  comparison_ap_box.png  AP across seeds (repeated runs only)

By default the folder is ``comparison/`` inside the directory given (a run, a sweep, a folder of runs), or inside
the deepest folder holding every given path; ``--output DIR`` chooses another. A run or sweep directory keeps
being a run (``--resume``, ``--overwrite`` recognise this folder as theirs: ``train.checkpoint.is_comparison_folder``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ContinualLMError
from ..io_utils import atomic_write_text
from ..train.checkpoint import COMPARISON_FOLDER as FOLDER

FORMATS = ("md", "csv", "tex", "html", "png")
def default_output_dir(paths: Sequence[str | Path]) -> Path:
    """``comparison/`` in the given directory, or in the deepest folder holding every given path."""
    folders = [Path(p).absolute() if Path(p).is_dir() else Path(p).absolute().parent for p in paths]
    return Path(os.path.commonpath(folders)) / FOLDER


def write_comparison(results_list: Sequence[dict], out: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the comparison of ``results_list`` in ``formats`` into the folder ``out`` (created; each file atomic);
    the paths written."""
    from .aggregate import aggregate_markdown, is_repeated, plot_ap_distribution
    from .formats import experiments_csv, experiments_latex
    from .html import comparison_html
    from .report import comparison_markdown, plot_comparison_bars

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ContinualLMError(f"--formats {' '.join(unknown)}: expected some of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ContinualLMError(f"--output {out} is a file; give a folder for the comparison's files")
    if not out.exists() and out.suffix.lower() in {".md", ".csv", ".tex", ".html", ".png"}:
        raise ContinualLMError(f"--output {out}: looks like a file name; --output is now the folder for the "
                               f"comparison's files (comparison.md, ...), --formats chooses them")
    out.mkdir(parents=True, exist_ok=True)
    repeated = is_repeated(results_list)
    written = []
    if "md" in formats:
        text = comparison_markdown(results_list) + ("\n\n" + aggregate_markdown(results_list) if repeated else "")
        written.append(atomic_write_text(out / "comparison.md", text + "\n"))
    if "csv" in formats:
        written.append(atomic_write_text(out / "comparison.csv", experiments_csv(results_list)))
    if "tex" in formats:
        written.append(atomic_write_text(out / "comparison.tex", experiments_latex(results_list)))
    if "html" in formats:
        written.append(atomic_write_text(out / "comparison.html", comparison_html(results_list)))
    if "png" in formats:
        written.append(plot_comparison_bars(results_list, out / "comparison.png"))
        if repeated:
            written.append(plot_ap_distribution(results_list, out / "comparison_ap_box.png"))
    return [Path(p) for p in written]
