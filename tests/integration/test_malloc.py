"""The worker's trimming thread (api.server.malloc) gives freed heap memory back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from api.server import malloc

# Run in its own process: the trimming thread cannot be stopped, and would run on in pytest's.
SCRIPT = textwrap.dedent(
    """
    import ctypes, time
    from api.server import malloc

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 200 MB of blocks below the mmap threshold, touched, then all freed but the last: that
    # one holds the top of the heap, so glibc keeps the rest (what mixed shapes leave).
    blocks = [libc.malloc(100_000) for _ in range(2000)]
    for block in blocks:
        ctypes.memset(block, 1, 100_000)
    for block in blocks[:-1]:
        libc.free(block)
    held = rss_mb()
    malloc.trim_periodically(0.1)
    deadline = time.monotonic() + 20
    while rss_mb() > held - 150 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(round(held), round(rss_mb()))
    """
)


@pytest.mark.skipif(malloc.MALLOC_TRIM is None, reason="not glibc: nothing to trim")
def test_freed_heap_memory_goes_back_to_the_system_within_an_interval():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd="."
    )
    assert result.returncode == 0, result.stderr
    held, after = map(int, result.stdout.split())
    assert held - after >= 150, (held, after)
