"""How hard is each difficulty level of the embedded task for the SFT start? The x axis of the dose-response.

A level `task-ext<s>` (data.task_level) replaces a share s of the RL prompts with problems whose values go beyond
what SFT saw (6..7 against 0..5). For each level this samples G rollouts per prompt from the start, exactly as
igpo.py's first rollout batch would (igpo.roll_out: the task preset's sampler, temperature and reward rule), on
prompts of the level's RL split (never test), and reports: the pass rate of single rollouts, the all-wrong share
(the groups IGPO acts on), how many of those groups hinted re-sampling rescues (igpo.rescue, --rescue hints) and
how many re-sampling without hints rescues (--rescue resample), and greedy accuracy on the level's test set.

Run:  python experiments/levels.py [--levels 0,0.25,0.5,0.75,1] [--prompts 256] [--out experiments/results]
Writes OUT/levels.md and OUT/levels.json (default OUT: runs/levels; the committed numbers are in
experiments/results/levels.md).
"""
import argparse
import json
import os
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import eval as E  # noqa: E402
import igpo  # noqa: E402
import launch  # noqa: E402
import model as M  # noqa: E402


def measure(m, tok, name, n_prompts, seed, rescue, extra=()):
    """Over the first n_prompts of the level's seeded data order (igpo.py's first rollout batches under the task
    preset + extra igpo.py flags): {pass_rate, all_wrong (groups), rescued (groups with a replacement), sound:
    [sound, verified] for the correct on-policy rollouts and for the rollouts chosen as replacements}."""
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--data", name, "--seed", str(seed), "--rescue", rescue,
                                                          *extra])
    items, messages = data.rl_prompts(name)
    out = dict(passed=0, all_wrong=0, rescued=0, sound_policy=[0, 0], sound_replaced=[0, 0])
    for k in range(n_prompts // cfg.prompts_per_step):
        mine, first = igpo.batch_items(items, k, cfg, 0, 1)
        b = igpo.roll_out(m, tok, mine, messages, cfg, k, first, torch.device("cpu"))
        out["passed"] += int((b.correct > 0).sum())
        out["all_wrong"] += int(igpo.all_wrong(b.correct, cfg.G).sum())
        for r in (b.correct > 0).nonzero().squeeze(1).tolist():
            out["sound_policy"][0] += sound(mine[r // cfg.G]["question"], tok.decode(b.comp[r]))
            out["sound_policy"][1] += 1
        if rescue != "off":
            rows, comp, _, correct, _, _ = igpo.rescue(m, tok, mine, b, cfg, first)
            out["rescued"] += len(set((rows // cfg.G).tolist()))
            for r, c in zip(rows.tolist(), comp):
                out["sound_replaced"][0] += sound(mine[r // cfg.G]["question"], tok.decode(c))
                out["sound_replaced"][1] += 1
    out["pass_rate"] = out.pop("passed") / (n_prompts * cfg.G)
    return out


OPS = {"gets": "+", "finds": "+", "loses": "-", "gives": "-"}


def sound(question, text):
    """Whether a completion's reasoning is right step by step: one line per operation of the question, line k
    'ordinal: a op n=c' with a the previous value (the start for k = 1), op and n the question's k-th operation and
    c = a op n. The reward checks only the boxed answer, which a hint can reveal (the last line's result)."""
    value = int(re.search(r"has (\d+)", question)[1])
    ops = [(OPS[verb], int(n)) for verb, n in re.findall(r"(gets|finds|loses|gives) (\d+)", question)]
    lines = re.findall(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)", text.split("</reasoning>")[0])
    if len(lines) != len(ops):
        return False
    for (a, op, n, c), (op_q, n_q) in zip(lines, ops):
        if int(a) != value or op != op_q or int(n) != n_q or int(c) != (value + n_q if op == "+" else value - n_q):
            return False
        value = int(c)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT start")
    p.add_argument("--levels", default="0,0.25,0.5,0.75,1", help="out-of-range shares s (data name task-ext<s>)")
    p.add_argument("--prompts", type=int, default=256, help="RL prompts per level (a multiple of 16)")
    p.add_argument("--seed", type=int, default=0, help="data order and sampling seed (igpo.py --seed)")
    p.add_argument("--out", default="runs/levels", help="where levels.md/.json go")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    m, tok = M.load(os.path.join(ROOT, args.model))
    rows, t0 = [], time.time()
    for s in args.levels.split(","):
        name = f"task-ext{s}"
        hinted = measure(m, tok, name, args.prompts, args.seed, "hints")
        resampled = measure(m, tok, name, args.prompts, args.seed, "resample")
        step = measure(m, tok, name, args.prompts, args.seed, "hints", ["--withhold", "step"])
        assert resampled["all_wrong"] == hinted["all_wrong"]  # the same on-policy rollouts: only the rescue differs
        test = E.evaluate(m, tok, data.task_level(name, "test"), E.protocol("task"), messages=data.task_messages,
                          batch_size=128)
        rows.append(dict(level=name, share=float(s), groups=args.prompts, test_greedy=test["accuracy"], **hinted,
                         rescued_resample=resampled["rescued"], sound_resampled=resampled["sound_replaced"],
                         rescued_withhold_step=step["rescued"], sound_withhold_step=step["sound_replaced"]))
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "levels.json"), "w") as f:
        json.dump(dict(args=vars(args), rows=rows, wall_s=time.time() - t0), f, indent=1)
    with open(os.path.join(args.out, "levels.md"), "w") as f:
        f.write(f"# Difficulty levels at the SFT start\n\n`python experiments/levels.py {' '.join(sys.argv[1:])}` "
                f"({(time.time() - t0) / 60:.1f} min). Start `{args.model}`; {args.prompts} RL-split prompts per "
                f"level (seed {args.seed}'s data order) x G 8, the task preset's sampler (T 1.2, 2 tokens per step) "
                f"and reward rule; test greedy on the level's {data.TASK_LEVEL_TEST}-problem test set (test seed "
                f"100). Sound: a verified rollout whose every reasoning line is right (the reward checks only "
                f"the box).\n\n| level | out-of-range share | rollout pass rate | all-wrong groups | rescued by hints | "
                f"rescued by re-sampling | rescued by hints without the last step | sound / verified: on-policy | "
                f"hinted replacements | re-sampled replacements | hinted without the last step | level test greedy "
                f"|\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            w = r["all_wrong"]
            frac = lambda pair: f"{pair[0]} / {pair[1]} = {pair[0] / max(1, pair[1]):.2f}"
            f.write(f"| {r['level']} | {r['share']:.2f} | {r['pass_rate']:.3f} | {w} / {r['groups']} = "
                    f"{w / r['groups']:.3f} | {r['rescued']} / {w} | {r['rescued_resample']} / {w} | "
                    f"{r['rescued_withhold_step']} / {w} | {frac(r['sound_policy'])} | {frac(r['sound_replaced'])} | "
                    f"{frac(r['sound_resampled'])} | {frac(r['sound_withhold_step'])} | {r['test_greedy']:.3f} |\n")
    print(f"-> {args.out}/levels.md")


if __name__ == "__main__":
    main()
