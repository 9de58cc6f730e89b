"""Paired difference of two evaluations of the same problems (eval.py / igpo.py per-problem JSONL rows): B - A in
pass@1 and, on the task, sound pass@1 (right with every reasoning line right), with a 95% normal interval over
problems, the counts gained and lost, the share of right answers that are sound, and what is wrong in the right
but unsound ones (slips: a line whose own arithmetic is wrong, a miscopied operation, a miscopied previous value).

Run:  python experiments/paired_eval.py experiments/results/main-job/eval-step-0.jsonl \
          experiments/results/main-job/eval-step-160.jsonl
"""
import collections
import json
import math
import statistics
import sys

import errors


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


def slips(r):
    """The kinds of wrong line in a task row (its prompt holds the question): "arithmetic" (a written line a op n=c
    with c != a op n), "operation" (op or n not the question's k-th), "previous value" (a not the previous line's
    written result, or the start), "line count" (not one line per operation; then nothing else is checked)."""
    faults, extra, _ = errors.line_faults(r["prompt"], r["completion"])
    names = {"read": "operation", "carry": "previous value", "arith": "arithmetic"}
    return {"line count"} if extra else {names[f] for line in faults for f in line}


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
        if right and "sound" in right[0]:
            kinds = sorted(collections.Counter(k for x in right if not x["sound"] for k in slips(x)).items())
            print(f"  right but unsound: {sum(not x['sound'] for x in right)}; with a line of each kind: {dict(kinds)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
