"""Which SFT start makes the embedded task a testbed of reasoning? Probe a design with a short SFT run, then
measure the properties issue 26 asks of it at the start, on each level's RL prompts and val (never test):
a right answer means a sound chain (sound / right, right / unsound), guessing does not pay (best constant answer),
the start reasons (val sound pass@1), the all-wrong share per level (G 8, the RL temperature) and what hints rescue.

A recipe = the SFT mix (data.TASK_SFT_WEIGHTS: relative frequency of chain lengths 1..7) + sft.py flags; it trains
in-process (sft.train), so the recipe equal to the shipped defaults gives the checkpoint `python sft.py` gives at
the same thread count: stage 1 of the committed start (its stage 2, `sft.py --preset task-2`, is measured by
experiments/levels.py). The measurement is experiments/levels.py's (levels.measure, levels.properties).
Run:  OMP_NUM_THREADS=1 python experiments/sft_start.py --recipe NAME [--ckpt DIR]   # DIR: already trained by NAME
      python experiments/sft_start.py --report      # the table of every measured recipe (experiments/results/)
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
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import data  # noqa: E402
import levels  # noqa: E402
import model as M  # noqa: E402
import sft  # noqa: E402

OUT = os.path.join(ROOT, "experiments", "results", "sft_start")


def warm_stage(prev, steps=1500):
    """sft.py flags of a `steps`-step stage at lr 5e-4 from prev's weights (a fresh AdamW); the recipe sets the mix."""
    return ["--preset", "task-2", "--model", prev, "--steps", str(steps), "--lr", "5e-4"]


STAGE3, STAGE4, STAGE5 = (warm_stage(sft.TASK_STAGES[k]) for k in (1, 2, 3))
RECIPES = {  # name: (why, SFT weights of chain lengths 1..7, sft.py flags); docs/task.md says what each gave
    "rare-long-1.5k": ("lengths 1-5 alike, 6 and 7 rarely (0.2, 0.1): a step kind SFT saw rarely", (1, 1, 1, 1, 1, .2, .1),
                       ["--steps", "1500"]),
    "uniform-1.5k": ("every length 1-7 alike", (1, 1, 1, 1, 1, 1, 1), ["--steps", "1500"]),
    "rare-long-4k": ("rare-long given 4000 steps: sft.py's task preset, stage 1 of the committed start",
                     (1, 1, 1, 1, 1, .2, .1),
                     ["--steps", "4000"]),
    "rare-long-8k": ("rare-long given 8000 steps (at 4000 the loss still fell and the facts were not learned)",
                     (1, 1, 1, 1, 1, .2, .1), ["--steps", "8000"]),
    # a third stage from stage 2 (sft.py --preset task-2's output; it was checkpoints/task-sft when these ran)
    "stage3": ("a third stage, same mix: 5 steps become sound (sound/right 0.95 greedy), 6 stay out of reach",
               (1, 1, 1, 1, 1, .2, .1), STAGE3),
    "stage3-long6": ("a third stage with 6- and 7-step chains 2.5x as often: bring 6 steps to the edge",
                     (1, 1, 1, 1, 1, .5, .25), STAGE3),
    "stage3-even6": ("a third stage with 6-step chains as often as short ones, 7 at half (= sft.py --preset task-3)",
                     (1, 1, 1, 1, 1, 1, .5), STAGE3),
    # a fourth stage from the committed start, to tell more SFT (same lines) from a new line format (design results)
    "stage4-even6": ("a fourth stage, the start's mix: do right-but-unsound slips fall with more SFT?",
                     (1, 1, 1, 1, 1, 1, .5), STAGE4),
    # a fifth stage from the committed start: can 7-step chains become the >= 60% rung with hints rescuing a third?
    # (at the start 7 steps are 92% all wrong, 12% rescued: its 7-digit box is not a copy of its lines)
    "stage5-even7": ("a fifth stage with 7-step chains as often as the rest: does the 7-digit box become a copy?",
                     (1, 1, 1, 1, 1, 1, 1), STAGE5),
    "stage5-even7-500": ("the same fifth stage for 500 steps only: move the edge less",
                         (1, 1, 1, 1, 1, 1, 1), warm_stage(sft.TASK_STAGES[3], steps=500)),
    "stage4-results": ("the same fourth stage, lines that write only the result ('third: 4'): no copied operand",
                       (1, 1, 1, 1, 1, 1, .5), STAGE4, "results"),
}


