"""Which SFT start can RL sharpen? (issue 9, item 3) Train the embedded task's tiny LLaDA under one named recipe
and measure it with bench/task_difficulty.py: greedy accuracy by chain length on the VAL split, and on the RL
split G = 8 rollouts at T = 1.2 (pass rate, all-wrong groups, hinted re-sampling of those). Settings are chosen
on val and rl only; the test split is measured once, for the final choice, by bench/task_difficulty.py --split test.

A recipe = overrides of data.TASK_SPLITS (the SFT mix) + sft.py flags; it trains in-process (sft.train), so a
recipe equal to the shipped defaults gives the same checkpoint as `python sft.py` at the same thread count.
Run:  OMP_NUM_THREADS=1 python experiments/sft_start.py --config NAME   # -> experiments/results/sft_start/NAME.json
      python experiments/sft_start.py --report                          # -> the table in experiments/results/
"""
import argparse
import contextlib
import io
import json
import os
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import data  # noqa: E402
import model as M  # noqa: E402
import sft  # noqa: E402
import task_difficulty  # noqa: E402

OUT = os.path.join(ROOT, "experiments", "results", "sft_start")
BASE_SFT = data.TASK_SPLITS["sft"]  # (1, 4, 20000, 1) at the start of this work
# name: (why, SFT-split override (min steps, max steps, size, seed) or None, sft.py flags)
CONFIGS = {
    "base": ("today's recipe: SFT chains 1-4, 1000 steps", (1, 4, 20000, 1), []),
    "mix15": ("SFT chains 1-5 (the ordinal 'fifth' and 5-step format seen), 1000 steps", (1, 5, 20000, 1), []),
    "mix15-2k": ("SFT chains 1-5, 2000 steps", (1, 5, 20000, 1), ["--steps", "2000"]),
    "mix15-lr4e-3": ("SFT chains 1-5, 1000 steps, peak lr 4e-3 (2x)", (1, 5, 20000, 1), ["--lr", "4e-3"]),
    "mix15-4k": ("SFT chains 1-5, 4000 steps (the stages of mix15-2k given twice the budget)", (1, 5, 20000, 1),
                 ["--steps", "4000"]),
    "max5-mix15": ("values 0..5 instead of 0..9 (a lookup table of 30 facts, not 110), SFT chains 1-5, 1000 steps",
                   (1, 5, 20000, 1), [], dict(TASK_MAX_VALUE=5)),
    "max5-mix15-4k": ("max5-mix15 given 4000 steps (at 1000 it had not learned to copy operands: '3-1=0' for "
                      "'has 1 ... loses 1')", (1, 5, 20000, 1), ["--steps", "4000"], dict(TASK_MAX_VALUE=5)),
    "max5-mix15-4k-80k": ("max5-mix15-4k on 80,000 SFT samples instead of 20,000 (3 epochs, not 13)",
                          (1, 5, 80000, 1), ["--steps", "4000"], dict(TASK_MAX_VALUE=5)),
}


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)


def run(name, steps_eval):
    why, sft_split, flags, *task = CONFIGS[name]
    data.TASK_SPLITS["sft"] = sft_split or BASE_SFT
    for k, v in (task[0] if task else {}).items():  # task-definition overrides, e.g. TASK_MAX_VALUE
        setattr(data, k, v)
    ckpt = os.path.join(ROOT, "runs", "sft_start", name)
    cfg = sft.parse_config(["--out_dir", ckpt, *flags])
    buf = io.StringIO()
    t0 = time.time()
    with contextlib.redirect_stdout(Tee(sys.stdout, buf)):
        sft.train(cfg)
    wall = time.time() - t0
    losses = re.findall(r"step (\d+)/\d+ loss ([\d.]+)", buf.getvalue())
    m, tok = M.load(ckpt)
    res = dict(name=name, why=why, sft_split=data.TASK_SPLITS["sft"], flags=flags, task=task[0] if task else {}, threads=torch.get_num_threads(),
               sft_seconds=round(wall), final_loss=float(losses[-1][1]), loss_curve=[(int(s), float(v)) for s, v in losses],
               command=f"OMP_NUM_THREADS={torch.get_num_threads()} python experiments/sft_start.py --config {name}")
    for s in steps_eval:
        res[f"eval_steps{s}"] = task_difficulty.measure(m, tok, "val", steps=s)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1)


def report():
    rows = ["| config | SFT mix (steps) | flags | SFT wall (threads) | final loss | tok/step | val greedy | val by length "
            "2/3/4/5 | RL pass | RL all-wrong | hinted: pass, rescued |", "|" + "---|" * 11]
    for fn in sorted(f for f in os.listdir(OUT) if f.endswith(".json")):
        r = json.load(open(os.path.join(OUT, fn)))
        for key in sorted(k for k in r if k.startswith("eval_steps")):
            e, steps = r[key], int(key[len("eval_steps"):])
            bl = "/".join(f"{e['greedy_by_length'].get(str(k), 0):.2f}" for k in (2, 3, 4, 5))
            rows.append(f"| {r['name']} | {r['sft_split'][0]}-{r['sft_split'][1]} | {' '.join(r['flags'])} | "
                        f"{r['sft_seconds']} s ({r['threads']}) | {r['final_loss']:.3f} | "
                        f"{data.TASK_SAMPLING['gen_length'] // steps} | {e['greedy']:.3f} | {bl} | {e['rl_pass']:.3f} | "
                        f"{e['n_all_wrong']}/{e['n_rl']} = {e['all_wrong']:.2f} | {e['hint_pass']}, "
                        f"{e['hint_rescued']}/{e['n_all_wrong']} |")
    print("\n".join(rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), help="train + measure this recipe")
    p.add_argument("--eval_steps", default="56", help="denoising steps to measure (56 = 1 token/step, 28 = 2)")
    p.add_argument("--report", action="store_true", help="print the table of every measured recipe")
    a = p.parse_args()
    if a.config:
        run(a.config, [int(s) for s in a.eval_steps.split(",")])
    if a.report:
        report()
