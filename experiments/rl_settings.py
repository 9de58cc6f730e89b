"""Which RL budget and step size make the main job (`python igpo.py`, level data.TASK_MAIN) raise sound pass@1? On
the level's VAL split, never on test.

Each setting is one `igpo.py` run (the task preset plus the setting's flags, no test evaluation) from the same SFT
start, seed and prompts; its final policy is scored greedily (the task's decoding) on the first --val problems of
the level's val split, in pass@1 and sound pass@1 (right with every reasoning line right). Beside each: the paired
difference to the start on the same problems (mean of per-problem differences, 95% normal interval), the on-policy
accuracy of the run's first and last quarter, and its wall time. Writes OUT/rl_settings.md and .json; results merge
into the JSON by name, so settings can be added a few at a time.

Run:  python experiments/rl_settings.py [--settings NAME,NAME] [--parallel 2] [--out experiments/results] [--reuse]
(--reuse: a finished run is scored again instead of trained again; its wall time is then the sum of the run's logged
phase times.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import data  # noqa: E402
import eval as E  # noqa: E402
import launch  # noqa: E402
import paired_eval  # noqa: E402

SETTINGS = {  # name: (why, igpo.py flags on top of the task preset)
    "steps40": ("lr 3e-4 (chosen on the previous task), 40 steps: the task preset before this table",
                ["--steps", "40"]),
    "steps80": ("twice the RL budget", ["--steps", "80"]),
    "lr1e-3": ("3x the step size, 40 steps", ["--lr", "1e-3", "--steps", "40"]),
    "steps160": ("four times the RL budget: the task preset since this table", ["--steps", "160"]),
    "mu4": ("4 updates per rollout batch (O's μ): twice the optimizer steps at the preset's rollout cost",
            ["--mu", "4", "--steps", "80"]),
    "lr1e-4-steps80": ("a third of the step size, twice the budget (KL to the start reached 0.3-0.4 at lr 3e-4)",
                       ["--lr", "1e-4", "--steps", "80"]),
    "lr1e-4": ("a third of the step size at the preset's 160 steps (on the 3-stage start, lr 3e-4 lowered the "
               "on-policy accuracy of GRPO and IGPO alike in their first 20 batches)", ["--lr", "1e-4", "--steps", "160"]),
    "beta0.1": ("10x the KL weight (160 steps): on the 3-stage start at task-5, lr 3e-4 raised val pass@1 but not sound "
                "pass@1: RL miscopies operands of lines whose results stay right; a stronger pull to the start's lines",
                ["--beta", "0.1", "--steps", "160"]),
    "T0.8": ("rollouts at temperature 0.8 (160 steps): fewer slipped lines sampled, so fewer rewarded",
             ["--temperature", "0.8", "--steps", "160"]),
}


def score(ckpt, level, n, out_path):
    """The summary of ckpt's greedy val completions and their rows ({id: row}, paired_eval.rows)."""
    import torch
    torch.set_num_threads(1)
    m, tok = launch.load_model(ckpt, device=torch.device("cpu"))
    s = E.evaluate(m, tok, data.task_level(level, "val")[:n], E.protocol("task"), out_path=out_path,
                   messages=data.task_messages, batch_size=100)
    return s, paired_eval.rows(out_path)


