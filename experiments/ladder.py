"""Probe: can a rule on the operands, at a fixed chain length, give the difficulty ladder that chain length cannot?

errors.md found that the start's 6-step failures are misread operands (98% on line 3) and that the misread rate grows
with the operand's size (24-37% when it is 1, 76-95% when 3). So the all-wrong share may be set by the sizes of the
numbers in the question, a rule on the problem, while the chain length stays where hints still rescue. This samples
G rollouts per RL prompt from the start exactly as igpo.py's first rollout batches (levels.prompt_records, with the
hinted rescue on), keeps one record per prompt (its operands, right and sound rollouts, rescued or not, sound
replacements), and tabulates the all-wrong share and the rescued share of each candidate rule's bins. RL split only
(never val or test): it chooses a rule, it does not score one.

Run:  python experiments/ladder.py [--levels 6,7] [--prompts 512] [--out runs/ladder]
      python experiments/ladder.py --report --out DIR      # the tables again from DIR/ladder.json
Writes OUT/ladder.json (every prompt's record) and OUT/ladder.md (default OUT: runs/ladder).
"""
import argparse
import collections
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import levels  # noqa: E402  (puts the repo on sys.path)
import errors  # noqa: E402
import igpo  # noqa: E402
import launch  # noqa: E402
import model as M  # noqa: E402

# candidate rules: name -> (what it is, function of the operands n_1..n_k)
RULES = {"third": ("the third operation's number", lambda ns: ns[2]),
         "max": ("the largest number", max),
         "big": ("how many numbers are >= 3", lambda ns: sum(n >= 3 for n in ns)),
         "sum": ("the numbers' sum, in bins of 3", lambda ns: f"{3 * (sum(ns) // 3)}-{3 * (sum(ns) // 3) + 2}")}


def operands(question):
    return [n for _, n in errors.operations(question)]


def records(m, tok, name, n_prompts, seed):
    """One dict per RL prompt of the level (levels.prompt_records with the hinted rescue), with its operands."""
    out = []
    for r in levels.prompt_records(m, tok, name, n_prompts, seed, "hints"):
        it = r.pop("item")
        out.append(dict(id=it["id"], operands=operands(it["question"]), **r))
        if len(out) % 16 == 0:
            print(f"{name}: {len(out)} prompts", flush=True)
    return out


def table(recs, rule, G):
    """Per value of the rule: prompts, rollout pass rate, all-wrong share, share of those rescued, sound replacements."""
    bins = collections.defaultdict(list)
    for r in recs:
        bins[RULES[rule][1](r["operands"])].append(r)
    lines = [f"| {RULES[rule][0]} | prompts | pass rate | all wrong | rescued / all wrong | sound / replacements |",
             "|---|---|---|---|---|---|"]
    for v in sorted(bins, key=lambda x: (len(str(x)), str(x))):
        rs = bins[v]
        aw = [r for r in rs if r["right"] == 0]  # igpo.all_wrong; the committed ladder.json predates the flag
        rep = sum(r["replaced"] for r in rs)
        lines.append(f"| {v} | {len(rs)} | {sum(r['right'] for r in rs) / (G * len(rs)):.3f} | "
                     f"{len(aw) / len(rs):.3f} ({len(aw)}) | "
                     + (f"{sum(r['replaced'] > 0 for r in aw) / len(aw):.3f}" if aw else "–") + " | "
                     + (f"{sum(r['sound_replaced'] for r in rs) / rep:.3f} ({rep})" if rep else "–") + " |")
    return "\n".join(lines) + "\n"


def write(out, res):
    with open(os.path.join(out, "ladder.json"), "w") as f:
        json.dump(res, f)
    with open(os.path.join(out, "ladder.md"), "w") as f:
        f.write(f"# A difficulty ladder by the operands' sizes: probe at the SFT start\n\n`{res['command']}` "
                f"({res['wall_s'] / 60:.1f} min). Start `{res['model']}`; the first RL-split prompts of each level "
                f"(seed {res['seed']}'s data order) x G {res['G']} with the task preset's sampler, reward rule and "
                f"hinted rescue (igpo.py's first rollout batches). RL split only: a rule is chosen here, never "
                f"scored.\n")
        for name, recs in res["levels"].items():
            for rule in RULES:
                f.write(f"\n## {name} ({len(recs)} prompts), by {RULES[rule][0]}\n\n{table(recs, rule, res['G'])}")
    print(f"-> {out}/ladder.md")


def main():
    p = argparse.ArgumentParser(description="Probe a difficulty ladder by the operands' sizes (module docstring).")
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT start")
    p.add_argument("--levels", default="6,7", help="chain lengths n (task-<n>)")
    p.add_argument("--prompts", type=int, default=512, help="RL prompts per level (a multiple of 16), G 8 each")
    p.add_argument("--seed", type=int, default=0, help="data order and sampling seed (igpo.py --seed)")
    p.add_argument("--out", default="runs/ladder", help="where ladder.md/.json go")
    p.add_argument("--report", action="store_true", help="the tables again from OUT/ladder.json")
    args = p.parse_args()
    if args.report:
        return write(args.out, json.load(open(os.path.join(args.out, "ladder.json"))))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    m, tok = M.load(os.path.join(levels.ROOT, args.model))
    os.makedirs(args.out, exist_ok=True)
    res, t0 = dict(command="python experiments/ladder.py " + " ".join(sys.argv[1:]), model=args.model,
                   seed=args.seed, G=launch.parse_config(igpo.Config, igpo.PRESETS, ["--data", "task"]).G,
                   levels={}), time.time()
    for n in args.levels.split(","):
        res["levels"][f"task-{n}"] = records(m, tok, f"task-{n}", args.prompts, args.seed)
        res["wall_s"] = time.time() - t0
        write(args.out, res)  # after every level: a stopped probe keeps what it measured


if __name__ == "__main__":
    main()
