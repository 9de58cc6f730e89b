"""experiments/claim.py: levels, arms, seeds, --keep, --test_seed and --report on a tiny model (structure only,
never who won). The arms come from claim.ARMS, plus one added by the test: the harness must not depend on a list."""
import importlib.util
import json
import math
import os
import shutil
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, save_tiny_task_model

import data  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import claim  # noqa: E402
import arm_vs_arm  # noqa: E402
import kl_spikes  # noqa: E402
import paired_eval  # noqa: E402

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
    res = run_claim(monkeypatch, tmp_path, "--level", "6b4,5", "--arms", ",".join(arms))  # a level of big steps too
    got = sorted((r["level"], r["arm"]) for r in res["results"])
    assert got == sorted((lv, a) for lv in ("5", "6b4") for a in arms)
    md = open(tmp_path / "out" / "claim.md").read()
    for lv in ("task-5", "task-6b4"):
        assert f"## Level {lv}" in md and (tmp_path / "out" / f"claim-{lv}.png").exists() == PLOTS
    assert md.count("| probe | 1 | ") == 2 and f"- {claim.REFERENCE} − probe, level test: " in md
    paired = [line for line in md.splitlines() if line.startswith(f"- {claim.REFERENCE} − probe")]
    assert paired and all("(no interval from 1 seed;" in line and "nan" not in line for line in paired)
    assert (tmp_path / "out" / "dose.png").exists() == PLOTS and f"| {claim.REFERENCE} − probe | " in md
    assert ("![dose-response](dose.png)" in md) == PLOTS  # no broken image links without matplotlib
    assert f"| {claim.REFERENCE} − probe, sound pass@1 | " in md  # the dose-response in both metrics
    assert "nan" not in md and md.count(" (1 seed) |") == 2 * 2  # 2 levels x 2 metrics, 1 seed: no interval
    for lv, section in zip(("5", "6b4"), md.split("## Level task-")[1:]):  # in level order ("5" < "6b4" < "7")
        assert section.startswith(lv)  # the main level's test is the standard test: its columns are not shown twice
        assert ("| standard test |" in section) == (lv != str(data.TASK_MAIN)), lv
    tsv = open(tmp_path / "out" / "runs.tsv").read().splitlines()
    assert len(tsv) == 1 + 2 * (2 + 4)  # header; per level: the start and 2 runs, each on 2 test sets
    run = next(r for r in res["results"] if r["arm"] == "probe" and r["level"] == "6b4")
    assert "--lam" in run["flags"] and "task-6b4" in run["flags"]
    assert all(t["n_problems"] == 20 for t in run["tests"].values())

    other = next(a for a in claim.ARMS if a not in arms)
    more = run_claim(monkeypatch, tmp_path, "--level", "6b4", "--arms", other, "--keep", "--test_seed", "5")
    assert [h["runs"] for h in more["history"]] == [4, 1]  # only the new arm trained; nothing dropped
    assert len(more["results"]) == 5
    for r in more["results"]:  # every run, old or new, scored on the new test seed; old scores kept
        assert "level@5" in r["tests"] and (r["arm"] == other or "level@0" in r["tests"])
    assert all("level@5" in s["tests"] and "level@0" in s["tests"] for s in more["starts"].values())
    first = json.load(open(tmp_path / "out" / "claim.json"))
    md = open(tmp_path / "out" / "claim.md").read()
    monkeypatch.setattr(sys, "argv", ["claim.py", "--quick", "--report", "--out", str(tmp_path / "out")])
    claim.main()
    assert open(tmp_path / "out" / "claim.md").read() == md  # --report rebuilds the same tables from the JSON
    assert json.load(open(tmp_path / "out" / "claim.json")) == first


