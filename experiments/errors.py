"""Where a task completion first goes wrong: a measurement over eval.py's per-problem rows (eval-*.jsonl).

Each completion is checked line by line against its question, as data.task_sound does, but the first failure is
named instead of a yes/no:
  sound      every line right (then: box = the lines' results or not)
  read       line k's operation or number is not the question's k-th (a misread operand or sign)
  carry      line k starts from a value other than line k-1's result
  arith      line k's result is not a op n for its own a, op, n
  short/long fewer / more lines than operations (the lines present all right)
and, for every completion, whether its box is the concatenation of its own lines' results ("box = lines"). Line k
is compared with operation k, so a dropped middle line shows as a misread of the line after it.

    python experiments/errors.py runs/claim-runs/task-6 runs/claim-runs/task-7 --out experiments/results/errors.md

Each argument is a claim.py level folder: its start/ and every <arm>-seed<k>/ holding FILE (eval-task.jsonl, the
standard test, by default; at the main level, whose level test it is, eval-level@0.jsonl) are read; arms are pooled
over seeds (rates are per completion).
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


def line_faults(question, text):
    """The faults of each written line matched with an operation, by position ({"read", "carry", "arith"}, empty
    when right; carry compares with the previous line's written result), the number of lines minus the number of
    operations, and whether the box holds the lines' own results."""
    value = int(re.search(r"has (\d+)", question)[1])
    ops = [(data._OPS[verb], int(n)) for verb, n in re.findall(r"(gets|finds|loses|gives) (\d+)", question)]
    lines = [(int(a), op, int(n), int(c)) for a, op, n, c in
             re.findall(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)", text.split("</reasoning>")[0])]
    box = re.findall(r"\\boxed\{([^}]*)\}", text)
    faults = []
    for (a, op, n, c), (op_q, n_q) in zip(lines, ops):
        faults.append({k for k, bad in (("read", (op, n) != (op_q, n_q)), ("carry", a != value),
                                        ("arith", c != (a + n if op == "+" else a - n))) if bad})
        value = c
    return faults, len(lines) - len(ops), bool(box) and box[-1].strip() == "".join(str(c) for *_, c in lines)


def first_error(question, text):
    """(kind, line index or None, box = lines' results): the first failure of a completion (see the docstring)."""
    faults, extra, own = line_faults(question, text)
    for k, f in enumerate(faults):
        for kind in ("read", "carry", "arith"):  # one line with several faults: named by the first of these
            if kind in f:
                return kind, k, own
    return ("sound" if extra == 0 else "short" if extra < 0 else "long"), None, own


def tally(files):
    """Counts of first-error kinds, box = lines, right answers, and the first misread line, over the rows of files."""
    t = collections.Counter()
    for f in files:
        for row in map(json.loads, open(f)):
            question = re.search(r"user<\|end_header_id\|>\s*(.*?)<\|eot_id\|>", row["prompt"], re.S)[1]
            kind, k, own = first_error(question, row["completion"])
            assert (kind == "sound") == bool(row["sound"]), (f, row["id"])  # the same check as data.task_sound
            t[kind] += 1
            t["own"] += own
            t["right"] += bool(row["correct"])
            t["n"] += 1
            if kind == "read":
                t[f"read@{k + 1}"] += 1
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("levels", nargs="+", help="claim.py level folders (runs/claim-runs/task-<n>)")
    p.add_argument("--file", default="eval-task.jsonl", help="the rows to read in each run folder")
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = p.parse_args()
    rows, seen_start = [], False
    for level in args.levels:
        groups = collections.defaultdict(list)
        main = os.path.basename(level) == f"task-{data.TASK_MAIN}"  # its level test is the standard test
        for run_dir in sorted(glob.glob(os.path.join(level, "*", ""))):
            run = os.path.basename(os.path.dirname(run_dir))
            f = os.path.join(run_dir, args.file)
            if not os.path.exists(f) and main and args.file == "eval-task.jsonl":
                f = os.path.join(run_dir, "eval-level@0.jsonl")
            if not os.path.exists(f):
                continue
            groups["start" if run == "start" else f"{os.path.basename(level)} {run.split('-seed')[0]}"].append(f)
        for name, files in groups.items():
            if name == "start" and seen_start:
                continue  # every level's start is the same policy on the same file
            seen_start |= name == "start"
            t = tally(files)
            reads = " ".join(f"{t[f'read@{k}'] / max(t['read'], 1):.2f}" for k in range(1, 8))
            rows.append(f"| {name} | {len(files)} | {t['right'] / t['n']:.3f} | "
                        + " | ".join(f"{t[k] / t['n']:.3f}" for k in KINDS) + f" | {t['own'] / t['n']:.3f} | {reads} |")
    head = ["| policy (trained at) | runs | right | " + " | ".join(KINDS) + " | box = lines | first misread at line "
            "1..7 (share of misreads) |", "|" + "---|" * (len(KINDS) + 5)]
    text = "\n".join(head + rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"`python experiments/errors.py {' '.join(sys.argv[1:])}` ({args.file})\n\n{text}\n")


if __name__ == "__main__":
    main()
