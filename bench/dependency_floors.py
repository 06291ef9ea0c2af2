"""Do the declared minimum versions work? Installs the floors of pyproject's dependencies into a virtual environment
and runs a smoke subset of the tests against them.

    python bench/dependency_floors.py [--keep-venv DIR] [--tests tests/test_x.py ...]

The environment is a fresh one (no system packages: a newer scipy or the like seen from the system would mix with
the old floors). torch is installed at the version this machine has (``torch==<installed>``: here a local CPU wheel
that pip's find-links supplies; PyPI's Linux torch wheels are CUDA builds of several GB), so the torch floor (2.6:
``torch.accelerator``, FSDP2's public ``fully_shard``) is read from the code and the release notes, not installed.
Every other dependency is installed at exactly its floor (``name==floor``; pip adds what those versions need).
Writes bench/dependency_floors.md and bench/dependency_floors.json: the versions imported and each test file's result.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UNTESTED = {"torch": "this machine's torch version is used (PyPI's torch wheels are multi-GB CUDA builds)"}
SMOKE_TESTS = ["tests/test_config.py", "tests/test_backbone.py", "tests/test_lora_bank.py", "tests/test_osf.py",
               "tests/test_merging.py", "tests/test_scores.py", "tests/test_use_run.py", "tests/test_report.py"]


def floors() -> dict[str, str]:
    """name -> floor of every ``name>=floor`` in [project].dependencies."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = {}
    for requirement in data["project"]["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
        if not match:
            raise SystemExit(f"pyproject: {requirement!r} is not of the form name>=floor")
        found[match[1]] = match[2]
    return found


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-venv", help="make (or reuse) the environment here instead of a temporary folder")
    parser.add_argument("--tests", nargs="+", default=SMOKE_TESTS)
    args = parser.parse_args()
    declared = floors()
    with tempfile.TemporaryDirectory(prefix="floors-") as tmp:
        venv = Path(args.keep_venv or Path(tmp) / "venv")
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        import torch

        pins = [f"{name}=={floor}" for name, floor in declared.items() if name not in UNTESTED]
        pins += [f"torch=={torch.__version__.split('+')[0]}", "pytest"]
        started = time.time()
        done = run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *pins])
        if done.returncode != 0:
            print(done.stdout, done.stderr)
            raise SystemExit("installing the floors failed: the declared floors cannot be installed together")
        install_s = time.time() - started
        probe = ("import importlib.metadata as m, json, sys; "
                 "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
        versions = json.loads(run([str(python), "-c", probe, *declared]).stdout)
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        results = []
        for test in args.tests:
            started = time.time()
            done = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env)
            summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
            failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            results.append({"test": test, "ok": done.returncode == 0, "summary": summary, "failures": failures[:10],
                            "seconds": round(time.time() - started, 1)})
            print(f"  {test}: {summary}", flush=True)
    record = {"python": sys.version.split()[0], "declared": declared, "imported": versions,
              "not_installed_at_floor": UNTESTED, "install_s": round(install_s, 1), "tests": results}
    (HERE / "dependency_floors.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Declared minimum versions, tested", "",
             "`python bench/dependency_floors.py`: every dependency of pyproject.toml installed at exactly its floor "
             "in a virtual environment (the installed torch used: " + UNTESTED["torch"] + "), then a smoke subset "
             "of the tests run against it.", "",
             "| package | declared | imported |", "| --- | --- | --- |"]
    note = {n: f" (not the floor: {why})" for n, why in UNTESTED.items()}
    lines += [f"| {n} | >={f} | {versions.get(n, '?')}{note.get(n, '')} |" for n, f in declared.items()]
    lines += ["", "| test file | result | seconds |", "| --- | --- | ---: |"]
    lines += [f"| `{r['test']}` | {'passed' if r['ok'] else 'FAILED'}: {r['summary']} | {r['seconds']} |"
              for r in results]
    lines += ["", "Not tested at their floor: torch (2.6 is the first release with `torch.accelerator` and a public "
              "FSDP2 `fully_shard`; the runs here use this machine's torch), Python 3.10 (`requires-python`; the runs "
              "here use " + record["python"] + "), and the extras (`deepspeed`, `lm-eval`, `tensorboard`), which "
              "the full test suite runs at the versions installed here."]
    lines += ["", "Why transformers 5.6: with 5.0 to 5.5 `tests/test_backbone.py` fails (their tokenizer read from the "
              "GGUF of a llama model prepends a BOS token to every text, which the published tokenizer does not)."]
    failed = [f for r in results for f in r["failures"]]
    if failed:
        lines += ["", "Failures:", "", *[f"- `{f}`" for f in failed]]
    (HERE / "dependency_floors.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
