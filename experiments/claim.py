"""The paper's claim on the embedded task, with seeds and difficulty levels: does IGPO beat GRPO and the
sample-matched baseline, and does its gain grow with the share of all-wrong groups?

Every run is one `igpo.py` process (never a copy of the loop) from the same SFT checkpoint; for a given seed every
arm sees the same prompts in the same order and spends the same optimizer steps; only the arm's flags differ.
An arm is one line of ARMS (name -> igpo.py flags); the tables, paired differences and plots work for any set.
A level is a data name of the embedded task (data.task_level): `task-<n>`, RL prompts and test problems of n-step
chains (SFT saw long chains rarely, so the longer the chain, the more groups of the start are all wrong), or
`task-<n>b<k>`, those with at least k big steps (numbers >= 3, misread more often); --level takes n or nbk.
The x axis of the dose-response is the all-wrong share of the start on the level's RL prompts (never on test).

Each run trains with igpo.py's task preset (no evaluation during training, the final policy alone saved), then is
scored greedily, in pass@1 and sound pass@1 (right with every reasoning line right), on the level's held-out test
set (--test_seed N > 0: a fresh draw of its size) and on the standard test (`task`'s, the main level's). Paired
differences are REFERENCE minus each other arm, per seed (a seed fixes the prompts and their order), with a
Student-t 95% interval over seeds.

Run:  python experiments/claim.py --level 5,6,7 --arms grpo,sample_matched,igpo --seeds 0,1,2,3
      python experiments/claim.py --level 7 --arms igpo_full_hints,igpo_no_filter --seeds 0,1,2,3 --keep
      python experiments/claim.py --test_seed 7 --keep ...   # score the finished runs on a fresh test draw
      python experiments/claim.py --report                   # tables and plots again from OUT/claim.json
      python experiments/claim.py --quick    # 1 seed, 2 optimizer steps on 1 rollout batch, 20 test problems
Writes to --out (default runs/claim: scratch; the committed results are experiments/results/claim/): claim.json
(every run's metrics rows and test scores), claim.md (a section per level), runs.tsv (one line per run and test
seed: the per-run test accuracies), claim-<level>.png (on-policy accuracy and all-wrong share per step) and dose.png
(REFERENCE minus each arm against the start's all-wrong share, for arms run beside it at two or more levels). Plots
need matplotlib (experiment-only).
--keep reuses every run of OUT/claim.json with the same level, arm, seed and igpo.py flags that ran the same code
(a hash of the top-level .py files, recorded with the commit in every run; --keep_stale reuses runs of other code
too) and never drops a run that is already there. A seeded run is bit for bit the same on one code and thread count
(all runs use 1 thread; tests/test_claim.py checks it), not necessarily across commits. A run saves a checkpoint
every --save_every steps (deleted when it ends): a claim killed mid-run and run again resumes each unfinished run
from its last checkpoint, to the same numbers, if the code and flags are those it started with (claim-run.json in
its folder; otherwise it starts afresh). claim.json's history (each command as run, its commit and code hash) is
written by this script only: to add runs to the committed results, run with --out experiments/results/claim --keep.
"""
import argparse
import glob
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import data  # noqa: E402
import eval as E  # noqa: E402
import launch  # noqa: E402
import model as M  # noqa: E402

