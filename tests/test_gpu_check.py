"""benchmarks/gpu_check.py at CI size on the CPU, so the one-shot GPU check cannot rot before a GPU runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_passes_every_check(tmp_path):
    pytest.importorskip("diffusers")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--work", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, rows = rows[0], rows[1:]
    assert header[0] == "| part" and header[-1] == "result |"
    parts = {r[0].removeprefix("| ") for r in rows}
    assert {"scan", "U", "guard", "M", "VAE", "tiling", "U speed", "SNUCV speed"} <= parts
    results = [r[-1].removesuffix(" |") for r in rows]
    assert "FAIL" not in results and results.count("ok") >= 6
    # every path measured something: errors are small numbers, speeds are positive
    scan_rows = [r for r in rows if r[0] == "| scan"]
    assert {r[1].split(",")[0] for r in scan_rows} == {"chunked", "numba"}
    assert all(float(r[3].split()[2]) <= 1e-4 for r in scan_rows)
    speeds = [r for r in rows if r[0] in ("| U speed", "| SNUCV speed")]
    assert len(speeds) == 5 and all(float(r[3].split()[0]) > 0 for r in speeds)
