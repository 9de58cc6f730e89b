"""How hard is each difficulty level of the embedded task for the SFT start, and does a right answer mean a sound
chain there? The x axis of the dose-response, and the task's design properties (docs/task.md).

A level `task-<n>` (data.task_level) holds n-step chains; SFT saw long chains rarely (data.TASK_SFT_WEIGHTS). For
each level this samples G rollouts per prompt from the start exactly as igpo.py's first rollout batches would
(igpo.roll_out: the task preset's sampler, temperature and reward rule) on the level's RL prompts (never test),
and reports: the rollout pass rate; how many right rollouts reason soundly (every line right: data.task_sound) and
how often an unsound rollout is right; the all-wrong share (the groups IGPO acts on); how many of those groups
hinted re-sampling (igpo.rescue, --rescue hints) and plain re-sampling (--rescue resample) rescue, and how many of
the chosen replacements are sound; the best constant answer's share; greedy pass@1 and sound pass@1 on val.

Run:  python experiments/levels.py [--levels 4,5,6,7] [--prompts 128] [--out experiments/results]
Writes OUT/levels.md and OUT/levels.json (default OUT: runs/levels; the committed numbers: experiments/results/).
"""
import argparse
import collections
import json
import os
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


def prompt_records(m, tok, name, n_prompts, seed, rescue, extra=()):
    """One record per prompt over the first n_prompts of the level's seeded data order (igpo.py's first rollout
    batches under the task preset + extra igpo.py flags): the item, how many of its G rollouts are right, sound, and
    right and sound, whether the group is all wrong (igpo.all_wrong: the groups IGPO acts on), how many the rescue
    replaced and how many of those replacements are sound."""
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--data", name, "--seed", str(seed), "--rescue", rescue,
                                                          *extra])
    items, messages = data.rl_prompts(name)
    for k in range(n_prompts // cfg.prompts_per_step):
        mine, first = igpo.batch_items(items, k, cfg, 0, 1)
        b = igpo.roll_out(m, tok, mine, messages, cfg, k, first, torch.device("cpu"))
        right, sound = (b.correct > 0).view(-1, cfg.G), E.sound_rows(tok, mine, b.comp, cfg.G).view(-1, cfg.G)
        wrong = igpo.all_wrong(b.correct, cfg.G)
        replaced, sound_replaced = collections.Counter(), collections.Counter()
        if rescue != "off":
            rows, comp, *_ = igpo.rescue(m, tok, mine, b, cfg, first)
            for r, c in zip(rows.tolist(), comp):
                replaced[r // cfg.G] += 1
                sound_replaced[r // cfg.G] += data.task_sound(mine[r // cfg.G]["question"], tok.decode(c))
        for g, it in enumerate(mine):
            yield dict(item=it, G=cfg.G, right=int(right[g].sum()), sound=int(sound[g].sum()),
                       right_sound=int((right[g] & sound[g]).sum()), all_wrong=bool(wrong[g]), replaced=replaced[g],
                       sound_replaced=sound_replaced[g])


def measure(m, tok, name, n_prompts, seed, rescue, extra=()):
    """prompt_records() summed: counts of rollouts (right, sound, right and sound), all-wrong groups, rescued groups
    (with a rescue), and [sound, all] of the rollouts chosen as replacements."""
    out = collections.Counter()
    out["sound_replaced"] = [0, 0]
    for r in prompt_records(m, tok, name, n_prompts, seed, rescue, extra):
        out.update(rollouts=r["G"], right=r["right"], sound=r["sound"], right_sound=r["right_sound"],
                   all_wrong=int(r["all_wrong"]), **({"rescued": int(r["replaced"] > 0)} if rescue != "off" else {}))
        out["sound_replaced"][0] += r["sound_replaced"]
        out["sound_replaced"][1] += r["replaced"]
    return dict(out)


def level_row(m, tok, name, prompts, seed, n_val):
    """One level's row of the table: measure() with hints and with plain re-sampling, val greedy under both
    VAL_PROTOCOLS, the best constant answer of its RL split, and the properties() they give."""
    hinted = measure(m, tok, name, prompts, seed, "hints")
    resampled = measure(m, tok, name, prompts, seed, "resample")
    assert resampled["all_wrong"] == hinted["all_wrong"]  # the same on-policy rollouts: only the rescue differs
    val, val2 = [E.evaluate(m, tok, data.task_level(name, "val")[:n_val or None], proto, messages=data.task_messages,
                            batch_size=100) for proto in VAL_PROTOCOLS]
    rl = data.task_level(name, "rl")
    const = collections.Counter(it["answer"] for it in rl).most_common(1)[0][1] / len(rl)
    return dict(level=name, groups=prompts, counts=dict(hinted=hinted, resampled=resampled),
                **properties(hinted, resampled, val, val2, prompts, const))


def properties(hinted, resampled, val, val2, groups, const):
    """The design properties of one level (names as in issue 26's list) from measure()'s counts."""
    n, w = hinted["rollouts"], hinted["all_wrong"]
    unsound = n - hinted["sound"]
    return dict(pass_rate=hinted["right"] / n, sound_given_right=hinted["right_sound"] / max(1, hinted["right"]),
                right_given_unsound=(hinted["right"] - hinted["right_sound"]) / max(1, unsound),
                all_wrong=w / groups, rescued_hints=hinted.get("rescued", 0) / max(1, w),
                rescued_resample=resampled.get("rescued", 0) / max(1, w),
                sound_hinted=hinted["sound_replaced"][0] / max(1, hinted["sound_replaced"][1]),
                sound_resampled=resampled["sound_replaced"][0] / max(1, resampled["sound_replaced"][1]),
                best_constant=const, val_pass1=val["accuracy"], val_sound_pass1=val["sound_accuracy"],
                val_sound_given_right=val["sound_accuracy"] / max(1e-9, val["accuracy"]),
                val2_pass1=val2["accuracy"], val2_sound_pass1=val2["sound_accuracy"])


COLUMNS = [("pass_rate", "rollout pass rate"), ("sound_given_right", "sound / right (rollouts)"),
           ("right_given_unsound", "right / unsound (rollouts)"), ("all_wrong", "all-wrong groups"),
           ("rescued_hints", "rescued by hints"), ("sound_hinted", "sound / hinted replacements"),
           ("rescued_resample", "rescued by re-sampling"), ("sound_resampled", "sound / re-sampled replacements"),
           ("best_constant", "best constant answer"), ("val_pass1", "val pass@1 (greedy)"),
           ("val_sound_pass1", "val sound pass@1"), ("val_sound_given_right", "val sound / right"),
           ("val2_pass1", "val pass@1, 2 tokens a step"), ("val2_sound_pass1", "val sound pass@1, 2 tokens a step")]


# the task's decoding (a confidence threshold) and the paper's 2 tokens per step, both greedy
VAL_PROTOCOLS = (E.protocol("task"), E.protocol("task", threshold=0, steps=data.TASK_SAMPLING["gen_length"] // 2))


def table(rows):
    head = "| level | " + " | ".join(c for _, c in COLUMNS) + " |\n" + "|---" * (len(COLUMNS) + 1) + "|\n"
    return head + "".join(f"| {r['level']} | " + " | ".join(f"{r[k]:.3f}" for k, _ in COLUMNS) + " |\n"
                          for r in rows)


def start_flags(p, levels, prompts):
    """The flags of a measurement at the start (here and experiments/decoding.py): the start, levels, RL prompts, val."""
    p.add_argument("--model", default="checkpoints/task-sft", help="the SFT start")
    p.add_argument("--levels", default=levels, help="n or nbk (levels task-<n>, task-<n>b<k>)")
    p.add_argument("--prompts", type=int, default=prompts, help="RL prompts per level (a multiple of 16), G 8 each")
    p.add_argument("--val", type=int, default=300, help="val problems per level for greedy pass@1 (0: all)")


def main():
    p = argparse.ArgumentParser(description="Each difficulty level of the embedded task at the SFT start: "
                                            "all-wrong share, rescues, soundness (see the module docstring).")
    start_flags(p, ",".join(map(str, data.TASK_LEVELS)), 128)
    p.add_argument("--seed", type=int, default=0, help="data order and sampling seed (igpo.py --seed)")
    p.add_argument("--out", default="runs/levels", help="where levels.md/.json go")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    m, tok = M.load(os.path.join(ROOT, args.model))
    rows, t0 = [], time.time()
    for n in args.levels.split(","):
        name = f"task-{n}"
        rows.append(level_row(m, tok, name, args.prompts, args.seed, args.val))
        print(json.dumps(rows[-1]), flush=True)
        write(args, rows, time.time() - t0)  # after every level: a stopped run keeps what it measured


def write(args, rows, wall_s):
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "levels.json"), "w") as f:
        json.dump(dict(args=vars(args), rows=rows, wall_s=wall_s), f, indent=1)
    with open(os.path.join(args.out, "levels.md"), "w") as f:
        f.write(f"# Difficulty levels at the SFT start\n\n`python experiments/levels.py {' '.join(sys.argv[1:])}` "
                f"({wall_s / 60:.1f} min, {len(rows)} levels). Start `{args.model}`; {args.prompts} RL-split prompts "
                f"per level (seed {args.seed}'s data order) x G 8 with the task preset's sampler and reward rule; val "
                f"greedy on the level's first {args.val} val problems. Sound: every reasoning line right "
                f"(data.task_sound; the reward checks only the box).\n\n{table(rows)}")
    print(f"-> {args.out}/levels.md")


if __name__ == "__main__":
    main()
