"""Invariant 3: the policies and the simulator are pure: no Ray, no I/O, no clock."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PURE = sorted((ROOT / "farm" / "policy").glob("*.py")) + [
    p for p in sorted((ROOT / "farm" / "simulate").glob("*.py")) if p.name != "cli.py"]  # cli times the bench


def test_importing_pulls_in_nothing_impure():
    code = ("import sys, farm.policy, farm.simulate; "
            "bad = [m for m in ('ray', 'minio', 'prometheus_client', 'farm.store', 'farm.runtime.ray_runtime') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_no_clock_files_or_network_in_pure_modules():
    forbidden = re.compile(r"^\s*(import|from)\s+(time|datetime|os|socket|pathlib|subprocess|urllib|ray|minio)\b"
                           r"|\bopen\(|\btime\.(time|monotonic|perf_counter|sleep)\(|\bnow\(\)|random\.(random|randint|uniform|choice)\(",
                           re.M)
    for path in PURE:
        hits = forbidden.findall(path.read_text(encoding="utf-8"))
        assert not hits, f"{path.relative_to(ROOT)}: {hits}"
