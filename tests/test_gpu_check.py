"""bench/gpu_check.sh runs end to end on CPU (--cpu: tiny sizes, bf16, FSDP2 on a 1-process gloo group) and prints
its table; on a GPU the same code runs at LLaDA-8B's width. No timing is asserted."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_on_cpu():
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "check" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| sampler bf16, 2 x (8 + 16), 8 steps",
                                                     "| train step, full FT, 2 x (8 + 16)",
                                                     "| train step, LoRA r=8, 2 x (8 + 16)"]
