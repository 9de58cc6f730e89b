"""Can the RL loop overfit 16 fixed prompts? The sharpest check of the update: with fresh rollouts of the same 16
RL prompts every round, the on-policy pass rate must climb fast; a loop that cannot do this will not learn 2,000.

Runs `igpo.py` (GRPO: --rescue off) once per log-prob estimator, same seed, same prompts, same rounds, and prints
per estimator: the on-policy accuracy by thirds of the run, the mean per-token KL to the reference, the clip
fraction, the largest gradient norm, and the seconds per rollout batch split into rollout / old+ref log-probs /
updates. Each arm is a separate process with one thread (arms run two at a time on a 2-core machine).

Run:  python bench/overfit.py [--model checkpoints/task-sft] [--rounds 20] [--lr 3e-4] [--beta 0]
      python bench/overfit.py --arms d1,trajectory:1,trajectory:4 -- --mu 4      # extra flags go to igpo.py
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_arm(arm, args, extra):
    """One igpo.py run; returns its metrics rows."""
    name, _, group = arm.partition(":")
    out = os.path.join(args.out, arm.replace(":", "-g"))
    flags = ["--model", args.model, "--max_prompts", "16", "--prompts_per_step", "16", "--rescue", "off",
             "--steps", str(2 * args.rounds), "--mu", "2", "--lr", str(args.lr), "--beta", str(args.beta),
             "--warmup", "1", "--eval_limit", "0", "--save_every", str(10 ** 9), "--seed", str(args.seed),
             "--logp", name, "--logp_group", group or "1", "--out_dir", out, *extra]
    if os.path.exists(os.path.join(out, "metrics.jsonl")):
        os.remove(os.path.join(out, "metrics.jsonl"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "igpo.py", *flags], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{arm} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return dict(arm=arm, rows=rows, wall=time.time() - t0, flags=flags)


def summary(res):
    rows = res["rows"]
    acc = [r["acc"] for r in rows if "acc" in r]
    n = len(acc)
    thirds = [sum(acc[k * n // 3:(k + 1) * n // 3]) / max(1, (k + 1) * n // 3 - k * n // 3) for k in range(3)]
    batch = [r for r in rows if "t_rollout" in r]
    per_batch = {k: sum(r[k] for r in batch) / len(batch) for k in ("t_rollout", "t_logp")}
    updates = sum(r["t_update"] for r in rows) / len(batch)
    return (f"| {res['arm']} | {thirds[0]:.3f} / {thirds[1]:.3f} / {thirds[2]:.3f} | "
            f"{sum(r['kl'] for r in rows) / len(rows):.4f} | {sum(r['clip_frac'] for r in rows) / len(rows):.3f} | "
            f"{max(r['grad_norm'] for r in rows):.2f} | {per_batch['t_rollout']:.1f} / {per_batch['t_logp']:.1f} / "
            f"{updates:.1f} | {res['wall']:.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/task-sft")
    p.add_argument("--arms", default="d1,trajectory:1,trajectory:4", help="estimator[:logp_group], comma list")
    p.add_argument("--rounds", type=int, default=20, help="rollout batches (each: 16 prompts x G, then mu=2 steps)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=2, help="arms run at once (1 thread each)")
    p.add_argument("--out", default="runs/overfit")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda a: run_arm(a, args, extra), args.arms.split(",")))
    print(f"16 fixed RL prompts, GRPO, {args.rounds} rounds, lr {args.lr}, beta {args.beta}, seed {args.seed}, "
          f"extra {extra}")
    print("| estimator | on-policy acc, thirds of the run | KL/token | clip frac | max grad norm | "
          "s per batch: rollout / logp / updates | wall s |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        print(summary(res))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "overfit.json"), "w") as f:
        json.dump([{k: v for k, v in r.items()} for r in results], f)


if __name__ == "__main__":
    main()
