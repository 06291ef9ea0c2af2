"""bench/speed.py runs every kind of method it lists (here one of each new family on a tiny model) and writes its
table: a method that cannot be set up outside the loop would only show when the benchmark is re-run."""
import json

from helpers import load_script


def test_speed_script_on_a_tiny_model(tmp_path):
    module = load_script("bench/speed.py")
    methods = ["inflora", "gainlora", "merge-ties", "osf", "sapt-lora"]
    assert set(methods) <= set(module.default_methods())
    module.main(["--model", "tiny-random-llama", "--methods", *methods, "--reps", "1", "--tasks", "2",
                 "--no-memory", "--group-size", "2", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["peft-lora", "seqlora", *methods]
    assert [r["group"] for r in rows] == [0, 0, 0, 0, 1, 1, 2]  # timed in groups of 2 beside their own seqlora
    assert all(r["train_step_s"] > 0 and r["eval_samples_per_s"] > 0 for r in rows)
    assert "| inflora | 0 |" in (tmp_path / "SPEED.md").read_text()