def results_design():
    """Candidate design "results": line k writes only the k-th result ("third: 4" for "third: 1+3=4"), so that no
    token of the chain is a copy of the question the box does not need. On the start the right-but-unsound answers
    are nearly all a miscopied operand beside a right result (docs/task.md): the model computes the result from the
    question, so the copy is a token nothing checks. Same chains, questions and answers; only the solution text
    and the soundness check (line k = 'ordinal_k: value_k', nothing else before </reasoning>) change."""
    problem = data.task_problem

    def task_problem(rng, n_steps):
        item, chain = problem(rng, n_steps)
        return dict(item, solution=re.sub(r"(?m)^(\w+): .*=(\d+)$", r"\1: \2", item["solution"])), chain

    def task_sound(question, text):
        v = [int(re.search(r"has (\d+)", question)[1])]
        for verb, n in re.findall(rf"({'|'.join(data._OPS)}) (\d+)", question):
            v.append(v[-1] + int(n) if data._OPS[verb] == "+" else v[-1] - int(n))
        want = "\n".join(f"{o}: {x}" for o, x in zip(data.TASK_ORDINALS, v[1:]))
        body = text.split("</reasoning>")[0].split("<reasoning>")[-1]
        return " ".join(body.split()) == " ".join(want.split())

    data.task_problem, data.task_sound = task_problem, task_sound
    data._task_splits.cache_clear()


def run(name, ckpt, prompts, n_val):
    why, weights, flags, design = (*RECIPES[name], "lines")[:4]
    if design == "results":
        results_design()
    data.TASK_SFT_WEIGHTS = weights
    t0, wall = time.time(), None
    if not ckpt:
        ckpt = os.path.join(ROOT, "runs", "sft_start", name)
        sft.train(sft.parse_config(["--out_dir", ckpt, *flags]))
        wall = round(time.time() - t0)
    m, tok = M.load(ckpt)
    res = dict(name=name, why=why, weights=weights, flags=flags, design=design, ckpt=ckpt, sft_seconds=wall,
               threads=torch.get_num_threads(), prompts=prompts, levels=[],
               command=f"OMP_NUM_THREADS={torch.get_num_threads()} python experiments/sft_start.py --recipe {name}")
    for n in data.TASK_LEVELS:
        res["levels"].append(levels.level_row(m, tok, f"task-{n}", prompts, 0, n_val))
        print(json.dumps(res["levels"][-1]), flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1)


def report():
    out = []
    for fn in sorted(f for f in os.listdir(OUT) if f.endswith(".json")):
        r = json.load(open(os.path.join(OUT, fn)))
        if "levels" not in r:
            continue  # the first task's recipes (experiments/results/sft_start.md's history)
        out.append(f"### {r['name']}: {r['why']}\n\nSFT weights of lengths 1-7 {r['weights']}, flags "
                   f"`{' '.join(r['flags'])}`; {r['prompts']} RL prompts x G 8 per level.\n\n{levels.table(r['levels'])}")
    print("\n".join(out))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Train a recipe for the embedded task's SFT start and measure the task's "
                                            "design properties at it (module docstring).")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="train (unless --ckpt) and measure this recipe")
    p.add_argument("--ckpt", default="", help="a checkpoint this recipe already trained: measure it only")
    p.add_argument("--prompts", type=int, default=128, help="RL prompts per level (a multiple of 16)")
    p.add_argument("--val", type=int, default=300, help="val problems per level")
    p.add_argument("--report", action="store_true", help="print the table of every measured recipe")
    a = p.parse_args()
    if a.recipe:
        run(a.recipe, a.ckpt, a.prompts, a.val)
    if a.report:
        report()
