"""Where a task completion first goes wrong: a measurement over eval.py's per-problem rows (eval-*.jsonl).

Each completion is checked line by line against its question, as data.task_sound does, but the first failure is
named instead of a yes/no:
  sound      every line right (then: box = the lines' results or not)
  read       line k's operation or number is not the question's k-th (a misread operand or sign)
  carry      line k starts from a value other than line k-1's result
  arith      line k's result is not a op n for its own a, op, n
  short/long fewer / more lines than operations (the lines present all right)
and, for every completion, what its box holds: its own lines' results in order ("box = lines"), those with only the
last digit different ("last digit"), or other. Line k is compared with operation k, so a dropped middle line shows
as a misread of the line after it.

    python experiments/errors.py runs/claim-runs/task-5 runs/claim-runs/task-6 runs/claim-runs/task-7 \
        --out experiments/results/claim/errors.md

Each argument is a claim.py level folder: the rows of its start/ and of every finished <arm>-seed<k>/ are read, on
the standard test (eval-task.jsonl; at the main level, whose level test it is, eval-level@0.jsonl) and on the
level's own test (eval-level@0.jsonl, test seed 0); arms are pooled over seeds, rates are per completion.
"""
import argparse
import collections
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402

KINDS = ("sound", "read", "carry", "arith", "short", "long")


def operations(question):
    """The question's operations in order, [(op, n)] (data.task_sound reads them the same way)."""
    return [(data._OPS[verb], int(n)) for verb, n in re.findall(r"(gets|finds|loses|gives) (\d+)", question)]


def line_faults(question, text):
    """The faults of each written line matched with an operation, by position ({"read", "carry", "arith"}, empty
    when right; carry compares with the previous line's written result), the number of lines minus the number of
    operations, and the box: "lines" (the lines' results in order), "last digit" (only its last digit differs) or
    "other"."""
    value = int(re.search(r"has (\d+)", question)[1])
    ops = operations(question)
    lines = [(int(a), op, int(n), int(c)) for a, op, n, c in
             re.findall(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)", text.split("</reasoning>")[0])]
    box = re.findall(r"\\boxed\{([^}]*)\}", text)
    faults = []
    for (a, op, n, c), (op_q, n_q) in zip(lines, ops):
        faults.append({k for k, bad in (("read", (op, n) != (op_q, n_q)), ("carry", a != value),
                                        ("arith", c != (a + n if op == "+" else a - n))) if bad})
        value = c
    results, box = "".join(str(c) for *_, c in lines), box[-1].strip() if box else None
    last = box is not None and len(box) == len(results) > 0 and box[:-1] == results[:-1]
    return faults, len(lines) - len(ops), "lines" if box == results else "last digit" if last else "other"


def first_error(question, text):
    """(kind, line index or None, the box's kind): the first failure of a completion (see the docstring)."""
    faults, extra, box = line_faults(question, text)
    for k, f in enumerate(faults):
        for kind in ("read", "carry", "arith"):  # one line with several faults: named by the first of these
            if kind in f:
                return kind, k, box
    return ("sound" if extra == 0 else "short" if extra < 0 else "long"), None, box


def tally(files):
    """Counts of first-error kinds, box kinds, right answers and first misread lines over the rows of files (a row's
    prompt holds its question; nothing else in it has a number after "has" or a verb)."""
    t = collections.Counter()
    for f in files:
        for row in map(json.loads, open(f)):
            kind, k, box = first_error(row["prompt"], row["completion"])
            assert (kind == "sound") == bool(row["sound"]), (f, row["id"])  # the same check as data.task_sound
            t[kind] += 1
            t[box] += 1
            t["right"] += bool(row["correct"])
            t["n"] += 1
            if kind == "read":
                t[f"read@{k + 1}"] += 1
    return t


def table(levels, standard):
    """Markdown rows, a policy each (arms pooled over seeds), on the standard test or on each level's own test."""
    rows, seen_start = [], False
    for level in levels:
        groups, name = collections.defaultdict(list), os.path.basename(os.path.normpath(level))
        level_test = "eval-level@0.jsonl"  # claim.py's names: the level's test (test seed 0), the standard test
        file = level_test if not standard or name == f"task-{data.TASK_MAIN}" else "eval-task.jsonl"
        for f in sorted(glob.glob(os.path.join(glob.escape(level), "*", file))):
            run = os.path.basename(os.path.dirname(f))
            groups[f"{name} {run.split('-seed')[0]}"].append(f)
        for policy, files in groups.items():
            if policy.endswith(" start") and standard:
                if seen_start:
                    continue  # every level's start is the same policy on the same standard test
                policy, seen_start = "start", True
            t = tally(files)
            reads = " ".join(f"{t[f'read@{k}'] / max(t['read'], 1):.2f}" for k in range(1, 8))
            rates = [t[k] / t["n"] for k in ("right", *KINDS, "lines", "last digit")]
            rows.append(f"| {policy} | {len(files)} | " + " | ".join(f"{x:.3f}" for x in rates) + f" | {reads} |")
    head = ["| policy (level trained at, arm) | runs | right | " + " | ".join(KINDS) + " | box = lines | box: last "
            "digit wrong | first misread at line 1..7 (share of misreads) |", "|" + "---|" * (len(KINDS) + 6)]
    return "\n".join(head + rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("levels", nargs="+", help="claim.py level folders (runs/claim-runs/task-<n>)")
    p.add_argument("--out", default=None, help="also write the tables here (markdown)")
    args = p.parse_args()
    text = "\n\n".join(f"## {title}\n\n{table(args.levels, standard)}" for title, standard in (
        (f"The standard test (task-{data.TASK_MAIN}, 500 problems, greedy)", True),
        ("Each level's own test (500 problems, greedy)", False)))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Where task completions first go wrong\n\n`python experiments/errors.py "
                    f"{' '.join(sys.argv[1:])}` (rates per completion; see the script's docstring)\n\n{text}\n")


if __name__ == "__main__":
    main()
