"""The view with a stock pyfuse3, as distributions ship it, besides the patched build.

scripts/bootstrap builds pyfuse3 with third_party/pyfuse3's patches into the venv, and with
``--test`` also the same sdist without them into ``<venv>/pyfuse3-stock``.  The two take
different paths through snapshotter/view/fusefs.py: the patched one never sees open,
opendir or release and keeps data files open itself (bounded, evicting the oldest); the
stock one answers every open and release.  So the FUSE tests run here a second time, in a
child pytest with the stock build first on PYTHONPATH; conftest makes that child refuse to
run with anything but the stock build, and every mount checks its daemon loaded it too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, unavailable

STOCK = Path(sys.prefix) / "pyfuse3-stock"
FUSE_TESTS = [
    "tests/test_fusefs.py",
    "tests/test_fusefs_cache.py",
    "tests/test_mount_life.py",
    "tests/test_lazy_mount.py",
]
# Its time goes to pulling 100k entries; listings take the same path in smaller tests.
# The lazy tests left out read no file, or none in a way the equality test does not.
LEFT_OUT = (
    "not test_a_directory_of_100k_entries and not test_fixture_layouts_mount_lazily"
    " and not test_a_failed_lazy_mount and not test_mount_lazy_errors and not test_local_blob"
)


def test_the_fuse_tests_pass_with_a_stock_pyfuse3():
    from snapshotter.view import fusefs

    assert fusefs.NO_OPEN, "this run must have the patched pyfuse3 (scripts/bootstrap)"
    if not (STOCK / "pyfuse3").is_dir():
        unavailable(f"no stock pyfuse3 in {STOCK}: run scripts/bootstrap --test")
    path = os.pathsep.join([str(STOCK), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)}
    env["SNAPSHOTTER_TEST_STOCK_PYFUSE3"] = "1"
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", LEFT_OUT]
        + FUSE_TESTS,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    took = time.monotonic() - started
    report = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, f"with a stock pyfuse3 ({took:.0f} s):\n{report}"
    summary = child.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 40, summary
    print(f"stock pyfuse3: {summary} ({took:.0f} s)")
