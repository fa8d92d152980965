"""`make readme` replaces exactly the demo block of the README with the current tables and figure."""

from __future__ import annotations

import pytest

from msamil.reporting.readme import END, START, demo_section, main, update_readme


def write_tables(results, with_comparisons: bool = True) -> None:
    (results / "tables").mkdir(parents=True)
    (results / "figures").mkdir()
    (results / "tables/main_results.md").write_text("| method | AUC |\n|---|---|\n| msamil | **0.9** |\n")
    (results / "tables/main_results.tsv").write_text("dataset\tmethod\tn_resamples\nsynthetic\tmsamil\t4321\n")
    (results / "tables/ablation.md").write_text("| method | AUC |\n|---|---|\n| 20x only | 0.7 |\n")
    if with_comparisons:
        (results / "tables/comparisons.md").write_text("| Method | ΔAUC |\n|---|---|\n| 5x only | +0.1 |\n")
    (results / "figures/roc_synthetic.png").write_bytes(b"\x89PNG fake")


def test_demo_block_is_replaced_and_the_rest_kept(tmp_path):
    results = tmp_path / "results"
    write_tables(results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nSTALE-BLOCK\n{END}\n\ntail\n")
    update_readme(readme, demo_section(results, tmp_path / "docs" / "demo", "roc_synthetic", tmp_path))
    text = readme.read_text()
    assert "STALE-BLOCK" not in text and "**0.9**" in text and "20x only" in text and "| 5x only | +0.1 |" in text
    assert "4321 bootstrap resamples" in text  # the number behind the intervals, read from the tables
    assert text.index("**0.9**") < text.index("20x only") < text.index("5x only")
    assert text.startswith("# title") and text.rstrip().endswith("tail")
    assert (tmp_path / "docs/demo/roc_synthetic.png").read_bytes() == b"\x89PNG fake"
    assert "](docs/demo/roc_synthetic.png)" in text


def test_tables_of_an_older_run_are_refused_with_the_fix(tmp_path):
    results = tmp_path / "results"
    write_tables(results, with_comparisons=False)
    with pytest.raises(SystemExit, match="comparisons.md"):
        demo_section(results, tmp_path / "docs", "roc_synthetic", tmp_path)


def test_benchmark_block_is_filled_and_the_demo_block_left_alone(tmp_path):
    results = tmp_path / "bench_results"
    write_tables(results)
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\nDEMO-BLOCK\n{END}\n<!-- benchmark-results:start -->\nSTALE\n"
                      "<!-- benchmark-results:end -->\n")
    main(["--block", "benchmark", "--results", str(results), "--readme", str(readme),
          "--docs", str(tmp_path / "docs" / "benchmark")])
    text = readme.read_text()
    assert "DEMO-BLOCK" in text and "STALE" not in text and "**0.9**" in text
    assert "](docs/benchmark/roc_synthetic.png)" in text