def run(name, args, start):
    out = os.path.join(args.runs, name)
    flags = ["--model", args.model, "--data", args.level, "--out_dir", out, "--eval_limit", "0",
             "--save_every", "0", "--save_last", "model", *SETTINGS[name][1]]
    t0, done = time.time(), args.reuse and os.path.exists(os.path.join(out, "final", "config.json"))
    r = None if done else subprocess.run([sys.executable, "igpo.py", *flags], cwd=ROOT, capture_output=True,
                                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r is not None and r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    logged = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    wall = time.time() - t0 if r else sum(x.get(k, 0) for x in logged for k in ("t_update", "t_rollout", "t_inpaint",
                                                                                    "t_logp"))
    s, rows = score(os.path.join(out, "final"), args.level, args.val, os.path.join(out, "val.jsonl"))
    batches = [x for x in logged if "acc" in x]
    q = max(1, len(batches) // 4)
    res = dict(name=name, flags=flags, wall_s=round(wall), pass1=s["accuracy"], sound=s["sound_accuracy"],
               d_pass1=paired_eval.paired(start, rows, paired_eval.METRICS["pass@1"])[:2],
               d_sound=paired_eval.paired(start, rows, paired_eval.METRICS["sound pass@1"])[:2],
               on_policy=[statistics.mean(x[k] for x in part) for part in (batches[:q], batches[-q:])
                          for k in ("acc", "sound_acc")])
    print(f"  {name}: val pass@1 {res['pass1']:.3f} sound {res['sound']:.3f}  d sound {res['d_sound'][0]:+.3f} "
          f"± {res['d_sound'][1]:.3f}  {wall / 60:.1f} min", flush=True)
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT start shared by every setting")
    p.add_argument("--level", default=f"task-{data.TASK_MAIN}", help="the main job's level")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--val", type=int, default=300, help="val problems scored")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (1 thread each)")
    p.add_argument("--runs", default="runs/rl_settings")
    p.add_argument("--out", default="runs/rl_settings")
    p.add_argument("--reuse", action="store_true", help="score a finished run (its final/) instead of training it")
    args = p.parse_args()
    os.makedirs(args.runs, exist_ok=True)
    s0, start = score(os.path.join(ROOT, args.model), args.level, args.val, os.path.join(args.runs, "start-val.jsonl"))
    print(f"  start: val pass@1 {s0['accuracy']:.3f} sound {s0['sound_accuracy']:.3f}", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        new = list(pool.map(lambda n: run(n, args, start), args.settings.split(",")))
    path = os.path.join(args.out, "rl_settings.json")
    old = json.load(open(path))["results"] if os.path.exists(path) else []
    results = sorted([r for r in old if r["name"] not in {x["name"] for x in new}] + new,
                     key=lambda r: list(SETTINGS).index(r["name"]))
    ci = E.wilson
    lines = [f"# RL settings for the main job, on {args.level}'s val split\n",
             f"Start `{args.model}`: val pass@1 {s0['accuracy']:.3f} ({ci(s0['accuracy'], args.val)[0]:.3f}-"
             f"{ci(s0['accuracy'], args.val)[1]:.3f}), sound pass@1 {s0['sound_accuracy']:.3f} "
             f"({ci(s0['sound_accuracy'], args.val)[0]:.3f}-{ci(s0['sound_accuracy'], args.val)[1]:.3f}), "
             f"{args.val} problems, greedy. Seed 0; every run 1 thread on a 2-core CPU shared with 1-2 other jobs. "
             f"Last command: `python experiments/rl_settings.py {' '.join(sys.argv[1:])}`.\n",
             "| setting | why | val pass@1 | val sound pass@1 | pass@1 - start (95%) | sound - start (95%) | "
             "on-policy acc, sound: first → last quarter | wall (min) |", "|" + "---|" * 8]
    for r in results:
        o = r["on_policy"]
        lines.append(f"| {r['name']} | {SETTINGS[r['name']][0]} | {r['pass1']:.3f} | {r['sound']:.3f} | "
                     f"{r['d_pass1'][0]:+.3f} ± {r['d_pass1'][1]:.3f} | {r['d_sound'][0]:+.3f} ± "
                     f"{r['d_sound'][1]:.3f} | {o[0]:.3f}, {o[1]:.3f} → {o[2]:.3f}, {o[3]:.3f} | "
                     f"{r['wall_s'] / 60:.1f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rl_settings.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(path, "w") as f:
        json.dump(dict(start=s0, results=results), f)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