def test_report_rebuilds_the_committed_claim_tables(tmp_path, monkeypatch):
    """--report on the committed claim.json (levels stored as ints by older code) gives the committed claim.md and
    runs.tsv back, image links and blank lines aside (the links need matplotlib)."""
    committed = os.path.join(ROOT, "experiments", "results", "claim")
    shutil.copy(os.path.join(committed, "claim.json"), tmp_path / "claim.json")
    monkeypatch.setattr(sys, "argv", ["claim.py", "--report", "--out", str(tmp_path)])
    claim.main()
    text = lambda path: [x for x in open(path).read().splitlines() if x and not x.startswith("![")]  # noqa: E731
    assert text(tmp_path / "claim.md") == text(os.path.join(committed, "claim.md"))
    assert open(tmp_path / "runs.tsv").read() == open(os.path.join(committed, "runs.tsv")).read()


def test_claim_refuses_an_unknown_arm(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["claim.py", "--arms", "no_such_arm", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        claim.main()
    assert e.value.code == 2


@pytest.mark.parametrize("df,table", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (11, 2.201), (20, 2.086),
                                      (30, 2.042), (100, 1.984)])
def test_t_quantile_matches_the_table(df, table):
    assert abs(claim.t975(df) - table) < 6e-4  # the table's 3 decimals


@pytest.mark.parametrize("df", [3, 4, 12, 37, 64])
def test_t_quantile_by_integrating_the_density(df):
    """An independent computation: Simpson's rule on Student's density from 0 to the quantile gives 0.475."""
    q, n = claim.t975(df), 2000
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = [c * (1 + (q * i / n) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    area = q / n / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    assert area == pytest.approx(0.475, abs=1e-7)


def test_paired_interval_and_mean_std_by_hand():
    # d = 0.1, 0.3: mean 0.2, std sqrt(0.02) = 0.141421, half = 12.706 * 0.141421 / sqrt(2) = 1.2706
    m, lo, hi = claim.paired_interval([0.1, 0.3])
    assert m == pytest.approx(0.2)
    assert lo == pytest.approx(0.2 - 1.2706, abs=1e-4) and hi == pytest.approx(0.2 + 1.2706, abs=1e-4)
    # 12 seeds, six 0 and six 1: mean 0.5, std sqrt(3 / 11), half = t(11) sqrt(3 / 11) / sqrt(12) = 2.201 / sqrt(44)
    m, lo, hi = claim.paired_interval([0.0] * 6 + [1.0] * 6)
    assert m == 0.5 and hi - m == pytest.approx(2.201 / math.sqrt(44), abs=1e-4) and m - lo == pytest.approx(hi - m)
    m, lo, hi = claim.paired_interval([0.25])  # one seed: no interval
    assert m == 0.25 and math.isnan(lo) and math.isnan(hi)
    assert claim.mean_std([0.1, 0.3]) == "0.200 ± 0.141"  # sample std (n - 1)
    assert claim.mean_std([0.5]) == "0.500"  # one seed: no spread to show


def test_run_stats_by_hand():
    """5 rollout batches (mu = 2: update rows between them): halves of 2 batches; rollout time includes inpainting."""
    rows = []
    for i, acc in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        rows.append(dict(step=2 * i + 1, acc=acc, all_wrong_before=0.1 * i, all_wrong_after=0.05 * i, spent=1 + i,
                         t_rollout=10.0, t_inpaint=float(i), kl=0.01 * i, clip_frac=0.1))
        rows.append(dict(step=2 * i + 2, kl=0.03 * i, clip_frac=0.3))
    tests = {"level@7": dict(accuracy=0.4, sound_accuracy=0.3), "task": dict(accuracy=0.55, sound_accuracy=0.5)}
    got = claim.run_stats(dict(rows=rows, tests=tests), 7)
    want = dict(test=0.4, sound=0.3, std_test=0.55, std_sound=0.5, aw_before=0.2, aw_after=0.1, spent=3.0,
                acc_first=0.125, acc_last=0.875, rollout_s=12.0, kl=0.04, clip=0.2)
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(v) for k, v in want.items()), got


def test_score_never_resumes_from_rows_of_another_policy(tmp_path):
    """A killed scoring leaves .rank*.part rows that eval.evaluate resumes from: the same policy resumes from them,
    a policy retrained into the same folder must not (the fake rows here all claim a right answer)."""
    import data
    ck, out, args = save_tiny_task_model(tmp_path / "ck"), tmp_path / "run", SimpleNamespace(quick=True, code="c")
    out.mkdir()
    sets = {"level@0": data.task_level("task-4", "test"), "task": data.task_level("task", "test")}

    def killed_scoring():  # what a scoring killed mid-way leaves: part rows, no finished file
        for key, items in sets.items():
            os.remove(out / f"eval-{key}.jsonl")
            with open(out / f"eval-{key}.jsonl.rank0.part", "w") as f:
                f.writelines(json.dumps(dict(id=it["id"], sample=0, correct=True, format=1.0, sound=True)) + "\n"
                             for it in items[:claim.QUICK_TEST])

    first = claim.score(ck, 4, 0, args, str(out))
    assert first["level@0"]["accuracy"] < 1 and first["task"]["accuracy"] < 1  # a random tiny model
    killed_scoring()  # the same policy: its own rows are resumed
    assert all(t["accuracy"] == 1 for t in claim.score(ck, 4, 0, args, str(out)).values())
    killed_scoring()
    save_tiny_task_model(tmp_path / "ck", seed=1)  # a retrain into the same folder
    again = claim.score(ck, 4, 0, args, str(out))
    assert again["level@0"]["accuracy"] < 1 and again["task"]["accuracy"] < 1


def test_a_rerun_is_bit_for_bit_and_keep_reuses_only_runs_of_the_same_code(tmp_path, monkeypatch, capsys):
    """Same code and thread count: a re-run gives the same metrics bit for bit (wall times aside) and the same test
    scores. --keep re-runs a run whose recorded code hash differs from today's, unless --keep_stale."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(claim, "QUICK_TEST", 4)  # 4 test problems a set: seconds
    save_tiny_task_model(tmp_path / "ck")
    first = run_claim(monkeypatch, tmp_path, "--arms", claim.REFERENCE)["results"][0]
    assert first["code"] == claim.code_version()[1] and first["commit"]
    same = run_claim(monkeypatch, tmp_path, "--arms", claim.REFERENCE, "--keep")
    assert same["history"][-1]["runs"] == 0 and same["results"][0] == first
    monkeypatch.setattr(claim, "code_version", lambda: ("abc1234", "0" * 16))  # as if igpo.py had changed
    stale = run_claim(monkeypatch, tmp_path, "--arms", claim.REFERENCE, "--keep", "--keep_stale")
    assert stale["history"][-1]["runs"] == 0 and stale["results"][0] == first
    capsys.readouterr()
    again = run_claim(monkeypatch, tmp_path, "--arms", claim.REFERENCE, "--keep")
    assert f"{claim.level_name(data.TASK_MAIN)} {claim.REFERENCE} seed 0: the code changed since it ran" in capsys.readouterr().out
    assert [h["runs"] for h in again["history"]] == [1, 0, 0, 1] and again["history"][-1]["code"] == "0" * 16
    rerun = again["results"][0]
    assert rerun["code"] == "0" * 16 and rerun["tests"] == first["tests"]
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]  # noqa: E731
    assert untimed(rerun["rows"]) == untimed(first["rows"]) and len(first["rows"]) == 2
    md = open(tmp_path / "out" / "claim.md").read()  # one level, one arm: no dose-response, and it says why
    assert "Nothing to show: it needs" in md and f"| arm | {claim.level_name(data.TASK_MAIN)} (all-wrong" not in md
    assert not (tmp_path / "out" / "dose.png").exists()
    assert "1 run," in md and "1 runs" not in md


def test_a_killed_run_resumes_from_its_checkpoint_exactly_and_only_with_the_same_code(tmp_path, monkeypatch):
    """A run killed after its step-2 checkpoint (of 4 steps) resumes from it on the next attempt and ends with the
    rows of an unkilled run; its last step fell on a save, and igpo.py still writes `final` (no checkpoint left). A run
    that ended but was not recorded is not run again. A checkpoint of other code, or under a marker torn by a kill, is
    never resumed."""
    import subprocess
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(claim, "QUICK_FLAGS", ["--steps", "4", "--prompts_per_step", "4"])
    save_tiny_task_model(tmp_path / "ck")
    args = SimpleNamespace(model=str(tmp_path / "ck"), quick=True, save_every=2, extra=TINY[1:], commit="c", code="c")
    whole = claim.train(data.TASK_MAIN, claim.REFERENCE, 0, SimpleNamespace(**vars(args), runs=str(tmp_path / "a")))
    run, calls, kill, real = SimpleNamespace(**vars(args), runs=str(tmp_path / "b")), [], [True], subprocess.run
    out = os.path.join(str(tmp_path / "b"), claim.level_name(data.TASK_MAIN), f"{claim.REFERENCE}-seed0")

    def run_igpo(cmd, **kw):  # kill[0]: a SIGKILL between the save at step 2 and the end
        calls.append(real(cmd, **kw))
        if kill[0]:
            kill[0] = False
            claim.remove(out, "step-4", "final")
            open(os.path.join(out, "latest"), "w").write("step-2\n")
            return subprocess.CompletedProcess(cmd, -9, "", "killed")
        return calls[-1]
    log = lambda k: calls[k].stdout + calls[k].stderr  # noqa: E731
    monkeypatch.setattr(claim.subprocess, "run", run_igpo)
    with pytest.raises(SystemExit, match="failed"):
        claim.train(data.TASK_MAIN, claim.REFERENCE, 0, run)
    resumed = claim.train(data.TASK_MAIN, claim.REFERENCE, 0, run)
    assert "resumed from" in log(1) and "at step 2" in log(1)
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]  # noqa: E731
    assert len(whole["rows"]) == 4 and untimed(resumed["rows"]) == untimed(whole["rows"])
    assert sorted(os.listdir(out)) == ["claim-run.json", "config.json", "final", "metrics.jsonl"]
    assert claim.train(data.TASK_MAIN, claim.REFERENCE, 0, run) == resumed and len(calls) == 2  # not run again
    i = resumed["flags"].index("--save_every")  # the flags of a claim whose runs were not resumable: the same run
    unresumable = resumed["flags"][:i] + ["--save_every", "0"] + resumed["flags"][i + 4:]
    assert claim.same_run(resumed["flags"], unresumable) and not claim.same_run(resumed["flags"], unresumable[:-2])
    marker = os.path.join(out, "claim-run.json")
    for attempt, torn, code in [(3, True, "c"), (5, False, "other")]:  # killed again, then re-run with a marker torn
        claim.remove(out, "final")                                      # by a kill, or by other code: afresh
        kill[0] = True
        with pytest.raises(SystemExit, match="failed"):
            claim.train(data.TASK_MAIN, claim.REFERENCE, 0, run)
        if torn:
            open(marker, "w").write(open(marker).read()[:20])
        claim.train(data.TASK_MAIN, claim.REFERENCE, 0, SimpleNamespace(**{**vars(run), "code": code}))
        assert "resumed from" not in log(attempt) and len(calls) == attempt + 1
        assert json.load(open(marker))["code"] == code


def test_code_hash_covers_every_module_a_run_imports(tmp_path, monkeypatch):
    """The hash --keep compares covers igpo.py and every repo module it imports (eval.py, which scores a run, among
    them): an edit to any of them changes it."""
    import subprocess
    probe = "import sys, igpo; print(*[getattr(m, '__file__', None) for m in list(sys.modules.values())])"
    files = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ours = sorted(os.path.relpath(f, ROOT) for f in files.split()  # CI's virtualenv lies inside the repo: not ours
                  if f.startswith(ROOT + os.sep) and "site-packages" not in f)
    assert {"igpo.py", "model.py", "sample.py", "inpaint.py", "reward.py", "eval.py", "launch.py"} <= set(ours)
    for rel in ours:
        assert os.sep not in rel, rel  # a module in a folder would escape the hash of the top-level .py files
        (tmp_path / rel).write_bytes(open(os.path.join(ROOT, rel), "rb").read())
    monkeypatch.setattr(claim, "ROOT", str(tmp_path))
    before = claim.code_version()[1]
    for rel in ours:
        text = (tmp_path / rel).read_text()
        (tmp_path / rel).write_text(text + "# an edit\n")
        assert claim.code_version()[1] != before, rel
        (tmp_path / rel).write_text(text)
    assert claim.code_version()[1] == before


@pytest.mark.skipif(not PLOTS, reason="matplotlib is experiment-only")
def test_curves_show_runs_of_one_rollout_batch(tmp_path, monkeypatch):
    """claim.py --quick and plot_runs.py on a run of one rollout batch: one point a curve, drawn with a marker."""
    import matplotlib.figure
    import plot_runs
    figs = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figs.append(fig))
    row = dict(step=1, acc=0.5, sound_acc=0.25, all_wrong_before=0.25, all_wrong_after=0.0, reward=1.0, kl=0.0,
               clip_frac=0.0, grad_norm=1.0)
    claim.plot([dict(level=0, arm=claim.REFERENCE, seed=0, rows=[row])], {0.0: dict(all_wrong=0.3)}, str(tmp_path), 0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setattr(sys, "argv", ["plot_runs.py", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")])
    plot_runs.main()
    curves = [line for fig in figs for ax in fig.axes for line in ax.lines]
    assert len(curves) == 2 + 8 and all(line.get_marker() not in (None, "None", "") for line in curves)


def test_curve_table_by_hand(tmp_path):
    """plot_runs --bins: per span of steps, the mean over every run's rollout batches in it (update-only rows, which
    carry no acc, are not counted), worked out by hand for two runs with rollout batches at steps 1, 3, 5."""
    import plot_runs
    for name, accs in (("a", [0.1, 0.3, 0.5]), ("b", [0.3, 0.5, 0.9])):
        rows = []
        for k, acc in enumerate(accs):
            rows += [dict(step=2 * k + 1, acc=acc, sound_acc=acc / 2), dict(step=2 * k + 2, kl=0.0)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = plot_runs.curve_table([("x", [str(tmp_path / "a"), str(tmp_path / "b")])], 4).splitlines()
    # steps 1-4: batches at 1 and 3 of both runs, (0.1 + 0.3 + 0.3 + 0.5) / 4; steps 5-8: (0.5 + 0.9) / 2
    assert table[2:] == ["| x | 1-4 | 0.300 | 0.150 | 4 |", "| x | 5-8 | 0.700 | 0.350 | 2 |"]


@pytest.mark.parametrize("script,sentence", [
    ("claim", "does IGPO beat GRPO and the sample-matched baseline, and does its gain grow with the share of "
              "all-wrong groups?"),
    ("plot_runs", "clip fraction and grad norm against the optimizer step, one line per run (or per group of runs: "
                  "the mean).")])
def test_help_shows_the_whole_description(script, sentence, monkeypatch, capsys):
    import plot_runs
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        {"claim": claim, "plot_runs": plot_runs}[script].main()
    assert e.value.code == 0
    assert sentence in " ".join(capsys.readouterr().out.split())


def test_paired_eval_by_hand():
    """B - A per problem, matched by id whatever the row order: sound pass@1 counts a right answer only when its
    chain is sound. Right: A 1,0,1,0 -> B 1,1,1,1 (d 0,1,0,1); sound pass@1: A 0,0,1,0 -> B 1,0,1,0 (d 1,0,0,0)."""
    row = lambda i, c, s: dict(id=f"p{i}", correct=c, sound=s)  # noqa: E731
    a = {r["id"]: r for r in [row(0, True, False), row(1, False, True), row(2, True, True), row(3, False, False)]}
    b = {r["id"]: r for r in [row(3, True, False), row(2, True, True), row(1, True, False), row(0, True, True)]}
    mean, half, d = paired_eval.paired(a, b, paired_eval.METRICS["pass@1"])
    assert d == [0, 1, 0, 1] and mean == 0.5 and half == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    mean, half, d = paired_eval.paired(a, b, paired_eval.METRICS["sound pass@1"])
    assert d == [1, 0, 0, 0] and mean == 0.25 and half == pytest.approx(1.96 * 0.5 / 2)  # stdev of 1,0,0,0: 0.5
    with pytest.raises(ValueError, match="different problems"):
        paired_eval.paired(a, {k: v for k, v in b.items() if k != "p3"}, paired_eval.METRICS["pass@1"])


def test_slips_by_hand():
    """paired_eval.slips names each kind of wrong line: on "Tom has 5 coins. First he gets 1, second loses 3" the
    sound chain is 5+1=6, 6-3=3."""
    row = lambda text: dict(prompt="<|start_header_id|>user<|end_header_id|>\n\nTom has 5 coins. First he gets 1, "  # noqa: E731
                            "second loses 3. How many coins after each step?<|eot_id|>",
                            completion=f"<reasoning>\n{text}\n</reasoning>\n<answer>\n\\boxed{{63}}\n</answer>")
    assert paired_eval.slips(row("first: 5+1=6\nsecond: 6-3=3")) == set()
    assert paired_eval.slips(row("first: 5+1=6\nsecond: 6-2=3")) == {"operation", "arithmetic"}  # miscopied operand
    assert paired_eval.slips(row("first: 5+1=6\nsecond: 5-3=3")) == {"previous value", "arithmetic"}
    assert paired_eval.slips(row("first: 5+1=6\nsecond: 6+3=9")) == {"operation"}  # its own arithmetic is right
    assert paired_eval.slips(row("first: 5+1=6")) == {"line count"}
    assert paired_eval.slips(row("first: 5+1=6\nsecond: 6-3=3\n</reasoning> 1+1=2")) == set()  # only reasoning counts


def test_each_decoding_setting_samples_rollouts_and_val_alike():
    """experiments/decoding.py: a setting's RL rollouts (igpo.py flags on the task preset) and its val evaluation
    (eval.protocol overrides) decode the same way (steps, threshold, canvas), the setting it names: the task's
    threshold, one token a step, two; and a fixed-step setting's forwards per rollout is its step count."""
    import decoding
    import eval as E
    import igpo
    import launch
    gen = data.TASK_SAMPLING["gen_length"]
    want = {"threshold 0.9 (the task's)": (data.TASK_SAMPLING["steps"], 0.9), "1 token a step": (gen, None),
            "2 tokens a step (paper)": (gen // 2, None)}
    assert set(decoding.SETTINGS) == set(want)
    for name, (flags, proto, forwards) in decoding.SETTINGS.items():
        cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--data", "task-5", *flags])
        val = E.protocol("task", **proto)
        rl = (cfg.diffusion_steps, cfg.fast_threshold or None, cfg.gen_length, cfg.block_length)
        assert rl == (val["steps"], val["threshold"], val["gen_length"], val["block_length"]), name
        assert rl[:2] == want[name], name
        assert isinstance(forwards, str) or forwards == cfg.diffusion_steps, name


def test_kl_spikes_finds_each_step_over_the_threshold_and_the_batches_around_it():
    """experiments/kl_spikes.py on a hand-made run (mu 2: a rollout batch every other step), hand-computed."""
    kl = [0.01, 0.02, 500.0, 3.0, 0.01, 0.01, 0.01]
    rows = [dict(step=k + 1, kl=x, grad_norm=1e5 if x > 100 else 0.3) for k, x in enumerate(kl)]
    for r, acc in zip(rows[::2], (0.5, 0.4, 0.2, 0.6)):
        r["acc"] = acc
    run = dict(level="6", arm="grpo", seed=0, tests={"level@0": {"accuracy": 0.5}}, rows=rows)
    assert kl_spikes.spikes(run, 100) == [(3, 500.0, 1e5, 3.0, 0.4, 0.2, 0.6)]
    assert kl_spikes.spikes(run, 1)[1] == (4, 3.0, 0.3, 0.01, 0.4, 0.2, 0.6)  # an update step: its batch is step 3's
    assert kl_spikes.spikes(dict(run, rows=rows[:3]), 100) == [(3, 500.0, 1e5, None, 0.4, None, None)]
    lines = kl_spikes.tables([run], 100).splitlines()
    assert lines[2] == "| grpo | 1 | 1 | 2.0 | 0.010 |"
    assert lines[6] == "| 6 | grpo | 0 | 3 | 500 | 6.2 | 1e+05 | 3.000 | 0.400, 0.200, 0.600 | 0.500 |"


def test_arm_vs_arm_pairs_two_arms_by_the_seeds_both_have():
    """experiments/arm_vs_arm.py on hand-made runs: A − B over the shared seeds, hand-computed (differences 0.1, 0.0,
    0.2: mean 0.1, sample std 0.1, t(2) 4.303, half-width 4.303 * 0.1 / sqrt 3 = 0.2484); a seed only A has is not
    paired, nor another level's run."""
    def run(arm, seed, acc, level="6b4", t=10.0):
        tests = {"level@0": {"accuracy": acc, "sound_accuracy": acc - 0.1},
                 "task": {"accuracy": 0.5, "sound_accuracy": 0.4}}
        rows = [dict(step=1, acc=0.3, all_wrong_before=0.2, all_wrong_after=0.1, spent=1.0, t_rollout=t, t_inpaint=1.0,
                     kl=0.01, clip_frac=0.0)]
        return dict(level=level, arm=arm, seed=seed, tests=tests, rows=rows)
    results = [run("b", 0, 0.5), run("b", 1, 0.6), run("b", 2, 0.4), run("a", 0, 0.6, t=4.0), run("a", 1, 0.6, t=4.0),
               run("a", 2, 0.6, t=4.0), run("a", 3, 0.9), run("b", 3, 0.0, level="6")]
    rows, speed = arm_vs_arm.compare(results, 0, "6b4", "a", "b")
    (label, (m, lo, hi), up, down, seeds, text), (_, sound, *_), (_, std, *_) = rows
    assert (label, up, down, seeds) == ("level test pass@1", 2, 0, [0, 1, 2])
    assert m == pytest.approx(0.1)
    assert (lo, hi) == (pytest.approx(0.1 - 0.2484, abs=1e-4), pytest.approx(0.1 + 0.2484, abs=1e-4))
    assert sound == pytest.approx((0.1, lo, hi))  # sound = accuracy - 0.1 in both arms: the same differences
    assert std == (0.0, 0.0, 0.0)
    assert speed == {"a": 5.0, "b": 11.0}  # sampling plus rescue seconds
    assert text == "+0.100 (95% CI -0.148 to +0.348; 2 / 0 of 3 seeds)"  # claim.md's wording
    assert arm_vs_arm.compare(results, 0, "6b4", "a", "b", seeds={0, 1})[0][0][4] == [0, 1]
    one = arm_vs_arm.compare(results, 0, "6b4", "a", "b", seeds={0})[0][0][5]
    assert one == "+0.100 (no interval from 1 seed; 1 / 0 of 1 seeds)"
    with pytest.raises(SystemExit, match="has both"):
        arm_vs_arm.compare(results, 0, "6", "a", "b")
