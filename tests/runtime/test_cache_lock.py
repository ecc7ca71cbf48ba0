"""cache_lock: one process at a time builds into a cache folder; a second waits, or fails clearly past its wait."""

import subprocess
import sys
import textwrap
import time

import pytest

from fusionrt.runtime.cache_lock import cache_lock
from fusionrt.runtime.errors import BackendUnavailable


def _holder(folder, seconds: float):
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        from fusionrt.runtime.cache_lock import cache_lock
        with cache_lock(pathlib.Path({str(folder)!r}), "a test"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_waits_for_the_first(tmp_path):
    holder = _holder(tmp_path / "cache", 1.0)
    started = time.monotonic()
    with cache_lock(tmp_path / "cache", "a test"):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.5  # the holder kept it for 1 s after saying so


def test_a_lock_held_past_the_wait_is_a_clear_error(tmp_path):
    holder = _holder(tmp_path / "cache", 30.0)
    try:
        with pytest.raises(BackendUnavailable, match="stayed locked by another process for 1 s"):
            with cache_lock(tmp_path / "cache", "a test", timeout_s=1.0):
                pass
    finally:
        holder.kill()
        holder.wait()
