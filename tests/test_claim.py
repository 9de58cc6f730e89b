"""experiments/claim.py: levels, arms, seeds, --keep, --test_seed and --report on a tiny model (structure only,
never who won). The arms come from claim.ARMS, plus one added by the test: the harness must not depend on a list."""
import importlib.util
import json
import os
import sys

import pytest

from conftest import ROOT, save_tiny_task_model

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import claim  # noqa: E402

PLOTS = importlib.util.find_spec("matplotlib") is not None  # plots are experiment-only: CI has no matplotlib

TINY = ["--", "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "4", "--chunk", "2,3", "--reserve",
        "2", "--G", "4", "--micro_batch", "16"]


def run_claim(monkeypatch, tmp_path, *flags):
    monkeypatch.setattr(sys, "argv", ["claim.py", "--quick", "--model", str(tmp_path / "ck"), "--out",
                                      str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), *flags, *TINY])
    claim.main()
    return json.load(open(tmp_path / "out" / "claim.json"))


def test_claim_levels_arms_keep_test_seed_and_report(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    save_tiny_task_model(tmp_path / "ck")
    monkeypatch.setitem(claim.ARMS, "probe", ["--lam", "0.25"])  # a forked ablation: one line in ARMS
    arms = [claim.REFERENCE, "probe"]
    res = run_claim(monkeypatch, tmp_path, "--level", "0,1", "--arms", ",".join(arms))
    assert sorted((r["level"], r["arm"]) for r in res["results"]) == sorted((lv, a) for lv in (0, 1) for a in arms)
    md = open(tmp_path / "out" / "claim.md").read()
    for lv in ("task-ext0", "task-ext1"):
        assert f"## Level {lv}" in md and (tmp_path / "out" / f"claim-{lv}.png").exists() == PLOTS
    assert md.count("| probe | 1 | ") == 2 and f"- {claim.REFERENCE} − probe, level test: " in md
    assert (tmp_path / "out" / "dose.png").exists() == PLOTS and f"| {claim.REFERENCE} − probe | " in md
    assert ("![dose-response](dose.png)" in md) == PLOTS  # no broken image links without matplotlib
    tsv = open(tmp_path / "out" / "runs.tsv").read().splitlines()
    assert len(tsv) == 1 + 2 * (2 + 4)  # header; per level: the start and 2 runs, each on 2 test sets
    run = next(r for r in res["results"] if r["arm"] == "probe" and r["level"] == 1)
    assert "--lam" in run["flags"] and "task-ext1" in run["flags"]
    assert all(t["n_problems"] == 20 for t in run["tests"].values())

    other = next(a for a in claim.ARMS if a not in arms)
    more = run_claim(monkeypatch, tmp_path, "--level", "1", "--arms", other, "--keep", "--test_seed", "5")
    assert [h["runs"] for h in more["history"]] == [4, 1]  # only the new arm trained; nothing dropped
    assert len(more["results"]) == 5
    for r in more["results"]:  # every run, old or new, scored on the new test seed; old scores kept
        assert "level@5" in r["tests"] and (r["arm"] == other or "level@100" in r["tests"])
    assert all("level@5" in s["tests"] and "level@100" in s["tests"] for s in more["starts"].values())
    first = json.load(open(tmp_path / "out" / "claim.json"))
    md = open(tmp_path / "out" / "claim.md").read()
    monkeypatch.setattr(sys, "argv", ["claim.py", "--quick", "--report", "--out", str(tmp_path / "out")])
    claim.main()
    assert open(tmp_path / "out" / "claim.md").read() == md  # --report rebuilds the same tables from the JSON
    assert json.load(open(tmp_path / "out" / "claim.json")) == first


def test_claim_refuses_an_unknown_arm(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["claim.py", "--arms", "no_such_arm", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        claim.main()
    assert e.value.code == 2


def test_levels_sound_checks_every_reasoning_line():
    """experiments/levels.py's step-by-step check: every reference solution is sound; a verified answer reached
    through wrong lines (a hint revealed the last line) is not."""
    import data
    import levels
    for name in ("task-ext0", "task-ext1"):
        assert all(levels.sound(it["question"], data.format_response(it)) for it in data.task_level(name, "rl")[:200])
    q = "Tom has 5 apples. First he finds 2, second loses 3, third gets 3, fourth gives 2. How many apples now?"
    assert levels.sound(q, "first: 5+2=7\nsecond: 7-3=4\nthird: 4+3=7\nfourth: 7-2=5\n</reasoning>\\boxed{5}")
    assert not levels.sound(q, "first: 0+2=7\nsecond: 4-3=4\nthird: 4+3=1\nfourth: 7-2=5\n</reasoning>\\boxed{5}")
    assert not levels.sound(q, "first: 5+2=7\nsecond: 7-3=4\nthird: 4+3=7\n</reasoning>\\boxed{7}")  # a step missing
