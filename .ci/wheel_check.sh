#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it the README's way into a fresh virtual environment (no
# system packages), then, from outside the source tree: `pip check` is clean, the wheel holds its data files, the
# command answers, and a tiny run trains and reports. Run by .ci/run after the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel --no-deps --quiet --wheel-dir "$work/dist" .
wheel="$(ls "$work"/dist/continual_lm-*.whl)"
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["continual_lm/presets/paper/amlora.yaml", "continual_lm/accelerate_configs/ddp_cpu.yaml",
        "continual_lm/accelerate_configs/fsdp.yaml"]
missing = [n for n in need if n not in names] + ([] if any(n.endswith("licenses/LICENSE") for n in names) else ["LICENSE"])
assert not missing, f"the wheel lacks {missing}"
print(f"wheel ok: {len(names)} files, presets, accelerate configs and LICENSE included")
PY
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0 "$wheel"
"$work/venv/bin/python" -m pip check
cd "$work"
bin="$work/venv/bin/continual-lm"
"$bin" --version
"$bin" run --help > help.txt && grep -q -- "--learning-rate LR" help.txt
"$bin" list > list.txt && grep -q "amlora" list.txt
"$bin" accelerate-config ddp_cpu && test -s ddp_cpu.yaml
CONTINUAL_LM_CACHE="$work/cache" OMP_NUM_THREADS=2 "$bin" run --benchmark demo --method inclora \
    --model tiny-random-llama --max-train-per-task 8 --max-test-per-task 4 --max-target-length 8 \
    --learning-rate 1e-3 --output-dir run --no-progress > run.log
test -s run/results.json && grep -q "| inclora" run.log
echo "wheel install check: ok"
