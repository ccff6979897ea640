"""The real-size memory benchmark's watcher (issue 17): it measures a child's peak RSS and
stops a child that would leave the host short of memory."""

from __future__ import annotations

import sys

from benchmarks import memory_sd_vae as bench

ALLOCATE = "import time; b = bytearray({n}); b[::4096] = b'x' * len(b[::4096]); time.sleep({s})"


def test_watch_reports_the_peak_rss_of_its_child(tmp_path):
    size = 300 * 2**20  # touched page by page, so it is resident
    result = bench.watch([sys.executable, "-c", ALLOCATE.format(n=size, s=1)], floor_kib=0,
                         cwd=tmp_path)
    assert result["returncode"] == 0 and not result["killed_for_memory"]
    assert size // 1024 <= result["peak_rss_kib"] < (size + 200 * 2**20) // 1024
    assert 0 < result["min_mem_available_kib"] <= bench.mem_available_kib() + size // 1024


def test_watch_kills_a_child_when_memory_runs_low(tmp_path):
    # a floor above what the host has: the child is stopped at the first look
    floor = bench.mem_available_kib() + 2**30
    result = bench.watch([sys.executable, "-c", ALLOCATE.format(n=1, s=60)], floor_kib=floor,
                         cwd=tmp_path)
    assert result["killed_for_memory"] and result["returncode"] != 0 and result["wall_s"] < 30
