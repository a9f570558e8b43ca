"""The benchmark's sample generator (bench/sample.py) and the benchmark itself.

The generator must give the mix that was asked for, page for page, with each
page really of its declared kind, and the same bytes for the same seed: the
benchmark's numbers mean nothing otherwise. The benchmark is run end to end on
a small sample; its timings are not asserted (they depend on the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import sample  # noqa: E402  (bench/ is not a package: it holds scripts)

PAGE = sample.PAGE_SIZE
SMALL = 4 << 20


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> sample.Sample:
    path = tmp_path_factory.mktemp("sample") / "sample.bin"
    return sample.generate(path, SMALL, sample.ACCEPTANCE_MIX, seed=7)


def test_counts_follow_the_mix(small: sample.Sample) -> None:
    pages = SMALL // PAGE
    counts = small.counts()
    assert sum(counts.values()) == pages
    for kind in sample.KINDS:
        assert abs(counts[kind] - pages * sample.ACCEPTANCE_MIX[kind] / 100) < 1, kind
    assert small.path.stat().st_size == SMALL


def test_runs_cover_the_file_in_order(small: sample.Sample) -> None:
    expected_first = 0
    for run in small.runs:
        assert run.first_page == expected_first and run.count > 0
        expected_first += run.count
    assert expected_first == SMALL // PAGE
    # memory-like: runs of several pages, not one kind per page at random
    assert len(small.runs) < SMALL // PAGE / 3


def _pages(data: bytes, run: sample.Run) -> list[bytes]:
    start = run.first_page * PAGE
    return [data[start + i * PAGE:start + (i + 1) * PAGE] for i in range(run.count)]


def test_every_page_is_of_its_kind(small: sample.Sample) -> None:
    data = small.path.read_bytes()
    zero = bytes(PAGE)
    seen_files: dict[str, set[str]] = {"binary": set(), "text": set()}
    for run in small.runs:
        pages = _pages(data, run)
        if run.kind == "zero":
            assert all(page == zero for page in pages)
            continue
        assert all(page != zero for page in pages), run
        if run.kind == "random":
            assert all(len(zlib.compress(page, 9)) >= PAGE for page in pages)
        elif run.kind == "pattern":
            assert 1 <= len(run.pattern) <= sample.MAX_PATTERN_BYTES
            assert all(page == sample.pattern_page(run.pattern) for page in pages)
        else:
            assert len(run.sources) == run.count
            for page, (path, index) in zip(pages, run.sources, strict=False):
                with open(path, "rb") as source:
                    head = source.read(4)
                    source.seek(index * PAGE)
                    assert source.read(PAGE) == page, (path, index)
                if run.kind == "binary":
                    assert head == b"\x7fELF", path
                else:
                    assert sample.is_text(page), path
                seen_files[run.kind].add(path)
    # taken from many files, as a page cache would hold them
    assert len(seen_files["binary"]) > 1 and len(seen_files["text"]) > 1


def test_same_seed_same_bytes(small: sample.Sample, tmp_path: Path) -> None:
    again = sample.generate(tmp_path / "again.bin", SMALL, sample.ACCEPTANCE_MIX, seed=7)
    assert again.runs == small.runs
    assert again.path.read_bytes() == small.path.read_bytes()


def test_other_seed_other_bytes(small: sample.Sample, tmp_path: Path) -> None:
    other = sample.generate(tmp_path / "other.bin", SMALL, sample.ACCEPTANCE_MIX, seed=8)
    assert other.counts() == small.counts()
    assert other.path.read_bytes() != small.path.read_bytes()


def test_kinds_left_out_are_absent(tmp_path: Path) -> None:
    made = sample.generate(tmp_path / "s.bin", 1 << 20, {"zero": 50, "pattern": 50}, seed=1)
    assert made.counts() == {"zero": 128, "binary": 0, "text": 0, "random": 0, "pattern": 128}


@pytest.mark.parametrize("mix, message", [
    ({"zero": 40, "binary": 25}, "adds up to 65"),
    ({"zero": 120, "random": -20}, "between 0 and 100"),
    ({"zero": 90, "swap": 10}, "unknown page kinds"),
])
def test_bad_mix_is_refused_before_writing(tmp_path: Path, mix: dict[str, float],
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample.generate(tmp_path / "s.bin", 1 << 20, mix, seed=1)
    assert not (tmp_path / "s.bin").exists()


@pytest.mark.parametrize("text, size", [
    ("8M", 8 << 20), ("512MiB", 512 << 20), ("1g", 1 << 30), ("65536", 65536), ("4K", 4096)])
def test_parse_size(text: str, size: int) -> None:
    assert sample.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-4K", "1.5M", "100", "0", "8X"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        sample.parse_size(text)


@given(st.integers(0, 1 << 20),
       st.lists(st.integers(0, 1000), min_size=len(sample.KINDS), max_size=len(sample.KINDS))
       .filter(any))
def test_page_counts_add_up_and_stay_within_a_page(pages: int, weights: list[int]) -> None:
    total = sum(weights)
    mix = {kind: 100 * w / total for kind, w in zip(sample.KINDS, weights, strict=False)}
    counts = sample.page_counts(pages, sample.validate_mix(mix))
    assert sum(counts.values()) == pages
    for kind in sample.KINDS:
        assert abs(counts[kind] - pages * mix[kind] / 100) < 1


# --- bench/image.py end to end (no timing is asserted) ----------------------

OPERATIONS = ["ours save", "ours verify", "ours restore", "sealed save", "sealed verify", "sealed restore",
              "lz4 -1", "lz4 -d", "zstd -1 -T2", "cp"]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "image.py"), "--size", "8M", "--repeat", "1",
         "--dir", str(tmp_path), *args],
        capture_output=True, text=True, check=False, timeout=600)


def test_bench_json(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--json", "--seed", "3")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sample"]["bytes"] == 8 << 20
    assert result["sample"]["pages"] == sample.page_counts(2048, sample.ACCEPTANCE_MIX)
    assert list(result["timings"]) == OPERATIONS
    for name, timing in result["timings"].items():
        assert len(timing["runs_seconds"]) == 1 and timing["best_seconds"] > 0, name
        assert len(timing["cpu_runs_seconds"]) == 1 and timing["best_cpu_seconds"] >= 0, name
    for name in ("ours save", "lz4 -1", "zstd -1 -T2", "cp"):
        assert result["timings"][name]["output_bytes"] > 0, name
    assert result["timings"]["cp"]["output_bytes"] == 8 << 20
    assert 0 < result["stream_bytes"] < result["timings"]["ours save"]["output_bytes"]
    assert [t["name"] for t in result["targets"]] == [
        "save time / lz4 -1 time", "image size / lz4 -1 size", "restore time / lz4 -d time",
        "verify GB/s (of memory size)"]
    assert all(isinstance(t["pass"], bool) for t in result["targets"])
    assert result["acceptance_sample"] is False
    assert "profile" not in result
    assert list(tmp_path.iterdir()) == [], "the benchmark must remove its files"


def test_bench_table_and_profile(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--profile", "--keep", "--compression", "zstd")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in OPERATIONS:
        assert any(line.startswith(name + " ") for line in lines), name
    verdicts = [line for line in lines if line.endswith(("PASS", "MISS"))]
    assert len(verdicts) == 4
    assert any(line.startswith("note: the targets are defined on 512 MiB") for line in lines)
    for phase in ("save", "verify", "restore"):
        assert f"--- profile of one {phase}" in done.stdout
    assert "function calls" in done.stdout
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1 and (kept[0] / "sample.mem").stat().st_size == 8 << 20


@pytest.mark.parametrize("args, message", [
    (["--zero", "50"], "adds up to 110"),
    (["--size", "10000"], "multiple of 4096"),
    (["--repeat", "0"], "at least 1"),
])
def test_bench_refuses_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    done = _bench(tmp_path, *args)
    assert done.returncode == 2 and message in done.stderr
    assert list(tmp_path.iterdir()) == []
