"""Which RL step size / KL weight learns on the embedded task? (issue 9) Chosen on the VAL split, never on test.

Each setting is one `igpo.py` run (the task preset plus the setting's flags, no test evaluation), from the same
SFT checkpoint, seed and prompts; then greedy accuracy on the val split (500 problems, the sampler of
data.TASK_SAMPLING) of its last checkpoint, against the start's. The on-policy reward of the run (RL split) is
reported beside it. Writes experiments/results/rl_settings.md and .json.

Run:  python experiments/rl_settings.py [--settings NAME,NAME] [--parallel 2] [--reuse]
The table lists every setting measured so far (results merge into the JSON by name); --reuse measures a run
that already finished (its out_dir names a checkpoint) instead of training it again.
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
sys.path.insert(0, os.path.join(ROOT, "bench"))
import data  # noqa: E402
import model as M  # noqa: E402
import task_difficulty  # noqa: E402

# name: (why, igpo.py flags added to the task preset)
SETTINGS = {
    "lr1e-4": ("the preset before this round: lr 1e-4, beta 0.01", ["--lr", "1e-4"]),
    "lr3e-4": ("3x the step size (at 1e-4 the policy moved ~4 points in 40 steps)", ["--lr", "3e-4"]),
    "lr3e-4-beta0": ("3x the step size without the k3 KL term (its spikes stopped an earlier lr 3e-4 run)",
                     ["--lr", "3e-4", "--beta", "0"]),
    "lr1e-3-beta0": ("10x the step size, no KL term", ["--lr", "1e-3", "--beta", "0"]),
    "traj4-lr3e-4": ("estimator: trajectory, 4 sampler steps per forward (= one forward per block of 8 tokens: "
                     "block teacher forcing)", ["--lr", "3e-4", "--logp", "trajectory", "--logp_group", "4"]),
    "traj1-lr3e-4": ("estimator: trajectory, every sampler step its own forward (each token scored in the exact "
                     "canvas it was committed in)", ["--lr", "3e-4", "--logp", "trajectory", "--logp_group", "1"]),
}


def val_greedy(ckpt, n=500):
    """Greedy accuracy (and by chain length) on the first n val problems."""
    m, tok = M.load(ckpt)
    items = data.task_splits()["val"][:n]
    _, ok = task_difficulty.rollouts(m, tok, items, 1, 0.0, 0)
    acc = sum(ok) / len(ok)
    return dict(acc=acc, ci=1.96 * math.sqrt(acc * (1 - acc) / len(ok)), by_len=task_difficulty.by_length(items, ok))


def costs(rows):
    """(mean clip fraction, s per optimizer step, s of it in log-probs + update) from a run's metrics rows: a
    step's update plus half (mu = 2) of its rollout batch's rollout, inpainting and old-log-prob time."""
    batch, clip, step, learn = {}, [], [], []
    for x in rows:
        batch = x if "t_rollout" in x else batch
        if "t_update" in x:
            logp = batch.get("t_logp", 0)
            clip.append(x.get("clip_frac", 0))
            step.append(x["t_update"] + (batch.get("t_rollout", 0) + batch.get("t_inpaint", 0) + logp) / 2)
            learn.append(x["t_update"] + logp / 2)
    return statistics.mean(clip), statistics.mean(step), statistics.mean(learn)


def run(name, args):
    out = os.path.join(args.runs, name)
    flags = ["--model", args.model, "--out_dir", out, "--eval_limit", "0", *SETTINGS[name][1], *args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    done = args.reuse and os.path.exists(os.path.join(out, "latest"))
    r = None if done else subprocess.run([sys.executable, "igpo.py", *flags], cwd=ROOT, env=env,
                                         capture_output=True, text=True)
    if r is not None and r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    last = open(os.path.join(out, "latest")).read().strip()
    batches = [x for x in rows if "acc" in x]
    q = max(1, len(batches) // 4)
    res = dict(name=name, flags=flags, wall_s=None if done else round(time.time() - t0),
               val=val_greedy(os.path.join(out, last)),
               on_policy_first=statistics.mean(x["acc"] for x in batches[:q]),
               on_policy_last=statistics.mean(x["acc"] for x in batches[-q:]),
               max_kl=max(x.get("kl", 0) for x in rows), max_gnorm=max(x.get("grad_norm", 0) for x in rows), rows=rows)
    print(f"  {name}: val {res['val']['acc']:.3f}  on-policy {res['on_policy_first']:.3f} -> "
          f"{res['on_policy_last']:.3f}  max kl {res['max_kl']:.2f}  max gnorm {res['max_gnorm']:.2f}", flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT start shared by every setting")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--parallel", type=int, default=2, help="runs at once (1 thread each)")
    p.add_argument("--runs", default="runs/rl_settings")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--reuse", action="store_true", help="measure finished runs instead of training them again")
    args, extra = p.parse_known_args()
    args.extra = [a for a in extra if a != "--"]
    t0 = time.time()
    start = val_greedy(os.path.join(ROOT, args.model))
    print(f"  start: val {start['acc']:.3f}", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        new = list(pool.map(lambda n: run(n, args), args.settings.split(",")))
    path = os.path.join(args.out, "rl_settings.json")
    old = json.load(open(path))["results"] if os.path.exists(path) else []
    results = [r for r in old if r["name"] not in {n["name"] for n in new}] + new
    results.sort(key=lambda r: list(SETTINGS).index(r["name"]))
    lines = [f"# RL settings on the val split\n\nLast command: `python experiments/rl_settings.py "
             f"{' '.join(sys.argv[1:])}`, wall {(time.time() - t0) / 60:.1f} min, 2-core CPU (runs 1 thread each, "
             f"sharing the cores with other jobs: times are upper bounds). Seed 0, 40 optimizer steps each. Start `{args.model}`: val greedy "
             f"{start['acc']:.3f} ± {start['ci']:.3f} (95%), by chain length {start['by_len']}. Extra flags: "
             f"{args.extra or 'none'}.\n",
             "| setting | why | val greedy (95% CI) | by chain length | on-policy acc, first → last quarter | "
             "max per-token KL | clip fraction | max grad norm | s per optimizer step (log-probs + update) |",
             "|" + "---|" * 9]
    for r in results:
        clip, step, learn = costs(r["rows"])
        v, kl = r["val"], "n/a (β = 0)" if "--beta" in r["flags"] and r["flags"][r["flags"].index("--beta") + 1] == "0" \
            else f"{r['max_kl']:.3f}"
        lines.append(f"| {r['name']} | {SETTINGS[r['name']][0]} | {v['acc']:.3f} ± {v['ci']:.3f} | {v['by_len']} | "
                     f"{r['on_policy_first']:.3f} → {r['on_policy_last']:.3f} | {kl} | "
                     f"{clip:.4f} | {r['max_gnorm']:.2f} | {step:.1f} ({learn:.1f}) |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rl_settings.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path, "w") as f:
        json.dump(dict(start=start, results=results), f)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
