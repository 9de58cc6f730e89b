"""Draw igpo.py runs side by side: on-policy accuracy and sound accuracy, all-wrong share before and after the
rescue, reward, KL, clip fraction and grad norm against the optimizer step, one line per run (or per group of runs:
the mean).

Run:  python experiments/plot_runs.py runs/igpo-task runs/my-ablation --out compare.png
      python experiments/plot_runs.py "igpo=runs/claim-runs/task-ext1/igpo-seed*" \
                                      "grpo=runs/claim-runs/task-ext1/grpo-seed*" --out ext1.png
An argument is a run directory (it holds metrics.jsonl), a glob of them, or NAME=GLOB: the runs a glob matches are
drawn as their mean per step (a band from min to max). Needs matplotlib (experiment-only: pip install matplotlib).
--bins N also prints each group's learning curve as a table: mean on-policy accuracy and sound accuracy over its
runs' rollout batches in each span of N optimizer steps (the measured curve a budget is read from).
"""
import argparse
import glob
import json
import os
import statistics

PANELS = [("acc", "on-policy accuracy (correct rollouts)"),
          ("sound_acc", "on-policy sound accuracy (right, every line right)"),
          ("all_wrong_before", "all-wrong share before rescue"),
          ("all_wrong_after", "all-wrong share after rescue"), ("reward", "mean reward"),
          ("kl", "k3 KL to the reference (kept tokens)"), ("clip_frac", "clipped fraction (kept tokens)"),
          ("grad_norm", "grad norm before clipping")]


def series(run_dir, key):
    """{step: value} of one metrics key (rollout-batch keys appear every mu steps, update keys every step)."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {r["step"]: r[key] for r in rows if key in r}


def groups(args):
    """[(label, [run dirs])] from the command line."""
    out = []
    for arg in args:
        name, _, pattern = arg.rpartition("=") if "=" in arg else ("", "", arg)
        dirs = sorted(d for d in glob.glob(pattern) if os.path.exists(os.path.join(d, "metrics.jsonl")))
        if not dirs:
            raise SystemExit(f"{arg}: no run directory with a metrics.jsonl")
        out.append((name or (dirs[0] if len(dirs) == 1 else pattern), dirs))
    return out


def curve_table(grouped, width):
    """Markdown: one row per group and step span, mean over the group's rollout batches in the span (all runs)."""
    out = ["| runs | steps | on-policy acc | on-policy sound acc | rollout batches |", "|---|---|---|---|---|"]
    for label, dirs in grouped:
        acc, sound = [series(d, "acc") for d in dirs], [series(d, "sound_acc") for d in dirs]
        last = max(max(s, default=0) for s in acc)
        for lo in range(1, last + 1, width):
            span = range(lo, lo + width)
            a = [s[t] for s in acc for t in span if t in s]
            b = [s[t] for s in sound for t in span if t in s]
            if a:
                out.append(f"| {label} | {lo}-{lo + width - 1} | {statistics.mean(a):.3f} | "
                           f"{statistics.mean(b) if b else float('nan'):.3f} | {len(a)} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories, globs, or NAME=GLOB")
    p.add_argument("--out", default="runs/compare.png", help="the PNG to write")
    p.add_argument("--bins", type=int, default=0, help="also print mean acc / sound acc per span of this many steps")
    a = p.parse_args()
    grouped = groups(a.runs)
    if a.bins:
        print(curve_table(grouped, a.bins))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for label, dirs in grouped:
        for ax, (key, title) in zip(axes.flat, PANELS):
            per_run = [series(d, key) for d in dirs]
            steps = sorted(set.intersection(*(set(s) for s in per_run)))
            if not steps:
                continue
            ys = [[s[t] for s in per_run] for t in steps]
            line, = ax.plot(steps, [statistics.mean(y) for y in ys], marker="o", markersize=3,
                            label=f"{label} ({len(dirs)})")  # markers: a run of one rollout batch is one point
            if len(dirs) > 1:
                ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("optimizer step")
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    fig.savefig(a.out, dpi=90)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
