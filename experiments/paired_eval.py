"""Paired difference of two evaluations of the same problems (eval.py / igpo.py per-problem JSONL rows): B - A in
pass@1 and, on the task, sound pass@1 (right with every reasoning line right), with a 95% normal interval over
problems, the counts gained and lost, and the share of right answers that are sound.

Run:  python experiments/paired_eval.py experiments/results/main-job/eval-step-0.jsonl \
          experiments/results/main-job/eval-step-160.jsonl
"""
import json
import math
import statistics
import sys


METRICS = {"pass@1": lambda r: float(bool(r["correct"])),  # per-problem row -> score
           "sound pass@1": lambda r: float(bool(r["correct"] and r.get("sound")))}


def rows(path):
    return {r["id"]: r for r in map(json.loads, open(path))}


def paired(a, b, f):
    """B - A per problem of metric f over the same problems ({id: row} each): (mean, 95% normal half-width, the
    per-problem differences)."""
    if set(a) != set(b):
        raise ValueError(f"paired: the two evaluations hold different problems ({len(set(a) ^ set(b))} differ)")
    d = [f(b[i]) - f(a[i]) for i in sorted(a)]
    return statistics.mean(d), 1.96 * statistics.stdev(d) / math.sqrt(len(d)), d


def main(a_path, b_path):
    a, b = rows(a_path), rows(b_path)
    for name, f in METRICS.items():
        mean, half, d = paired(a, b, f)
        before, after = statistics.mean(map(f, a.values())), statistics.mean(map(f, b.values()))
        print(f"{name}: {before:.3f} -> {after:.3f}, paired {mean:+.3f} ± {half:.3f} (95%, n = {len(d)};"
              f" {sum(x > 0 for x in d)} gained, {sum(x < 0 for x in d)} lost)")
    for path, r in ((a_path, a), (b_path, b)):
        right = [x for x in r.values() if x["correct"]]
        print(f"sound / right in {path}: {sum(bool(x.get('sound')) for x in right) / max(1, len(right)):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
