"""experiments/claim.py --quick: every arm runs through igpo.py and lands in the results table (structure only,
never who won)."""
import json
import os
import subprocess
import sys

from conftest import save_tiny_task_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("grpo", "sample_matched", "igpo", "igpo_full_hints", "igpo_no_filter")  # written out: not claim.ARMS


def test_claim_quick_writes_a_row_per_arm(tmp_path):
    save_tiny_task_model(tmp_path / "ck")
    cmd = [sys.executable, "experiments/claim.py", "--quick", "--model", str(tmp_path / "ck"), "--out",
           str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--", "--gen_length", "16", "--block_length", "8",
           "--diffusion_steps", "4", "--chunk", "2,3", "--reserve", "2", "--G", "4", "--micro_batch", "16"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    md = open(tmp_path / "out" / "claim-quick.md").read()
    assert "| SFT start (95% CI " in md  # the row every arm is measured against
    for arm in ARMS:
        assert f"| {arm} | " in md
    res = json.load(open(tmp_path / "out" / "claim-quick.json"))
    assert len(res["results"]) == 5 and all(any("eval" in row for row in run["rows"]) for run in res["results"])
    assert 0 <= res["start"]["test"] <= 1 and res["start"]["by_len"]
    r = subprocess.run(cmd[:3] + ["--report"] + cmd[3:], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert open(tmp_path / "out" / "claim-quick.md").read() == md  # --report rebuilds the same table from the JSON
    r = subprocess.run(cmd[:3] + ["--keep", "--seeds", "0,1"] + cmd[3:], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    more = json.load(open(tmp_path / "out" / "claim-quick.json"))
    assert [h["runs"] for h in more["history"]] == [5, 5]  # seed 0 reused, only seed 1 ran
    assert [(x["arm"], x["seed"]) for x in more["results"]] == [(a, s) for s in (0, 1) for a in ARMS]
    assert [x for x in more["results"] if x["seed"] == 0] == res["results"] and more["start"] == res["start"]
    assert "- igpo − grpo: " in open(tmp_path / "out" / "claim-quick.md").read()  # the paired comparison
    grpo = res["stats"]["grpo"][0]
    assert grpo["spent"] == 1.0  # GRPO samples exactly one rollout per on-policy rollout
    assert all(0 <= grpo[k] <= 1 for k in grpo if k.startswith("len") or k in ("test", "aw_before", "aw_after"))