ARMS = {  # name -> igpo.py flags on top of the task preset; adding an arm is one line
    "grpo": ["--rescue", "off"],                     # GRPO: all-wrong groups are left as they are
    "sample_matched": ["--rescue", "resample"],      # all-wrong groups re-sampled G times without hints
    "igpo": ["--rescue", "hints"],                   # IGPO (the task preset)
    "igpo_full_hints": ["--eta", "1,1"],             # every chunk of the reference trace revealed
    "igpo_no_filter": ["--tau", "1"],                # every hint token in the loss (no entropy filter)
    "igpo_no_cap": ["--lam", "1"],                   # every verified inpainted rollout replaces a wrong one
    "igpo_withhold_step": ["--withhold", "step"],    # hints never show the last reasoning line (its result = answer)
    "igpo_prefix_cache": ["--fast_cache", "prefix"],  # rollouts with Fast-dLLM's prefix KV cache
    "igpo_dual_cache": ["--fast_cache", "dual"],     # rollouts with the dual (prefix + suffix) KV cache
    "grpo_dual_cache": ["--rescue", "off", "--fast_cache", "dual"],  # GRPO, dual-cache rollouts
    "sample_matched_dual_cache": ["--rescue", "resample", "--fast_cache", "dual"],  # sample-matched, the same
}
QUICK_TEST = 20  # --quick scores the first QUICK_TEST problems of each test set
QUICK_FLAGS = ["--steps", "2", "--prompts_per_step", "4"]  # --quick: 1 rollout batch of 4 prompts, 2 steps
RESUMABLE = ("--save_every", "--resume")  # flags that never change a run's numbers (tests/test_faults.py)
REFERENCE = "igpo"  # paired differences: REFERENCE minus every other arm (the first arm if REFERENCE is absent)


def level_name(level):
    return f"task-{level}"


def level_key(level):
    """Levels in order: chain length, then big steps ("6" < "6b4" < "7")."""
    return tuple(int(x) for x in re.findall(r"\d+", str(level)))


# ------------------------------------------------------------------------------------------------ the runs

def run_flags(level, arm, seed, args):
    """igpo.py's flags for one run (with the same code, the same flags mean the same run)."""
    flags = ["--model", args.model, "--data", level_name(level), "--seed", str(seed), "--out_dir",
             os.path.join(args.runs, level_name(level), f"{arm}-seed{seed}"), "--eval_limit", "0",
             "--save_every", str(args.save_every), "--resume", "on", "--save_last", "model", *ARMS[arm], *args.extra]
    return flags + (QUICK_FLAGS if args.quick else [])


def same_run(a, b):
    """Whether igpo.py flags a and b make the same run: equal but for the flags that only make it resumable."""
    def strip(f):
        return [x for i, x in enumerate(f) if x not in RESUMABLE and (i == 0 or f[i - 1] not in RESUMABLE)]
    return strip(a) == strip(b)


def run_name(level, arm, seed):
    return f"{level_name(level)} {arm} seed {seed}"


def finish(job, run, args):
    """Train the run of job (level, arm, seed) unless `run` (its finished record) is given, then score its final
    policy on the level's test set of args.test_seed (and the standard test) unless it already was."""
    run = run or train(*job, args)
    out = run["flags"][run["flags"].index("--out_dir") + 1]
    if f"level@{args.test_seed}" not in run["tests"]:
        final = os.path.join(ROOT, out, "final")
        if not os.path.exists(os.path.join(final, "config.json")):
            raise SystemExit(f"{final}: missing, so {job} cannot be scored on test seed {args.test_seed}")
        run["tests"].update(score(final, job[0], args.test_seed, args, os.path.join(ROOT, out)))
    print(f"  {run_name(*job)}: level test "
          f"{run['tests'][f'level@{args.test_seed}']['accuracy']:.3f}", flush=True)
    return run


def train(level, arm, seed, args):
    """One igpo.py run; returns its record (flags and metrics rows); the final policy is in OUT_DIR/final."""
    flags = run_flags(level, arm, seed, args)
    out = os.path.join(ROOT, flags[flags.index("--out_dir") + 1])
    marker, me = os.path.join(out, "claim-run.json"), dict(flags=flags, code=args.code)
    if read_json(marker) != me:  # a checkpoint of other flags or code (or none, or a torn marker): gone
        remove(out, "metrics.jsonl", "latest", "final", "step-*")
        os.makedirs(out, exist_ok=True)
        with open(marker + ".tmp", "w") as f:
            json.dump(me, f)
        os.replace(marker + ".tmp", marker)  # atomic: a kill leaves the old marker or the new one, never half
    name = run_name(level, arm, seed)
    if not os.path.exists(os.path.join(out, "final", "config.json")):  # else it ended, but claim.json missed it
        run_igpo(out, flags, name)
    remove(out, "step-*", "latest")  # the run is done: its checkpoints are not needed
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return dict(level=level, arm=arm, seed=seed, flags=flags, rows=rows, tests={}, commit=args.commit, code=args.code)


