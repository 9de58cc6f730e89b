"""The KL spikes of the claim's runs: how often, in which arm, how large, and what the run did next.

igpo.py logs, per optimizer step, the mean over kept tokens of the k3 estimator of KL(policy || reference),
k3 = exp(d) - d - 1 with d = ref_logp - logp (the official code's and d1's, unclamped; eq. 3's KL term). k3 grows
exponentially where the policy's log-probability of a sampled token falls far below the reference's, so one token can
carry a step's mean: a mean of K over n tokens means some token has k3 >= K, i.e. d >= ln K roughly. The task preset
clips the global gradient norm at 1, so such a step moves the weights by one clipped step along that token's KL
gradient. This reads claim.json (every run's metrics rows) and writes a per-arm table and one line per spike.

Run:  python experiments/kl_spikes.py [--claim experiments/results/claim/claim.json] [--spike 100]
Writes the tables to stdout, or to --out (the committed ones: experiments/results/claim/kl.md).
"""
import argparse
import collections
import json
import math
import statistics


def spikes(run, threshold):
    """[(step, kl, grad_norm, kl of the next step, on-policy acc of the rollout batch the step trained on and of
    the next two batches)] for each step of the run whose mean KL exceeds threshold."""
    rows = run["rows"]
    acc = [(r["step"], r["acc"]) for r in rows if "acc" in r]
    out = []
    for i, r in enumerate(rows):
        if r.get("kl", 0) > threshold:
            at = [a for s, a in acc if s <= r["step"]][-1:]
            after = [a for s, a in acc if s > r["step"]][:2]
            out.append((r["step"], r["kl"], r["grad_norm"], rows[i + 1]["kl"] if i + 1 < len(rows) else None,
                        *(at + after + [None] * 3)[:3]))
    return out


def cell(x):
    """A table cell: x to 3 decimals, a dash for None."""
    return "–" if x is None else f"{x:.3f}"


def tables(results, threshold):
    by_arm = collections.defaultdict(list)
    for run in results:
        by_arm[run["arm"]].append(run)
    lines = [f"| arm | runs | runs with a step of mean KL > {threshold:g} | steps with mean KL > 1 (per run) | "
             "median step KL (median over runs) |", "|---|---|---|---|---|"]
    for arm, runs in by_arm.items():
        lines.append(f"| {arm} | {len(runs)} | {sum(bool(spikes(r, threshold)) for r in runs)} | "
                     f"{statistics.mean(sum(x.get('kl', 0) > 1 for x in r['rows']) for r in runs):.1f} | "
                     f"{statistics.median(statistics.median(x.get('kl', 0) for x in r['rows']) for r in runs):.3f} |")
    lines += ["", "| level | arm | seed | step | mean KL | ln(KL) | grad norm (before clipping) | next step's KL | "
              "on-policy acc: the batch it trained on, the next two | level test pass@1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in results:
        for step, kl, gn, nxt, *acc in spikes(run, threshold):
            lines.append(f"| {run['level']} | {run['arm']} | {run['seed']} | {step} | {kl:.0f} | {math.log(kl):.1f} | "
                         f"{gn:.3g} | {cell(nxt) if nxt is None or nxt < 10 else f'{nxt:.0f}'} | "
                         f"{', '.join(cell(a) for a in acc)} | {run['tests']['level@0']['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description="The KL spikes of the claim's runs (module docstring).")
    p.add_argument("--claim", default="experiments/results/claim/claim.json", help="claim.py's claim.json")
    p.add_argument("--spike", type=float, default=100, help="a step whose mean KL exceeds this is a spike")
    p.add_argument("--out", default=None, help="write the tables here (markdown) instead of stdout")
    args = p.parse_args()
    res = json.load(open(args.claim))["results"]
    text = (f"# KL spikes in the claim's runs\n\n`python experiments/kl_spikes.py --claim {args.claim} --spike "
            f"{args.spike:g}` over {len(res)} runs (the module docstring says what is measured).\n\n"
            + tables(res, args.spike))
    if args.out:
        open(args.out, "w").write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
