"""Any two arms of the claim at one level, paired by seed: A minus B over the seeds both have.

claim.md pairs the reference arm (IGPO) against every other arm. A forked check often needs another pair: a fast
mode against its exact arm (`grpo_dual_cache` vs `grpo`), or two baselines (`sample_matched` vs `grpo`). This reads
claim.json and prints, for A − B, the mean and 95% Student t interval of the paired differences (claim.py's), the
seeds where A is higher / lower, in level test pass@1, level sound pass@1 and standard-test pass@1, and each arm's
rollout seconds per batch (sampling and rescue) over the same seeds.

Run:  python experiments/arm_vs_arm.py --level 6b4 --a grpo_dual_cache --b grpo [--claim PATH] [--seeds 0,1,2,3]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import claim  # noqa: E402

METRICS = (("test", "level test pass@1"), ("sound", "level sound pass@1"), ("std_test", "standard test pass@1"))


def compare(results, test_seed, level, a, b, seeds=None):
    """[(metric label, (mean, lo, hi), higher, lower, seeds, claim.md's text)] and {arm: mean rollout s / batch} for
    A − B."""
    stats = {(r["arm"], r["seed"]): claim.run_stats(r, test_seed) for r in results if r["level"] == str(level)}
    both = sorted(s for (arm, s) in stats if arm == a and (b, s) in stats and (seeds is None or s in seeds))
    if not both:
        raise SystemExit(f"no seed of level {level} has both {a} and {b}")
    rows = []
    for key, label in METRICS:
        d = [stats[a, s][key] - stats[b, s][key] for s in both]
        rows.append((label, claim.paired_interval(d), sum(x > 0 for x in d), sum(x < 0 for x in d), both,
                     claim.diff_text(d)))
    speed = {arm: statistics.mean(stats[arm, s]["rollout_s"] for s in both) for arm in (a, b)}
    return rows, speed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--claim", default="experiments/results/claim/claim.json", help="claim.py's claim.json")
    p.add_argument("--level", required=True, help="a level as claim.py names it: 6, 6b4, ...")
    p.add_argument("--a", required=True, help="the arm whose score is subtracted from")
    p.add_argument("--b", required=True, help="the arm subtracted")
    p.add_argument("--seeds", default="", help="comma list; default: every seed both arms have")
    args = p.parse_args()
    d = json.load(open(args.claim))
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    rows, speed = compare(d["results"], d["test_seed"], args.level, args.a, args.b, seeds)
    print(f"task-{args.level}, seeds {','.join(map(str, rows[0][4]))}:")
    for label, *_, text in rows:
        print(f"  {args.a} − {args.b}, {label}: {text}")
    for arm, s in speed.items():
        print(f"  {arm}: rollout s / batch {s:.1f} (mean over those seeds)")


if __name__ == "__main__":
    main()