def run_igpo(out, flags, name):
    """igpo.py with flags, at 1 thread (resuming from out's latest checkpoint, if any); its policy ends in out/final."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "igpo.py", *flags], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    if not os.path.exists(os.path.join(out, "final", "config.json")):  # igpo.py exited 0 before its last step
        raise SystemExit(f"{name}: stopped at {os.path.basename(launch.latest_checkpoint(out) or 'no checkpoint')} "
                         "(SIGTERM); a re-run resumes it from there")


def read_json(path):
    """The JSON in path, or None if it is missing or unreadable (torn by a kill)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove(folder, *patterns):
    """Delete the files and folders in folder that match the glob patterns."""
    for path in (p for pattern in patterns for p in glob.glob(os.path.join(glob.escape(folder), pattern))):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def score(model_dir, level, test_seed, args, out_dir):
    """Greedy accuracy of a policy on the level's test set (test seed) and the standard test split: {key: result}
    with keys 'level@<test seed>' and 'task'; pass@1 and sound pass@1 (eval.evaluate) with their intervals."""
    torch.set_num_threads(1)
    m, tok = M.load(model_dir)
    n = QUICK_TEST if args.quick else None
    policy = files_hash(glob.glob(os.path.join(model_dir, "*.safetensors"))) + " " + args.code  # what wrote a row
    out, done = {}, {}
    for key, items in ((f"level@{test_seed}", data.task_level(level_name(level), "test", draw=test_seed)[:n]),
                       ("task", data.task_level("task", "test")[:n])):
        ids = tuple(it["id"] for it in items)
        if ids in done:  # the main level's own test set is the standard test: scored once
            out[key] = out[done[ids]]
            continue
        done[ids] = key
        path = os.path.join(out_dir, f"eval-{key}.jsonl")
        drop_rows_of_another(path, policy)
        res = E.evaluate(m, tok, items, E.protocol("task"), messages=data.task_messages, batch_size=128,
                         out_path=path)
        out[key] = {k: res[k] for k in ("accuracy", "ci95", "sound_accuracy", "sound_ci95", "n_problems")}
    return out


def files_hash(paths):
    """sha256 (16 hex digits) of the files' names and bytes, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def code_version():
    """(git commit, hash of the code a run runs): every .py file at the repo's top, i.e. igpo.py and the modules it
    imports (eval.py also scores the run). The commit misses uncommitted edits; reuse goes by the hash."""
    files = glob.glob(os.path.join(ROOT, "*.py"))
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD") or "no git"
    if git("status", "--porcelain", "--", *files):
        commit += " + uncommitted changes"
    return commit, files_hash(files)


def reusable(record, name, args):
    """Whether --keep may reuse a finished run (or start): only if it ran this code, or under --keep_stale. Seeded
    runs are bit for bit the same on one code and thread count (tests/test_claim.py), not across commits: the first
    claim's re-runs differed (grad norm up to 6e-4 relative, a test score 0.398 vs 0.400)."""
    if record.get("code") == args.code or args.keep_stale:
        return True
    print(f"{name}: the code changed since it ran (commit {record.get('commit', 'not recorded')}, code "
          f"{record.get('code', 'not recorded')}; now {args.commit}, {args.code}): running it again "
          f"(--keep_stale reuses it)", flush=True)
    return False


