"""The batch-job benchmark runs end to end on a small job and prints every table (a GPU run relies on it)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_batch_benchmark_prints_its_tables_on_a_small_job():
    done = subprocess.run([sys.executable, "bench/batch.py", "--skip-ray", "--models", "demo", "--images", "32",
                           "--repeats", "1", "--shard-size", "16", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for heading in ("s/GB again at once", "End to end, images/s", "local / limit (target ≥ 0.9)", "waiting for decoding",
                    "Fixed costs", "Steady rate"):
        assert heading in done.stdout, heading


def test_gpu_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")]).returncode == 0
