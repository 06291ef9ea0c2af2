"""The HTML report of a real comparison, opened in a real browser: headless Chromium renders it and takes a screenshot.

    python bench/report_html.py [--runs bench/runs/small/superni] [--chromium chromium]

Reads the committed runs of the `small` reproduction (SuperNI order 1: 19 methods, 15 tasks, SmolLM2-135M), copies
their results.json and config.yaml into a temporary folder (so that every figure is drawn by the current code, not
read from the PNGs committed with the runs; AM-LoRA's routing figure is drawn from its amlora_attention.json as a run
of this version writes it), writes the comparison in every format (`continual-lm report`'s eval/comparison.py), then
renders comparison.html in headless Chromium (Debian's `chromium` package, flags of
/work/.library/env/machines/python.md: no network, no background services): the top of the page, and the whole
report of the AM-LoRA run alone (its figures at 15 tasks). Writes docs/report_html.png, docs/report_html_figures.png,
bench/report_html.md and bench/report_html.json. Nothing is downloaded; the page loads nothing from anywhere.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from continual_lm.eval.comparison import write_comparison  # noqa: E402
from continual_lm.eval.experiments import load_runs  # noqa: E402
from continual_lm.eval.figures import plot_routing  # noqa: E402
from continual_lm.io_utils import atomic_write_json, atomic_write_text  # noqa: E402
from continual_lm.methods.amlora import ATTENTION_JSON, ROUTING_PNG  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=20000"]  # let a 7 MB page decode before the shot


def copy_runs(source: Path, target: Path) -> int:
    count = 0
    for results in sorted(source.glob("*/results.json")):
        run = target / results.parent.name
        run.mkdir(parents=True)
        for name in ("results.json", "config.yaml", ATTENTION_JSON):
            if (results.parent / name).is_file():
                shutil.copy(results.parent / name, run / name)
        if (run / ATTENTION_JSON).is_file():
            plot_routing(json.loads((run / ATTENTION_JSON).read_text()), run / ROUTING_PNG)
        count += 1
    return count


def screenshot(chromium: str, page: Path, out: Path, size: str, profile: Path) -> float:
    start = time.perf_counter()
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--screenshot={out}", page.as_uri()], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE / "runs" / "small" / "superni"))
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    chromium = shutil.which(args.chromium)
    if chromium is None:
        sys.exit(f"{args.chromium} not found: install Debian's chromium package (apt-get install -y chromium)")
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="report_html_") as tmp:
        tmp = Path(tmp)
        runs = copy_runs(Path(args.runs), tmp / "runs")
        start = time.perf_counter()
        results = load_runs([tmp / "runs"])
        written = write_comparison(results, tmp / "runs" / "comparison")
        write_s = time.perf_counter() - start
        page = tmp / "runs" / "comparison" / "comparison.html"
        text = page.read_text(encoding="utf-8")
        external = re.findall(r"""(?:src|href)=["']?(?:https?:|//|file:)""", text)
        images = text.count("data:image/png;base64,")
        top = ROOT / "docs" / "report_html.png"
        shot_s = screenshot(chromium, page, tmp / "top.png", "1400,1500", tmp / "profile")
        # the figures of one run at 15 tasks: the HTML report of the AM-LoRA run alone, whole page
        single = [r for r in results if r["method"] == "amlora"]
        write_comparison(single, tmp / "amlora", ["html"])
        screenshot(chromium, tmp / "amlora" / "comparison.html", tmp / "figures.png", "1400,4200", tmp / "profile")
        shutil.copy(tmp / "top.png", top)
        shutil.copy(tmp / "figures.png", ROOT / "docs" / "report_html_figures.png")
        sizes = {p.name: p.stat().st_size for p in written}
    record = {"runs": runs, "source": str(Path(args.runs).relative_to(ROOT)), "chromium": version,
              "write_s": round(write_s, 1), "screenshot_s": round(shot_s, 1), "files": sizes,
              "embedded_png": images, "external_references": len(external)}
    atomic_write_json(HERE / "report_html.json", record)
    lines = ["# The HTML report in a real browser (`bench/report_html.py`)", "",
             f"Generated by the script from the {runs} committed runs of `{record['source']}` (SuperNI order 1, 15 "
             f"tasks, SmolLM2-135M, the `small` preset). `continual-lm report` wrote every format in "
             f"{record['write_s']} s; {version} (headless, no network) rendered `comparison.html` in "
             f"{record['screenshot_s']} s.", "",
             f"- embedded figures: {images} (base64 PNG); references to anything outside the file: "
             f"{record['external_references']}",
             "- files: " + ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in sizes.items()), "",
             "The top of the page (runs table with protocol and cost, per-experiment table, task orders):", "",
             "![the HTML report](../docs/report_html.png)", "",
             "The report of the AM-LoRA run alone, whole page: its score matrix, trajectories (one panel per task at 15 "
             "tasks), the per-layer selector heatmaps and the per-task routing:", "",
             "![the HTML report, figures](../docs/report_html_figures.png)", ""]
    atomic_write_text(HERE / "report_html.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
