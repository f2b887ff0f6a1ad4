"""benchmarks/bench_workers.py on a tiny corpus: 1 and 2 workers, one run each; the table's
figures and ratios are those of the JSON it writes, and the JSON's ratios are those of the runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from helpers_scripts import load_benchmark


def load_script() -> ModuleType:
    return load_benchmark("bench_workers")


def number(cell: str) -> float | None:
    cell = cell.strip().rstrip("×").replace(",", "")
    return None if cell == "–" else float(cell)


def test_table_and_json_agree_with_the_runs(tmp_path: Path) -> None:
    script = load_script()
    md, js = tmp_path / "w.md", tmp_path / "w.json"
    args = ["--workers", "2", "1", "--formats", "flac", "--hours", "0.02", "--repeats", "1"]
    args += ["--batches-per-worker", "2", "--batch-duration", "20", "--finalize", "--finalize-repeats", "1"]
    args += ["--corpus-dir", str(tmp_path / "corpus"), "--md", str(md), "--json", str(js)]
    assert script.main(args) == 0
    data = json.loads(js.read_text())
    assert data["settings"]["workers"] == [1, 2] and data["machine"]["cpu_count"] >= 1
    flac = data["formats"]["flac"]
    table = [line for line in md.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(flac["rows"]) == 2
    for line, row in zip(table, flac["rows"], strict=True):
        w = row["workers"]
        run = flac["runs"][str(w)]
        assert run["settings"]["workers"] == w and run["settings"]["max_batches"] == 1 + 2 * w
        rates = {p: run["peers"][p]["figures"]["audio_s_per_s"] for p in ("speechdata", "floor", "lhotse")}
        assert row["speechdata_audio_s_per_s"] == rates["speechdata"]
        assert row["floor_audio_s_per_s"] == rates["floor"] and row["lhotse_audio_s_per_s"] == rates["lhotse"]
        assert row["floor_x_workers"] == pytest.approx(rates["floor"] * w)
        assert row["scaling"] == pytest.approx(rates["speechdata"] / (rates["floor"] * w))
        assert row["vs_lhotse"] == pytest.approx(rates["speechdata"] / rates["lhotse"])
        assert row["scaling_met"] == (row["scaling"] >= script.SCALING_TARGET)
        assert row["ahead_of_lhotse"] == (row["vs_lhotse"] > 1.0)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[0]) == w
        for cell, key, digits in (
            (cells[1], "speechdata_audio_s_per_s", 0),
            (cells[2], "lhotse_audio_s_per_s", 0),
            (cells[3], "floor_audio_s_per_s", 0),
            (cells[4], "floor_x_workers", 0),
            (cells[5], "scaling", 2),
            (cells[7], "vs_lhotse", 2),
        ):
            assert number(cell) == round(row[key], digits), (w, key)
        assert cells[6] == ("yes" if row["scaling_met"] else "no")
        assert cells[8] == ("yes" if row["ahead_of_lhotse"] else "no")
    timing = data["finalize"]["flac"]
    assert timing["timed_batch_examples"] >= 1 and timing["pad+logmel_cpu_ms"] > 0


def test_batch_durations_per_format() -> None:
    script = load_script()
    assert script.batch_durations(["120", "wav=600"], ["flac", "wav"]) == {"flac": 120.0, "wav": 600.0}
    assert script.batch_durations(["wav=600", "90"], ["flac", "wav"]) == {"flac": 90.0, "wav": 600.0}
    with pytest.raises(SystemExit, match="no value for flac"):
        script.batch_durations(["wav=600"], ["flac", "wav"])
    with pytest.raises(SystemExit, match="names a format not in --formats"):
        script.batch_durations(["mp3=60"], ["flac"])
