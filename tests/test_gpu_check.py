"""bench/gpu_check.sh, the prepared GPU check, runs its CPU-sized dry run end to end: every step succeeds, a run
directory with results comes out, and the throughput table compares seqlora with the peft peer per attention kernel."""
import json
import os
import subprocess

from helpers import ROOT


def test_the_gpu_check_dry_run_runs_every_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    rows = [line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["env", "method-seqlora", "throughput"] and all(r[1] == "0" for r in rows)
    results = json.loads((tmp_path / "runs" / "seqlora" / "results.json").read_text())
    assert results["method"] == "seqlora"
    info = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {(r["kernel"], r["variant"]) for r in info["rows"]} == {
        (k, v) for k in ("eager", "sdpa") for v in ("peft-lora", "seqlora")}
    assert all(r["train_tokens_per_s"] > 0 and r["generated_tokens_per_s"] > 0 for r in info["rows"])
    assert set(info["seqlora_over_peer_train_tokens_per_s"]) == {"eager", "sdpa"}
    assert "seqlora / peer" in (tmp_path / "gpu_check.md").read_text()
