"""bench/readme_tables.py replaces exactly the table under each named heading and leaves the prose alone."""
from helpers import load_script


def test_tables_replace_only_the_table_under_their_heading(tmp_path):
    module = load_script("bench/readme_tables.py")
    (tmp_path / "RESULTS.md").write_text("# R\n\n## standard order 1\n\nSettings\n\n| m | AP |\n| - | -: |\n| seqlora | 50 |\n"
                                         "\n## Invocations\n\n| started | runs |\n| - | -: |\n| x | 3 |\n")
    (tmp_path / "CLAIMS-short.md").write_text("# C\n\n## Summary\n\n| claim | verdict |\n| - | - |\n| a | reproduced |\n")
    tables = module.source_tables(tmp_path)
    assert set(tables) == {"**standard order 1**", "**Reduced claims check**"}  # no Invocations table
    readme = ("intro\n\n**Reduced claims check** (3 seeds):\n\n| claim | verdict |\n| - | - |\n| a | not run |\n\n"
              "between\n\n**standard order 1**\n\n| m | AP |\n| - | -: |\n| seqlora | 40 |\n| old | 1 |\n\nafter\n"
              "**superni order 1**\n\n| m | AP |\n| - | -: |\n| kept | 1 |\n")
    out = module.synced(readme, tables)
    assert "| seqlora | 50 |\n\nafter" in out and "| old |" not in out and "| 40 |" not in out
    assert "| a | reproduced |\n\nbetween" in out and "| kept | 1 |" in out  # no source: left as it was
    assert out.replace("| seqlora | 50 |\n", "| seqlora | 40 |\n| old | 1 |\n").replace(
        "reproduced", "not run") == readme


def test_the_committed_readme_is_in_sync():
    module = load_script("bench/readme_tables.py")
    assert module.main(["--check"]) == 0
