"""Does a right answer mean a sound chain under another decoding of the same start? Issue 26 asks that at least 90% of
right answers come from sound chains, greedy and at the RL temperature; the task's decoding (Fast-dLLM's confidence
threshold 0.9) gives 79-87% on rollouts at 5-6 steps. This measures, at the SFT start, for each decoding setting
(the task's, one token per step, the paper's two tokens per step): on the level's RL prompts (igpo.py's first rollout
batches, G rollouts at T 1.2, levels.measure, no rescue) the pass rate, sound / right, right / unsound and the
all-wrong share; on val (greedy) pass@1, sound pass@1 and sound / right; and the forwards per rollout it costs.
Never test.

Run:  python experiments/decoding.py [--levels 5,6] [--prompts 32] [--val 300] [--out experiments/results/decoding]
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import eval as E  # noqa: E402
import levels  # noqa: E402
import model as M  # noqa: E402

GEN = data.TASK_SAMPLING["gen_length"]
SETTINGS = {  # name -> (igpo.py flags for the RL rollouts, eval.protocol overrides for val, forwards per rollout)
    "threshold 0.9 (the task's)": ([], {}, "about 20"),
    "1 token a step": (["--fast_threshold", "0", "--diffusion_steps", str(GEN)], dict(threshold=0, steps=GEN), GEN),
    "2 tokens a step (paper)": (["--fast_threshold", "0", "--diffusion_steps", str(GEN // 2)],
                                dict(threshold=0, steps=GEN // 2), GEN // 2),
}


COLS = ["pass_rate", "sound_given_right", "right_given_unsound", "all_wrong", "val_pass1", "val_sound_pass1",
        "val_sound_given_right"]  # levels.properties' names for them


def row(m, tok, level, name, prompts, n_val):
    flags, proto, nfe = SETTINGS[name]
    t0 = time.time()
    got = levels.measure(m, tok, level, prompts, 0, "off", flags)
    val = E.evaluate(m, tok, data.task_level(level, "val")[:n_val or None], E.protocol("task", **proto),
                     messages=data.task_messages, batch_size=100)
    props = levels.properties(got, got, val, val, prompts, 0.0)  # no rescue, one val protocol: only COLS are read
    return dict(level=level, setting=name, forwards=nfe, **{c: props[c] for c in COLS}, wall_s=time.time() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    levels.start_flags(p, "5,6", 32)
    p.add_argument("--out", default="runs/decoding", help="where decoding.md/.json go")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    m, tok = M.load(os.path.join(ROOT, a.model))
    rows = []
    os.makedirs(a.out, exist_ok=True)
    for n in a.levels.split(","):
        for name in SETTINGS:
            rows.append(row(m, tok, f"task-{n}", name, a.prompts, a.val))
            print(json.dumps(rows[-1]), flush=True)
            with open(os.path.join(a.out, "decoding.json"), "w") as f:
                json.dump(dict(args=vars(a), rows=rows), f, indent=1)
    lines = [f"# Decoding settings at the SFT start\n\n`python experiments/decoding.py {' '.join(sys.argv[1:])}` "
             f"({a.model}; RL split: first {a.prompts} prompts x G 8 at T {data.TASK_SAMPLING['temperature']}, "
             f"no rescue; val: first {a.val}, greedy)\n",
             "| level | decoding | forwards / rollout | " + " | ".join(COLS) + " | wall s |", "|---" * (len(COLS) + 4) + "|"]
    lines += [f"| {r['level']} | {r['setting']} | {r['forwards']} | " + " | ".join(f"{r[c]:.3f}" for c in COLS) +
              f" | {r['wall_s']:.0f} |" for r in rows]
    with open(os.path.join(a.out, "decoding.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