def drop_rows_of_another(path, tag):
    """eval.evaluate resumes from path and its .rank*.part files; keep them only if path.tag says that the policy
    and code `tag` wrote them, so a killed scoring followed by a retrain into the same folder never scores the old
    policy."""
    if os.path.exists(path + ".tag") and open(path + ".tag").read() == tag:
        return
    for f in glob.glob(glob.escape(path)) + glob.glob(glob.escape(path) + ".rank*.part"):
        os.remove(f)
    with open(path + ".tag", "w") as f:
        f.write(tag)


def start_row(level, args):
    """The shared init on this level: its test scores and its all-wrong share on the level's RL prompts."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import levels
    out_dir = os.path.join(args.runs, level_name(level), "start")
    os.makedirs(out_dir, exist_ok=True)
    tests = score(args.model, level, args.test_seed, args, out_dir)
    m, tok = M.load(args.model)
    prompts = 16 if args.quick else args.start_prompts
    got = levels.measure(m, tok, level_name(level), prompts, 0, "off", args.extra)
    return dict(level=level, tests=tests, pass_rate=got["right"] / got["rollouts"], all_wrong=got["all_wrong"] / prompts,
                commit=args.commit, code=args.code,
                prompts=prompts)


# ----------------------------------------------------------------------------------------------- the tables

def run_stats(run, test_seed):
    """The numbers one run contributes to its level's table."""
    batches = [r for r in run["rows"] if "acc" in r]
    half = max(1, len(batches) // 2)
    lv, std = run["tests"][f"level@{test_seed}"], run["tests"]["task"]
    out = dict(test=lv["accuracy"], sound=lv["sound_accuracy"], std_test=std["accuracy"], std_sound=std["sound_accuracy"],
               aw_before=statistics.mean(r["all_wrong_before"] for r in batches),
               aw_after=statistics.mean(r["all_wrong_after"] for r in batches),
               spent=statistics.mean(r["spent"] for r in batches),
               acc_first=statistics.mean(r["acc"] for r in batches[:half]),
               acc_last=statistics.mean(r["acc"] for r in batches[-half:]),
               rollout_s=statistics.mean(r["t_rollout"] + r["t_inpaint"] for r in batches),
               kl=statistics.mean(r["kl"] for r in run["rows"] if "kl" in r),
               clip=statistics.mean(r["clip_frac"] for r in run["rows"] if "clip_frac" in r))
    return out


def t_inside(t, df):
    """P(|T| < t) for Student's t with an integer number df of degrees of freedom: the finite series of
    Abramowitz & Stegun 26.7.3 (df odd) and 26.7.4 (df even) in theta = atan(t / sqrt(df)); exact, no scipy."""
    th = math.atan(t / math.sqrt(df))
    c2 = math.cos(th) ** 2
    if df % 2 == 0:  # sin(th) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term = total = 1.0
        for k in range(2, df, 2):
            term *= (k - 1) / k * c2
            total += term
        return math.sin(th) * total
    term, total = math.cos(th), 0.0  # 2/pi (th + sin(th) (cos + 2/3 cos^3 + ... up to cos^(df-2)))
    for k in range(3, df + 1, 2):
        total += term
        term *= (k - 1) / k * c2
    return 2 / math.pi * (th + math.sin(th) * total)


def t975(df):
    """The two-sided 95% quantile of Student's t (12.706 at df 1, 2.201 at 11, 1.984 at 100): bisection on t_inside."""
    lo, hi = 0.0, 1000.0
    for _ in range(60):  # 1000 / 2^60: far below the 3 decimals printed
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_inside(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def mean_std(xs):
    """mean ± sample std over seeds; one seed has no spread, so just its value (not '± 0.000')."""
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def paired_interval(d):
    """(mean, lo, hi) of paired differences d: Student-t 95% interval of the mean over seeds."""
    if len(d) < 2:
        return statistics.mean(d), float("nan"), float("nan")
    half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return statistics.mean(d), statistics.mean(d) - half, statistics.mean(d) + half


def diff_text(d):
    """Paired differences d as claim.md writes them: mean (95% CI lo to hi; seeds higher / lower of n seeds)."""
    m, lo, hi = paired_interval(d)
    ci = f"95% CI {lo:+.3f} to {hi:+.3f}" if len(d) > 1 else "no interval from 1 seed"
    return f"{m:+.3f} ({ci}; {sum(x > 0 for x in d)} / {sum(x < 0 for x in d)} of {len(d)} seeds)"


def reference_of(arms):
    return REFERENCE if REFERENCE in arms else arms[0]


def level_section(level, runs, start, test_seed):
    """One level's markdown: the table per arm (mean ± std over seeds), the per-seed accuracies and the paired
    differences (REFERENCE minus each arm) on the level test set and on the standard test split."""
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)] + sorted({r["arm"] for r in runs} - set(ARMS))
    stats = {a: [run_stats(r, test_seed) for r in runs if r["arm"] == a] for a in arms}
    same = str(level) == str(data.TASK_MAIN) and test_seed == 0  # the level's test set is the standard test: shown once
    head = ["arm", "seeds", "level test", "level sound"] + ([] if same else ["standard test", "standard sound"]) + [
        "all-wrong before", "all-wrong after", "rollouts / prompt-rollout", "on-policy acc 1st half", "2nd half",
        "rollout s / batch", "KL", "clip frac"]
    lv, std = start["tests"][f"level@{test_seed}"], start["tests"]["task"]
    std_cells = "" if same else f"{std['accuracy']:.3f} | {std['sound_accuracy']:.3f} | "
    lines = [f"## Level {level_name(level)}\n" + ("\nIts test set is the standard test (`task`'s).\n" if same else ""), f"Start: all-wrong share {start['all_wrong']:.3f} on the level's "
             f"first {start['prompts']} RL prompts of seed 0's order, G = 8 (rollout pass rate {start['pass_rate']:.3f};"
             f" the dose-response's x). The table's all-wrong shares are a run's mean over its rollout batches, "
             f"as the policy learns.\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| SFT start | | {lv['accuracy']:.3f} | {lv['sound_accuracy']:.3f} | {std_cells}"
             f"{start['all_wrong']:.3f} | | | | | | | |"]
    cols = ["test", "sound"] + ([] if same else ["std_test", "std_sound"]) + [
        "aw_before", "aw_after", "spent", "acc_first", "acc_last", "rollout_s", "kl", "clip"]
    for a, st in stats.items():
        lines.append(f"| {a} | {len(st)} | " + " | ".join(mean_std([s.get(c, 0.0) for s in st]) for c in cols) + " |")
    acc = {(r["arm"], r["seed"]): run_stats(r, test_seed) for r in runs}
    seeds = sorted({s for _, s in acc})
    lines += ["", "Level test pass@1 per seed (sound pass@1 in parentheses):", "",
              "| seed | " + " | ".join(arms) + " |", "|" + "---|" * (len(arms) + 1)]
    lines += [f"| {s} | " + " | ".join(f"{acc[a, s]['test']:.3f} ({acc[a, s]['sound']:.3f})" if (a, s) in acc
                                       else "" for a in arms) + " |" for s in seeds]
    ref = reference_of(arms)
    lines += ["", f"{ref} minus each arm, paired by seed: mean, 95% interval (Student t), seeds higher / lower:", ""]
    for a in (a for a in arms if a != ref):
        both = [s for s in seeds if (ref, s) in acc and (a, s) in acc]
        for key, name in (("test", "level test"), ("sound", "level test, sound"), ("std_test", "standard test"),
                          ("std_sound", "standard test, sound"))[:2 if same else 4]:
            d = [acc[ref, s][key] - acc[a, s][key] for s in both]
            if d:
                lines.append(f"- {ref} − {a}, {name}: {diff_text(d)}")
    return "\n".join(lines)


