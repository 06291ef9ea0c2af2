"""bench/run_time_vs_commit.py: old and new code in separate trees, alternated; the same commit on both sides gives
identical matrices (the runs are deterministic), and the temporary worktree is gone afterwards."""
import json
import subprocess

import pytest

from helpers import ROOT, load_script


def test_same_commit_twice_gives_identical_matrices(shared_data, tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    worktrees_before = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    module = load_script("bench/run_time_vs_commit.py")
    out = tmp_path / "cmp"
    module.main(["--old", "HEAD", "--model", "tiny-random-llama", "--methods", "seqlora", "--benchmarks", "standard",
                 "--max-train", "4", "--max-test", "2", "--repeats", "1", "--data-dir", str(shared_data),
                 "--output", str(out)])
    info = json.loads(out.with_suffix(".json").read_text())
    row, = info["rows"]
    assert (row["benchmark"], row["method"]) == ("standard", "seqlora")
    assert row["matrix_identical"] and row["old_AP"] == row["new_AP"]
    assert row["old_train_s"] > 0 and row["ratio_wall_s"] > 0
    assert "| standard | seqlora |" in out.with_suffix(".md").read_text()
    worktrees_after = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert worktrees_after == worktrees_before


def test_an_unknown_old_revision_is_refused_before_anything_runs(tmp_path, capsys):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    module = load_script("bench/run_time_vs_commit.py")
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as stop:
        module.main(["--old", "no-such-revision-x", "--output", str(out)])
    assert stop.value.code == 2
    assert "--old: 'no-such-revision-x' is not a revision" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
