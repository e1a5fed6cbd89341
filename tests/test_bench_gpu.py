"""`python -m bnsweep.bench gpu` (issue 21, item 4): with no GPU it runs at CPU smoke size, trials in processes of
their own started together, fused cohorts in one process each, and prints one table and the `best:` line over both."""

import re
import subprocess
import sys

from bnsweep.bench import gpu


def test_bench_gpu_runs_at_cpu_smoke_size_without_a_gpu(capsys):
    assert gpu.main(["--device", "cpu", "--per-device", "1,2", "--fused", "2", "--steps", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "smoke-size VGG-11 on cpu" in out and "no GPU figure" in out and "fused cohorts of 2" in out
    rows = re.findall(r"^ +([12]|fused 2) +([0-9.]+) +([0-9,.]+) +([0-9.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2", "fused 2"] and rows[0][3] == "1.00"
    assert all(float(r[1]) > 0 and float(r[2].replace(",", "")) > 0 for r in rows)
    assert "not built yet" not in out
    best = re.search(r"^best: ([0-9.]+) trials/CPU-hour \(x ([0-9.]+) over 1 per CPU\)$", out, re.M)
    assert best and float(best.group(1)) == max(float(r[2].replace(",", "")) for r in rows)


def test_bench_gpu_help_through_the_dispatcher():
    done = subprocess.run([sys.executable, "-m", "bnsweep.bench", "gpu", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "trials per device" in done.stdout.lower()
    assert "fused cohorts of 2, 4, 8" in " ".join(done.stdout.split()) and "not built yet" not in done.stdout


def test_a_fused_row_counts_every_member_of_its_cohort():
    """A cohort of k timed at s seconds per step does k trials' steps: k x the rate of one trial at that speed."""
    rows = {"1": [{"seconds": 2.0, "steps": 10}], "fused 4": [{"seconds": 4.0, "steps": 10, "trials": 4}]}
    text, best, ratio = gpu.table(rows, "GPU")
    assert best == 4 * 10 / 4.0 * 3600 / gpu.PAPER_STEPS and ratio == 2.0 and "   fused 4" in text