def dose(results, starts, test_seed, key="test"):
    """(reference arm, {arm: {level: (start all-wrong share, mean, lo, hi)}}): REFERENCE minus each arm run at more
    than one level, on the level test set (key: "test" pass@1, "sound" sound pass@1), paired by seed, per level."""
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    ref, out = reference_of(arms), {}
    across = [a for a in arms if len({r["level"] for r in results if r["arm"] == a}) > 1]  # one level: no curve
    for a in (a for a in across if a != ref):
        pts = {}
        for lv in sorted({r["level"] for r in results}, key=level_key):
            acc = {(r["arm"], r["seed"]): run_stats(r, test_seed)[key] for r in results if r["level"] == lv}
            d = [acc[ref, s] - acc[a, s] for (arm, s) in acc if arm == ref and (a, s) in acc]
            if d:
                pts[lv] = (starts[lv]["all_wrong"], *paired_interval(d))
        if pts:  # none where the reference never ran beside it
            out[a] = pts
    return ref, out


def plot(results, starts, out, test_seed):
    """claim-<level>.png per level (mean over seeds per arm) and dose.png; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return False
    for lv in sorted({r["level"] for r in results}, key=level_key):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for arm in ARMS:
            runs = [r for r in results if r["arm"] == arm and r["level"] == lv]
            if not runs:
                continue
            steps = [r["step"] for r in runs[0]["rows"] if "acc" in r]
            for ax, key in zip(axes, ("acc", "all_wrong_before")):
                ys = [[r[key] for r in run["rows"] if key in r] for run in runs]
                ax.plot(steps, [statistics.mean(v) for v in zip(*ys)], marker="o", markersize=3,
                        label=f"{arm} ({plural(len(runs), 'seed')})")  # markers: --quick has 1 point a run
        for ax, title in zip(axes, ("on-policy accuracy (T = 1.2), mean over seeds", "all-wrong share before rescue")):
            ax.set_title(f"{level_name(lv)}: {title}")
            ax.set_xlabel("optimizer step")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"claim-{level_name(lv)}.png"), dpi=100)
        plt.close(fig)
    ref, curves = dose(results, starts, test_seed)
    if not curves:  # no picture (and none left from an earlier write): claim.md says why
        if os.path.exists(os.path.join(out, "dose.png")):
            os.remove(os.path.join(out, "dose.png"))
        return True
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for k, (arm, by_level) in enumerate(curves.items()):
        pts = list(by_level.values())
        xs = [p[0] + 0.006 * (k - (len(curves) - 1) / 2) for p in pts]  # side by side, not on top
        ys = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=f"{ref} − {arm}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("all-wrong share of the SFT start on the level's RL prompts")
    ax.set_ylabel("level test accuracy difference (95% CI over seeds)")
    ax.set_title(f"Where {ref} matters: paired by seed, per level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dose.png"), dpi=100)
    plt.close(fig)
    return True


def interval(mean, lo, hi):
    """A paired difference and its 95% interval, as a table cell (one seed has none)."""
    return f"{mean:+.3f} (1 seed)" if math.isnan(lo) else f"{mean:+.3f} ({lo:+.3f} to {hi:+.3f})"


def plural(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def write(args, res, quiet=False):
    """claim.md, claim.json, runs.tsv and the plots from the finished runs in `res` (the tables and plots: the
    runs scored on res['test_seed']; the JSON: every run)."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "claim.json.tmp"), "w") as f:
        json.dump(res, f)
    os.replace(os.path.join(args.out, "claim.json.tmp"), os.path.join(args.out, "claim.json"))
    ts = res["test_seed"]
    every = res["results"]
    res = dict(res, results=[r for r in every if f"level@{ts}" in r["tests"]])
    starts = {str(k): v for k, v in res["starts"].items()}
    with open(os.path.join(args.out, "runs.tsv"), "w") as f:
        f.write("level\tarm\tseed\ttest\taccuracy\tn_problems\n")
        for r in [dict(s, arm="start", seed="") for s in starts.values()] + every:
            for key, t in sorted(r["tests"].items()):
                f.write(f"{level_name(r['level'])}\t{r['arm']}\t{r['seed']}\t{key}\t{t['accuracy']:.4f}\t"
                        f"{t['n_problems']}\n")
    levels = sorted({r["level"] for r in res["results"]}, key=level_key)
    has_plot = plot(res["results"], starts, args.out, ts)
    hist = "; ".join(f"`{h['command']}`" + (f" at {h['commit']}" if "commit" in h else "") +
                     f": {plural(h['runs'], 'run')}, {h['wall_s'] / 60:.1f} min" for h in res["history"])
    sizes = next(iter(starts.values()))["tests"]  # every start and run is scored on the same test sets
    text = [f"# IGPO vs baselines on the embedded task, by difficulty level\n\nMade by: {hist} (2-core CPU, "
            f"{plural(args.parallel, 'run')} at a time, 1 thread each). Init `{res['model']}`. Test seed {ts}: "
            f"level test = {sizes[f'level@{ts}']['n_problems']} problems of the level ({'its held-out test set' if not ts else 'a fresh draw'}); "
            f"standard test = the first {sizes['task']['n_problems']} of `task`'s held-out test set (level "
            f"{data.TASK_MAIN}). Greedy pass@1 and sound pass@1 (right, every reasoning line right) after the last "
            f"step; mean ± std over seeds. Rollouts / prompt-rollout: rollouts sampled "
            f"(re-sampled included) per on-policy rollout. Rollout s / batch: wall seconds of a rollout batch's "
            f"sampling (rescue included), 2 runs sharing 2 cores. KL, clip frac: means over the optimizer steps "
            f"(kept tokens).\n"]
    for lv in levels:
        text.append(level_section(lv, [r for r in res["results"] if r["level"] == lv], starts[lv], ts))
        if has_plot:
            text.append(f"\n![on-policy accuracy and all-wrong share per step](claim-{level_name(lv)}.png)\n")
    ref, curves = dose(res["results"], starts, ts)
    text.append(f"## Dose-response: {ref} minus each arm against the start's all-wrong share\n")
    if not curves:
        arms = ", ".join(sorted({r["arm"] for r in res["results"]}))
        text.append(f"Nothing to show: it needs {ref} and another arm, paired by seed, at two or more levels (here: "
                    f"{plural(len(levels), 'level')}; arms {arms}).")
    else:
        text.append("| arm | " + " | ".join(f"{level_name(lv)} (all-wrong {starts[lv]['all_wrong']:.2f})"
                                             for lv in levels) + " |")
        text.append("|" + "---|" * (len(levels) + 1))
    for key, what in (("test", ""), ("sound", ", sound pass@1")):
        for arm, by_level in dose(res["results"], starts, ts, key)[1].items():
            text.append(f"| {ref} − {arm}{what} | " + " | ".join(
                interval(*by_level[lv][1:]) if lv in by_level else "" for lv in levels) + " |")
    if has_plot and curves:
        text.append("\n![dose-response](dose.png)")
    with open(os.path.join(args.out, "claim.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    if not quiet:
        print("\n".join(text))
    print(f"-> {args.out}/claim.md ({plural(len(res['results']), 'run')})", flush=True)


# ------------------------------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT init shared by every arm")
    p.add_argument("--level", default=str(data.TASK_MAIN),
                   help="comma list of levels: n or nbk (data name task-<n>, task-<n>b<k>)")
    p.add_argument("--arms", default="grpo,sample_matched,igpo", help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--seeds", default=None, help="comma list (default 0,1,2,3; --quick: 0)")
    p.add_argument("--test_seed", type=int, default=0, help="0: each level's held-out test set; N > 0: a fresh draw "
                   "of its size (data.task_level draw=N)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (1 thread each)")
    p.add_argument("--quick", action="store_true",
                   help=f"1 seed, 2 optimizer steps on 1 rollout batch of 4 prompts, {QUICK_TEST} test problems: "
                   "structure only")
    p.add_argument("--out", default="runs/claim", help="claim.md/.json/.png and runs.tsv (scratch by default)")
    p.add_argument("--runs", default="runs/claim-runs", help="each run's igpo.py output and evaluation rows")
    p.add_argument("--save_every", type=int, default=40, help="optimizer steps between a run's checkpoints (0: "
                   "none): a killed claim resumes its unfinished runs from them")
    p.add_argument("--start_prompts", type=int, default=256, help="RL prompts for the start's all-wrong share")
    p.add_argument("--keep", action="store_true", help="reuse the runs of OUT/claim.json with the same level, arm, "
                   "seed and flags; run only the others (never drops a run)")
    p.add_argument("--keep_stale", action="store_true", help="with --keep, also reuse runs made by other code "
                   "(another hash of the top-level .py files): they may differ slightly from a re-run")
    p.add_argument("--report", action="store_true", help="rewrite claim.md and the plots from OUT/claim.json")
    args, extra = p.parse_known_args()
    args.extra = [a for a in extra if a != "--"]
    args.commit, args.code = code_version()
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        p.error(f"--arms: unknown {sorted(unknown)}; known: {', '.join(ARMS)}")
    path = os.path.join(args.out, "claim.json")
    old = json.load(open(path)) if os.path.exists(path) and (args.keep or args.report) else None
    for r in old["results"] if old else []:  # a level is a name ("6", "6b4"); older claim.json files hold ints
        r["level"] = str(r["level"])
    if args.report:
        if old is None:
            raise SystemExit(f"--report: no {path}")
        return write(args, old)
    t0 = time.time()
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2,3")).split(",")]
    levels = args.level.split(",")
    old = old or dict(results=[], history=[], starts={}, model=args.model, test_seed=args.test_seed)
    if old["model"] != args.model:
        raise SystemExit(f"{path} holds runs from {old['model']}; pass another --out for --model {args.model}")
    starts = dict(old["starts"])
    for lv in sorted(set(levels) | {r["level"] for r in old["results"]}, key=level_key):
        if lv not in starts or lv in levels and not reusable(starts[lv], f"{level_name(lv)} start", args):
            starts[lv] = start_row(lv, args)
        elif f"level@{args.test_seed}" not in starts[lv]["tests"]:  # a new test seed: scores added
            out_dir = os.path.join(args.runs, level_name(lv), "start")
            starts[lv]["tests"].update(score(args.model, lv, args.test_seed, args, out_dir))
    jobs = [(lv, arm, seed) for lv in levels for seed in seeds for arm in args.arms.split(",")]
    done = {}  # the finished runs reused: same flags and (asked for) same code
    for r in old["results"]:
        key = (r["level"], r["arm"], r["seed"])
        name = run_name(*key)
        if same_run(r["flags"], run_flags(*key, args)) and (key not in jobs or reusable(r, name, args)):
            done[key] = r
    todo = [job for job in jobs if job not in done]

    keys = jobs + [k for k in done if k not in jobs]  # finished runs not asked for: scored on the test seed too
    command = "python experiments/claim.py " + " ".join(sys.argv[1:])
    finished = {}
    with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(finish, k, done.get(k), args): k for k in keys}
        for fut in as_completed(futures):  # the files are rewritten after every run: a stop loses nothing finished
            finished[futures[fut]] = fut.result()
            kept = [r for r in old["results"] if (r["level"], r["arm"], r["seed"]) not in finished]  # never dropped
            history = old["history"] + [dict(command=command, wall_s=time.time() - t0, commit=args.commit,
                                             code=args.code, runs=sum(k in finished for k in todo))]
            write(args, dict(history=history, model=args.model, test_seed=args.test_seed, starts=starts,
                             results=kept + [finished[k] for k in keys if k in finished]),
                  quiet=len(finished) < len(keys))

if __name__ == "__main__":
    main()
