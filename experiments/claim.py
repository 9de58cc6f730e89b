"""The paper's claim on the embedded task, with seeds: does IGPO beat GRPO and the sample-matched baseline?

Every arm starts from the same SFT checkpoint, sees the same prompts in the same order for a given seed, and runs
the same number of optimizer steps; only igpo.py's flags differ (one igpo.py process per run, never a copy of
the loop):
  grpo            --inpaint off                 GRPO
  sample_matched  --eta 0,0                     all-wrong groups re-sampled G times without hints (same rollouts
                                                as IGPO, the paper's size-matched baseline)
  igpo            (the task preset)             IGPO
  igpo_full_hints --eta 1,1                     every chunk of the reference trace revealed
  igpo_no_filter  --tau 1                       every hint token in the loss (no entropy filter)
Writes OUT/claim.md (per arm, mean ± std over seeds: greedy test accuracy overall and by chain length, all-wrong
share before and after replacement, rollouts spent, on-policy accuracy; then per seed, and IGPO minus each arm
paired by seed with a t interval), OUT/claim.json (every metrics row of
every run) and OUT/claim.png (accuracy and all-wrong share against step, per arm; needs matplotlib, an
experiment-only dependency: `pip install matplotlib`). The command and its wall time go into claim.md.

Run:  python experiments/claim.py                      # 5 arms x 3 seeds, 2 runs at a time (1 thread each)
      python experiments/claim.py --quick              # 1 seed, 1 rollout batch, 20 test problems: structure only
      python experiments/claim.py --report             # the table and plot again from claim.json
      python experiments/claim.py --seeds 0,1,2,3,4 --keep   # add seeds: runs already in claim.json (same arm,
                                                       # seed and flags) and the start row are reused
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import eval as E  # noqa: E402
import model as M  # noqa: E402

ARMS = {"grpo": ["--inpaint", "off"], "sample_matched": ["--eta", "0,0"], "igpo": [],
        "igpo_full_hints": ["--eta", "1,1"], "igpo_no_filter": ["--tau", "1"]}


def run(arm, seed, args):
    """One igpo.py run of `arm` with `seed`; returns its metrics rows (rollout batches, updates, evaluations)."""
    flags = run_flags(arm, seed, args)
    out = flags[flags.index("--out_dir") + 1]
    if os.path.exists(os.path.join(out, "metrics.jsonl")):
        os.remove(os.path.join(out, "metrics.jsonl"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "igpo.py", *flags], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    final = [r for r in rows if "eval" in r][-1]["step"]
    by_len = accuracy_by_chain_length(os.path.join(out, "eval", f"step-{final}.jsonl"))
    print(f"  {arm} seed {seed}: test {rows[-1]['eval']['accuracy']:.3f}", flush=True)
    return dict(arm=arm, seed=seed, flags=flags, rows=rows, by_len=by_len)


def run_flags(arm, seed, args):
    """igpo.py's flags for one run (the same flags mean the same run: seeded runs are deterministic)."""
    flags = ["--model", args.model, "--seed", str(seed), "--out_dir", os.path.join(args.runs, f"{arm}-seed{seed}"),
             "--save_every", str(10 ** 9), "--eval_start", "off", *ARMS[arm], *args.extra]
    return flags + (["--steps", "2", "--prompts_per_step", "4", "--eval_limit", "20"] if args.quick else [])


def accuracy_by_chain_length(path):
    """{chain length: accuracy} of one evaluation's per-problem rows (the task's test split)."""
    steps = {it["id"]: it["solution"].count("\n") + 1 for it in data.task_splits()["test"]}
    hits = {}
    for line in open(path):
        r = json.loads(line)
        hits.setdefault(steps[r["id"]], []).append(float(r["correct"]))
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def start_row(args):
    """Greedy test accuracy of the shared SFT init (eval.py's protocol, as igpo.py evaluates): the row to beat."""
    m, tok = M.load(os.path.join(ROOT, args.model))
    path = os.path.join(args.runs, "sft_start", "eval.jsonl")
    res = E.evaluate_fresh(m, tok, "task", 20 if args.quick else 500, path, batch_size=128)
    return dict(test=res["accuracy"], ci95=res["ci95"], by_len=accuracy_by_chain_length(path))


