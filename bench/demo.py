"""The demo's figures: run `continual-lm demo` from scratch, time it, and record the tables in bench/demo.md.

    python bench/demo.py [--extra-methods amlora]

The demo's own methods (continual_lm.demo.DEMO_METHODS) are timed as one `run_demo` call, as a user runs it; extra
methods run afterwards on the same stream and settings, outside the timed demo, for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from continual_lm.demo import DEMO_METHODS, DEMO_SETTINGS, run_demo  # noqa: E402
from continual_lm.eval.report import comparison_markdown, matrix_markdown  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extra-methods", nargs="*", default=["amlora"])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        results = run_demo(Path(tmp) / "demo", model=args.model, fresh=True, progress=False)
        demo_s = time.perf_counter() - start
        extra = run_demo(Path(tmp) / "extra", model=args.model, methods=args.extra_methods, fresh=True,
                         progress=False) if args.extra_methods else []
    lines = ["# `continual-lm demo` (`python bench/demo.py`)", "",
             f"Model {args.model}; settings {json.dumps(DEMO_SETTINGS)}; load average at start "
             f"{[round(x, 2) for x in load]}; {os.cpu_count()} CPUs.", "",
             f"**Demo wall time ({', '.join(DEMO_METHODS)}): {demo_s:.0f} s** (target: at most 600 s; includes "
             f"loading the cached model per method)", "", comparison_markdown(results + extra), ""]
    for r in results + extra:
        lines += [f"## {r['method']} (train {r['timing']['train_s']:.0f} s, eval {r['timing']['eval_s']:.0f} s)", "",
                  matrix_markdown(r), ""]
    (HERE / "demo.md").write_text("\n".join(lines))
    (HERE / "demo.json").write_text(json.dumps({"demo_wall_s": round(demo_s, 1), "load_avg_at_start": load,
                                                "runs": results + extra}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
