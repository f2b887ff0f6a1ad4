"""docs/scale.md publishes measured figures: each cited results file exists, the planning figures
are quoted from their results file, and the shard-writing ratios are the results file's."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "scale.md").read_text()


def test_cited_results_files_exist() -> None:
    cited = set(re.findall(r"benchmarks/results/[\w.*/-]*[\w*]", DOC))
    assert {"benchmarks/results/planning_scale.md", "benchmarks/results/shard_write.md"} <= cited
    for name in cited:
        assert (REPO / name).is_file(), f"{name} is cited but missing"


def test_planning_figures_are_the_results_file() -> None:
    """The planning section quotes the results file: every line of its text block is a line of
    ``planning_scale.md``."""
    section = DOC.split("## Planning cost per rank", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    results = set((REPO / "benchmarks/results/planning_scale.md").read_text().splitlines())
    lines = [line for line in block.splitlines() if line.strip()]
    assert sum(line.startswith("|") for line in lines) >= 6, block  # header, rule, four ranks
    for line in lines:
        assert line in results, f"docs/scale.md line {line!r} is not in planning_scale.md"


def test_shard_ratios_are_the_results_file() -> None:
    results = (REPO / "benchmarks/results/shard_write.md").read_text()
    found = re.findall(r"at (\d\.\d\d)× the throughput[\s\S]*?\((\d\.\d\d)× with 1\)", DOC)
    assert found, "docs/scale.md states no shard-writing ratio"
    two, one = found[0]
    assert re.search(rf"keep, 2 worker\(s\) \| [\d.]+ \| {two} \|", results)
    assert re.search(rf"keep, 1 worker\(s\) \| [\d.]+ \| {one} \|", results)