def run_stats(res):
    """The numbers one run contributes to the table."""
    batches = [r for r in res["rows"] if "acc" in r]
    half = max(1, len(batches) // 2)
    out = dict(test=[r for r in res["rows"] if "eval" in r][-1]["eval"]["accuracy"],
               aw_before=statistics.mean(r["all_wrong_before"] for r in batches),
               aw_after=statistics.mean(r["all_wrong_after"] for r in batches),
               spent=statistics.mean(r["spent"] for r in batches), acc_first=statistics.mean(r["acc"] for r in batches[:half]),
               acc_last=statistics.mean(r["acc"] for r in batches[-half:]))
    out.update({f"len{k}": v for k, v in res["by_len"].items()})
    return out


def mean_std(xs):
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def table(results, start):
    stats = {arm: [run_stats(r) for r in results if r["arm"] == arm] for arm in ARMS}
    lens = sorted(k for k in stats["grpo"][0] if k.startswith("len"))
    head = ["arm", "test acc", *[f"{k[3:]} steps" for k in lens], "all-wrong before", "all-wrong after",
            "rollouts / prompt-rollout", "on-policy acc 1st half", "2nd half"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| SFT start (95% CI {start['ci95'][0]:.3f}-{start['ci95'][1]:.3f}) | {start['test']:.3f} | "
             + " | ".join(f"{start['by_len'].get(int(k[3:]), 0):.3f}" for k in lens) + " | | | | | |"]
    for arm, st in stats.items():
        cols = ["test", *lens, "aw_before", "aw_after", "spent", "acc_first", "acc_last"]
        lines.append(f"| {arm} | " + " | ".join(mean_std([s[c] for s in st]) for c in cols) + " |")
    return "\n".join(lines), stats


def paired(results):
    """Test accuracy per seed and arm, and IGPO minus each other arm paired by seed (a seed fixes the prompts and
    their order for every arm, so the difference removes the seed's share of the noise)."""
    acc = {(r["arm"], r["seed"]): [x for x in r["rows"] if "eval" in x][-1]["eval"]["accuracy"] for r in results}
    seeds = sorted({s for _, s in acc})
    lines = ["| seed | " + " | ".join(ARMS) + " |", "|" + "---|" * (len(ARMS) + 1)]
    lines += [f"| {s} | " + " | ".join(f"{acc[a, s]:.3f}" for a in ARMS) + " |" for s in seeds]
    lines.append("\nIGPO minus each arm, paired by seed: mean ± std over seeds, the mean's 95% interval (Student t), "
                 "and the seeds where IGPO is higher / lower:\n")
    for arm in (a for a in ARMS if a != "igpo"):
        d = [acc["igpo", s] - acc[arm, s] for s in seeds]
        half = T975.get(len(d) - 1, 1.96) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        lo, hi = statistics.mean(d) - half, statistics.mean(d) + half
        lines.append(f"- igpo − {arm}: {mean_std(d)} (95% CI {lo:+.3f} to {hi:+.3f}; {sum(x > 0 for x in d)} / "
                     f"{sum(x < 0 for x in d)})")
    return "\n".join(lines)


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
# two-sided 95% quantiles of Student's t by degrees of freedom (the normal's 1.96 beyond 10)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm in ARMS:
        runs = [r for r in results if r["arm"] == arm]
        steps = [r["step"] for r in runs[0]["rows"] if "acc" in r]
        for ax, key in zip(axes, ("acc", "all_wrong_before")):
            ys = [[r[key] for r in run["rows"] if key in r] for run in runs]
            ax.plot(steps, [statistics.mean(v) for v in zip(*ys)], label=arm)
    for ax, title in zip(axes, ("on-policy accuracy (T = 1.2), mean over seeds", "all-wrong share before rescue")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT init shared by every arm")
    p.add_argument("--seeds", default=None, help="comma list (default 0,1,2; --quick: 0)")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (1 thread each)")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 rollout batch, 20 test problems (CI)")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--report", action="store_true", help="rewrite claim.md/.png from claim.json (no runs; with --quick: the claim-quick files)")
    p.add_argument("--runs", default="runs/claim", help="where each run's metrics and evaluation rows go")
    p.add_argument("--keep", action="store_true", help="reuse the runs of OUT/claim.json with the same arm, seed and "
                   "flags (and its start row); run only the others")
    args, extra = p.parse_known_args()
    args.extra = [a for a in extra if a != "--"]
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    if args.report:
        res = load(args)
        if not res["results"]:
            raise SystemExit(f"--report: no claim results in {args.out}")
        return write(args, res)
    t0 = time.time()
    old = load(args) if args.keep else dict(results=[], history=[])
    start = old["start"] if old.get("model", args.model) == args.model and "start" in old else start_row(args)
    print(f"  SFT start: test {start['test']:.3f}", flush=True)
    jobs = [(arm, seed) for seed in seeds for arm in ARMS]
    done = {(r["arm"], r["seed"]): r for r in old["results"] if r["flags"] == run_flags(r["arm"], r["seed"], args)}
    todo = [job for job in jobs if job not in done]
    with ThreadPoolExecutor(args.parallel) as pool:
        new = dict(zip(todo, pool.map(lambda job: run(*job, args), todo)))
    command = "python experiments/claim.py " + " ".join(sys.argv[1:])
    history = old["history"] + [dict(command=command, wall_s=time.time() - t0, runs=len(todo))]
    write(args, dict(command=command, wall_s=sum(h["wall_s"] for h in history), history=history, seeds=seeds,
                     model=args.model, start=start, results=[new[job] if job in new else done[job] for job in jobs]))


def load(args):
    """The finished runs of OUT/claim(-quick).json; JSON turned the chain-length keys into strings. A file from
    before `history` existed counts as one invocation."""
    path = os.path.join(args.out, "claim-quick.json" if args.quick else "claim.json")
    if not os.path.exists(path):
        return dict(results=[], history=[])
    res = json.load(open(path))
    for d in [res["start"], *res["results"]]:
        d["by_len"] = {int(k): v for k, v in d["by_len"].items()}
    res.setdefault("history", [dict(command=res["command"], wall_s=res["wall_s"], runs=len(res["results"]))])
    return res


def write(args, res):
    """claim(-quick).md, .json and .png from the finished runs in `res` (--report: from the committed JSON)."""
    name = "claim-quick" if args.quick else "claim"
    text, res["stats"] = table(res["results"], res["start"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(res, f)
    has_plot = plot(res["results"], os.path.join(args.out, f"{name}.png"))
    n, hist = len(res["results"]), res["history"]  # load() and main() always set it
    parts = "" if len(hist) < 2 else " (" + "; ".join(f"`{h['command']}`: {h['runs']} runs, {h['wall_s'] / 60:.1f} min"
                                                      for h in hist) + ")"
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(f"# IGPO vs baselines on the embedded task\n\n`{res['command']}`: {n} runs, wall "
                f"{res['wall_s'] / 60:.1f} min{parts} on a 2-core CPU ({args.parallel} runs at a time, 1 thread each). Seeds "
                f"{res['seeds']}; mean ± std over seeds. Init: `{args.model}`. Extra igpo.py flags: "
                f"{args.extra or 'none'}. Test accuracy: greedy pass@1 on the 500 test problems after the last step; "
                f"rollouts / prompt-rollout: rollouts sampled (inpainted or re-sampled included) per on-policy "
                f"rollout, mean over batches.\n\n{text}\n\n{paired(res['results'])}\n\n")
        if has_plot:
            f.write(f"![accuracy and all-wrong share per step]({name}.png)\n")
    print(text)
    print(f"wall {res['wall_s'] / 60:.1f} min -> {args.out}/{name}.md")


if __name__ == "__main__":
    main()
