"""`make readme` replaces exactly the demo block of the README with the current tables and figure."""

from __future__ import annotations

from msamil.reporting.readme import END, START, demo_section, update_readme


def test_demo_block_is_replaced_and_the_rest_kept(tmp_path):
    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    (results / "figures").mkdir()
    (results / "tables/main_results.md").write_text("| method | AUC |\n|---|---|\n| msamil | **0.9** |\n")
    (results / "tables/ablation.md").write_text("| method | AUC |\n|---|---|\n| 20x only | 0.7 |\n")
    (results / "figures/roc_synthetic.png").write_bytes(b"\x89PNG fake")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nSTALE-BLOCK\n{END}\n\ntail\n")
    update_readme(readme, demo_section(results, tmp_path / "docs" / "demo", "roc_synthetic", tmp_path))
    text = readme.read_text()
    assert "STALE-BLOCK" not in text and "**0.9**" in text and "20x only" in text
    assert text.startswith("# title") and text.rstrip().endswith("tail")
    assert (tmp_path / "docs/demo/roc_synthetic.png").read_bytes() == b"\x89PNG fake"
    assert "](docs/demo/roc_synthetic.png)" in text
