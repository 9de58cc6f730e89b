"""Mutation check of the algorithm's formulas: does some test fail when one number or operator changes?

Each mutant is a literal one-line substitution (file, exact old text, new text) in the core code: advantages, the
all-wrong trigger, the replacement cap ⌊λG⌋, the loss mask, the clipped surrogate, the k3 KL, the loss
normalisation, the entropy filter max(1, ⌊τn⌋), the hint count ⌊ηN⌋ and placement, the sampler's commit order and
per-step budget, attention, the SFT loss's 1/p weight, rewards, the lr schedule and horizon, seeds, eval's metrics
and intervals, and experiments/claim.py's statistics (t quantiles, paired intervals) and stale evaluation rows. It
is applied to a scratch copy of the repo (the tracked and untracked-but-not-ignored files, with ../shared linked
beside it, where data.py looks), and only the tests of the mutated file's own test file run (narrowed with -k for
speed; a mutant that survives the narrow run is run again against the whole file). A mutant is killed when a test
fails. Every old text must occur exactly once in its file, else the script stops before running anything: the list
stays honest when the code changes. A mutant that survives must carry a `note` saying why (e.g. an equivalent
mutant); an unexplained survivor makes the exit status 1.

Not a test module (pytest collects test_*.py only) and not run by CI: it runs each selection once unmutated (a
baseline that must pass), then ~70 pytest processes, ~10-20 min at one thread on a busy 2-core box.
Usage:  OMP_NUM_THREADS=1 nice -n 10 python tests/mutate.py [--only 3,17] [--out tests/mutate.md] [--list]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    area: str
    file: str
    old: str          # must occur exactly once in file
    new: str
    tests: str        # the mutated file's own test file(s), space separated
    k: str = ""       # pytest -k expression narrowing the run (survivors are re-run without it)
    note: str = ""    # why a surviving mutant is acceptable (required when it survives)


TASK = "tests/test_task.py"
IG, INP, SMP, MOD, SFT, REW, LAU, EV, CL = ("tests/test_igpo.py", "tests/test_inpaint.py", "tests/test_sample.py",
                                            "tests/test_model.py", "tests/test_sft.py", "tests/test_reward.py",
                                            "tests/test_launch.py", "tests/test_eval.py", "tests/test_claim.py")
NOT_SLOW_IG = "not smoke"  # the 2-process torchrun run takes a minute; a survivor still meets it in the whole file
SFT_LOSS = "loss or prompt_never"
EV_FAST = "not torchrun"
CL_STATS = "quantile or by_hand"

MUTANTS = [
    # ---------------------------------------------------------------------------------------------- igpo.py
    Mutant("advantages: no std division", "igpo.py", "    return (r - r.mean(1, keepdim=True)).view(-1)",
           "    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)", IG, NOT_SLOW_IG),
    Mutant("advantages: mean within the group", "igpo.py", "r.mean(1, keepdim=True)", "r.mean(0, keepdim=True)", IG,
           NOT_SLOW_IG),
    Mutant("all-wrong: every reward 0", "igpo.py", "(correct.view(-1, G) == 0).all(1)",
           "(correct.view(-1, G) == 0).any(1)", IG, NOT_SLOW_IG),
    Mutant("all-wrong: correctness, not format", "igpo.py", "all_wrong(b.correct, G).nonzero()",
           "all_wrong(b.reward, G).nonzero()", IG, NOT_SLOW_IG),
    Mutant("replacement cap ⌊λG⌋", "igpo.py", "math.floor(lam * len(new_correct))",
           "math.ceil(lam * len(new_correct))", IG, NOT_SLOW_IG),
    Mutant("replacement cap min(#correct, ⌊λG⌋)", "igpo.py", "ok[:min(len(ok), math.floor", "ok[:max(len(ok), math.floor",
           IG, NOT_SLOW_IG),
    Mutant("replacements are verified correct", "igpo.py", "ok = (new_correct > 0).nonzero()",
           "ok = (new_correct >= 0).nonzero()", IG, NOT_SLOW_IG),
    Mutant("loss mask: up to and including the first EOS", "igpo.py", "return (is_eos.cumsum(1) - is_eos) == 0",
           "return is_eos.cumsum(1) == 0", IG, NOT_SLOW_IG),
    Mutant("reward text stops at the first EOS", "igpo.py", "sample.until_stop(c, {tok.eos_token_id})", "c", IG,
           NOT_SLOW_IG),
    Mutant("clipped surrogate: min", "igpo.py", "torch.min(rho * a, rho.clamp(1 - eps, 1 + eps) * a)",
           "torch.max(rho * a, rho.clamp(1 - eps, 1 + eps) * a)", IG, NOT_SLOW_IG),
    Mutant("clip range [1 - ε, 1 + ε]", "igpo.py", "rho.clamp(1 - eps, 1 + eps)", "rho.clamp(1 - eps, 1 + 2 * eps)",
           IG, NOT_SLOW_IG),
    Mutant("update passes cfg.eps (issue 19 survivor 1)", "igpo.py", "keep[sl], denom, cfg.eps, cfg.beta",
           "keep[sl], denom, 0.3, cfg.beta", IG, NOT_SLOW_IG),
    Mutant("clip fraction counts the active clip", "igpo.py", "((rho < 1 - eps) & (a < 0))",
           "((rho < 1 - eps) & (a > 0))", IG, NOT_SLOW_IG),
    Mutant("sequence_all ratio: mean over L", "igpo.py", "log_ratio = log_ratio.mean(1, keepdim=True).expand_as(logp)",
           "log_ratio = log_ratio.sum(1, keepdim=True).expand_as(logp)", IG, NOT_SLOW_IG),
    Mutant("sequence ratio: kept tokens only", "igpo.py", "((log_ratio * keep).sum(1, keepdim=True) / n_i)",
           "(log_ratio.sum(1, keepdim=True) / n_i)", IG, NOT_SLOW_IG),
    Mutant("k3 KL: d = log π_ref - log π", "igpo.py", "d = ref_logp - logp", "d = logp - ref_logp", IG, NOT_SLOW_IG),
    Mutant("k3 KL: e^d - d - 1", "igpo.py", "kl = d.exp() - d - 1", "kl = d * d / 2", IG, NOT_SLOW_IG),
    Mutant("KL weight β", "igpo.py", "per_token = per_token + beta * kl", "per_token = per_token + kl", IG,
           NOT_SLOW_IG),
    Mutant("token mean over kept tokens", "igpo.py", "launch.all_sum(keep.sum().float()).clamp(min=1)",
           "launch.all_sum(b.lmask.sum().float()).clamp(min=1)", IG, NOT_SLOW_IG),
    Mutant("group mean over the group's kept tokens", "igpo.py", "per_group = keep.view(-1, cfg.G, keep.shape[1])",
           "per_group = b.lmask.view(-1, cfg.G, keep.shape[1])", IG, NOT_SLOW_IG),
    Mutant("filter candidates: hints in the loss", "igpo.py", "inpaint.entropy_filter(b.ent[j], b.hint & b.lmask, cfg.tau)",
           "inpaint.entropy_filter(b.ent[j], b.hint, cfg.tau)", IG, NOT_SLOW_IG),
    Mutant("lr horizon: lr_at decays over --lr_epochs' horizon, not --steps", "igpo.py",
           "launch.lr_at(step, horizon, cfg.lr", "launch.lr_at(step, cfg.steps, cfg.lr", LAU, "horizon"),
    Mutant("rollout seeds: global row index", "igpo.py", '"rollout", batch_idx, first * G + r)',
           '"rollout", batch_idx, r)', IG, NOT_SLOW_IG),
    # ------------------------------------------------------------------------------------------- inpaint.py
    Mutant("hint count ⌊ηN⌋", "inpaint.py", "k = math.floor(eta * len(spans))", "k = math.ceil(eta * len(spans))",
           INP),
    Mutant("hint count: P's, not O's N - ⌊(1-η)N⌋", "inpaint.py", "k = math.floor(eta * len(spans))",
           "k = len(spans) - math.floor((1 - eta) * len(spans))", INP),
    Mutant("η ~ U[η_low, η_high]", "inpaint.py", "* (eta_high - eta_low) + eta_low", "* eta_high + eta_low", INP),
    Mutant("η sorted", "inpaint.py", "return etas.sort().values", "return etas", INP),
    Mutant("hint placement: trace index", "inpaint.py", "hints[g, a:b] = trace[s:s + b - a]",
           "hints[g, a:b] = trace[a:b]", INP),
    Mutant("stretch: gaps capped at max_gap", "inpaint.py", "min(int((s - spans[i - 1][1]) * factor), max_gap)",
           "int((s - spans[i - 1][1]) * factor)", INP),
    Mutant("stretch factor ≤ 1.5", "inpaint.py", "min(1.5, limit / max(len(trace), 1))",
           "min(2.0, limit / max(len(trace), 1))", INP),
    Mutant("reserve: last positions never hinted", "inpaint.py", "limit = max(0, gen_length - reserve)",
           "limit = gen_length", INP),
    Mutant("answer excluded from hints", "inpaint.py", "trace = trace[:answer_start]",
           "trace = trace[:answer_start + 1]", INP),
    Mutant("trace cut at the first \\boxed (issue 19 survivor 2)", "inpaint.py", 'cut = text.find("\\\\boxed")',
           'cut = text.rfind("\\\\boxed")', INP),
    Mutant("entropy filter: ⌊τn⌋", "inpaint.py", "k = max(1, math.floor(tau * idx.numel()))",
           "k = max(1, math.ceil(tau * idx.numel()))", INP),
    Mutant("entropy filter: at least one", "inpaint.py", "k = max(1, math.floor(tau * idx.numel()))",
           "k = max(0, math.floor(tau * idx.numel()))", INP),
    Mutant("entropy filter: top by entropy", "inpaint.py", "descending=True", "descending=False", INP),
    # -------------------------------------------------------------------------------------------- sample.py
    Mutant("per-step budget: remainder to the first steps", "sample.py",
           "counts += torch.arange(steps, device=n.device)[None, :] < (n % steps)",
           "counts += torch.arange(steps, device=n.device)[None, :] >= steps - (n % steps)", SMP),
    Mutant("hints not in the transfer budget", "sample.py",
           "counts = num_transfer_tokens(x[:, s:e] == mask_id, steps_per_block)",
           "counts = num_transfer_tokens(torch.ones_like(x[:, s:e], dtype=torch.bool), steps_per_block)", SMP),
    Mutant("commit order: most confident first", "sample.py", "- lf.logsumexp(dim=-1)).exp_()",
           "- lf.logsumexp(dim=-1)).exp_().neg_()", SMP),
    Mutant("temperature divides the logits", "sample.py", "logits.double().div_(temperature)",
           "logits.double().mul_(temperature)", SMP),
    # --------------------------------------------------------------------------------------------- model.py
    Mutant("attention: bidirectional", "model.py", "is_causal=False)  # bidirectional",
           "is_causal=attn_bias is None)  # bidirectional", MOD),
    Mutant("attention: key-padding mask", "model.py", "attention_mask.bool()[:, None, None, :]",
           "attention_mask.bool()[:, None, :, None]", MOD),
    Mutant("attention: 1/√d scale", "model.py", "attn_mask=attn_bias, is_causal=False)",
           "attn_mask=attn_bias, is_causal=False, scale=1.0)", MOD),
    Mutant("RoPE: rotate-half sign", "model.py", "torch.cat([-t2, t1], dim=-1)", "torch.cat([t2, -t1], dim=-1)", MOD),
    # ----------------------------------------------------------------------------------------------- sft.py
    Mutant("SFT: 1/p weight", "sft.py", "w = (1.0 / p)[:, None]", "w = (1.0 / t)[:, None]", SFT, SFT_LOSS),
    Mutant("SFT: p = (1 - ε) t + ε", "sft.py", "p = (1 - eps) * t + eps", "p = t + eps", SFT, SFT_LOSS),
    Mutant("SFT: divided by the response length", "sft.py", "resp_len = is_resp.sum(1, keepdim=True)",
           "resp_len = mask.sum(1, keepdim=True)", SFT, SFT_LOSS),
    Mutant("SFT: prompt never masked", "sft.py", "mask = mask & is_resp ", "mask = mask ", SFT, SFT_LOSS),
    # -------------------------------------------------------------------------------------------- reward.py
    Mutant("official rule: the first box", "reward.py", "pred = first_boxed(completion) if",
           "pred = last_boxed(completion) if", REW),
    Mutant("official rule: no box scores 0", "reward.py", "pred = first_boxed(completion) if isinstance(completion, str) else None",
           "pred = extract_answer(completion)", REW),
    Mutant("lenient rule: the last box", "reward.py", "for end in reversed(ends[-8:]):", "for end in ends[-8:]:", REW),
    Mutant("format: tags that occur exactly once", "reward.py", "completion.count(t) == 1", "completion.count(t) >= 1",
           REW),
    Mutant("format: box credit only with a box", "reward.py",
           'score + (boxed_weight if "\\\\boxed{" in completion else 0.0)', "score + boxed_weight", REW),
    Mutant("correctness weight", "reward.py", "return weight if is_equiv(pred, gold) else 0.0",
           "return 3.0 if is_equiv(pred, gold) else 0.0", REW),
    # -------------------------------------------------------------------------------------------- launch.py
    Mutant("lr warmup: (step + 1) / warmup", "launch.py", "(step + 1) / max(1, warmup)", "step / max(1, warmup)", LAU),
    Mutant("lr decay starts after warmup", "launch.py", "max(0, step - warmup) / max(1, total - warmup)",
           "max(0, step) / max(1, total)", LAU),
    Mutant("lr 0 past the horizon", "launch.py", "frac = min(1.0, max(0, step - warmup) / max(1, total - warmup))",
           "frac = max(0, step - warmup) / max(1, total - warmup)", LAU),
    Mutant("seeds: one stream per name", "launch.py", "repr((int(base), stream, *keys))", "repr((int(base), *keys))",
           LAU),
    Mutant("data order: a permutation per epoch", "launch.py", "_permutation(n, base, pos // n)[pos % n]",
           "_permutation(n, base, 0)[pos % n]", LAU),
    # ---------------------------------------------------------------------------------------------- eval.py
    Mutant("Wilson interval, not Wald (issue 19 survivor 3)", "eval.py",
           "c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d",
           "c, h = p, z * math.sqrt(p * (1 - p) / n)", EV, EV_FAST),
    Mutant("95%: z = 1.96", "eval.py", "def wilson(p, n, z=1.96):", "def wilson(p, n, z=1.645):", EV, EV_FAST),
    Mutant("avg@k interval over problems (issue 19 survivor 4)", "eval.py", "ci95=wilson(acc, len(per_problem))",
           "ci95=wilson(acc, len(rows))", EV, EV_FAST),
    Mutant("avg@k: mean over the k samples (issue 19 survivor 5)", "eval.py",
           'sum(r["correct"] for r in rows[j:j + k]) / k', 'float(any(r["correct"] for r in rows[j:j + k]))', EV,
           EV_FAST),
    # ------------------------------------------------------------------------------------ experiments/claim.py
    Mutant("t quantile: two-sided 95%, not one-sided", "experiments/claim.py", "< 0.95 else", "< 0.90 else", CL,
           CL_STATS),
    Mutant("t CDF, even df: terms up to cos^(df-2)", "experiments/claim.py", "for k in range(2, df, 2):",
           "for k in range(2, df + 2, 2):", CL, CL_STATS),
    Mutant("t CDF, odd df: terms up to cos^(df-2)", "experiments/claim.py", "for k in range(3, df + 1, 2):",
           "for k in range(3, df, 2):", CL, CL_STATS),
    Mutant("t CDF, odd df: 2/pi (theta + ...)", "experiments/claim.py", "2 / math.pi * (th +", "1 / math.pi * (th +",
           CL, CL_STATS),
    Mutant("paired interval: df = seeds - 1", "experiments/claim.py", "t975(len(d) - 1)", "t975(len(d))", CL,
           CL_STATS),
    Mutant("paired interval: standard error std / sqrt(n)", "experiments/claim.py",
           "statistics.stdev(d) / math.sqrt(len(d))", "statistics.stdev(d) / math.sqrt(len(d) - 1)", CL, CL_STATS),
    Mutant("mean ± std: sample std", "experiments/claim.py", "statistics.stdev(xs)", "statistics.pstdev(xs)", CL,
           CL_STATS),
    Mutant("run stats: halves of the rollout batches", "experiments/claim.py", "half = max(1, len(batches) // 2)",
           "half = max(1, (len(batches) + 1) // 2)", CL, CL_STATS),
    Mutant("run stats: rollout time includes inpainting", "experiments/claim.py",
           'r["t_rollout"] + r["t_inpaint"]', 'r["t_rollout"]', CL, CL_STATS),
    Mutant("stale rows: a retrain drops the .rank*.part rows too", "experiments/claim.py",
           'glob.glob(glob.escape(path)) + glob.glob(glob.escape(path) + ".rank*.part")',
           "glob.glob(glob.escape(path))", CL, "another_policy"),
    Mutant("stale rows: resumed only from the same policy", "experiments/claim.py",
           'open(path + ".tag").read() == tag', "True", CL, "another_policy"),
    Mutant("--keep reuses only runs of the same code", "experiments/claim.py",
           'record.get("code") == args.code or args.keep_stale', "True", CL, "bit_for_bit"),
    Mutant("--keep_stale reuses runs of other code", "experiments/claim.py",
           'record.get("code") == args.code or args.keep_stale', 'record.get("code") == args.code', CL,
           "bit_for_bit"),
    Mutant("the code hash covers every top-level module", "experiments/claim.py",
           'glob.glob(os.path.join(ROOT, "*.py"))', 'glob.glob(os.path.join(ROOT, "igpo.py"))', CL, "code_hash"),
    Mutant("no rescue anywhere: the empty results live on the training device (issue 27, point 9)", "igpo.py",
           "no = torch.zeros(0, L, dtype=torch.long, device=prompt_ids.device)",
           "no = torch.zeros(0, L, dtype=torch.long)", "tests/test_device_mixing.py", "igpo_step"),
    Mutant("task soundness: a line's operand is the question's", "data.py", "or int(n) != n_q or", "or", TASK,
           "sound"),
    Mutant("task soundness: a line starts from the previous value", "data.py", "if int(a) != value or op", "if op",
           TASK, "sound"),
    Mutant("task soundness: only the reasoning block counts", "data.py", 'text.split("</reasoning>")[0]', "text",
           TASK, "sound"),
    Mutant("task held out: SFT avoids every held-out chain", "data.py", "while chain is None or chain in held:",
           "while chain is None:", TASK, "disjoint"),
    Mutant("task answer: every step's result", "data.py", 'answer = "".join(line.rsplit("=", 1)[1] for line in lines)',
           'answer = lines[-1].rsplit("=", 1)[1]', TASK, "traces or guessed"),
    Mutant("sound_acc: replaced rows are not on-policy", "igpo.py", "(ok & (b.correct_policy > 0) & ~b.replaced)",
           "(ok & (b.correct > 0))", IG, "sound_rates"),
]


def check(mutants):
    """Every old text occurs exactly once in its file and differs from the new one; else stop, naming them all."""
    bad = []
    for i, m in enumerate(mutants, 1):
        n = (ROOT / m.file).read_text(encoding="utf-8").count(m.old)
        if n != 1 or m.old == m.new:
            bad.append(f"mutant {i} ({m.area}): {m.file} holds its old text {n} times (need exactly 1): {m.old!r}")
    if bad:
        raise SystemExit("stale mutants, fix the list in tests/mutate.py:\n" + "\n".join(bad))


def scratch_copy():
    """A temp dir holding repo/ (tracked + untracked, not ignored, files of ROOT) and shared -> ROOT/../shared."""
    top = Path(tempfile.mkdtemp(prefix="mutate-"))
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        src, dst = ROOT / rel, top / "repo" / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (top / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    return top


def run_tests(repo, tests, k, timeout):
    """(status, first failing test, seconds): status passed | failed | error | timeout."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests.split()]
    if k:
        cmd += ["-k", k]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")  # no stale .pyc of a mutated file
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.time() - t0
    out = p.stdout + p.stderr
    if p.returncode == 5:
        raise SystemExit(f"no test selected by {cmd}: fix the mutant's tests/-k")
    first = re.search(r"^(?:FAILED|ERROR) \S+?::(\w+)", out, re.M)  # the test function, without its parameters
    name = first.group(1) if first else ""
    status = {0: "passed", 1: "failed"}.get(p.returncode, "error")
    if status == "error" and not name:
        name = (out.strip().splitlines() or [""])[-1][:80]
    return status, name, time.time() - t0


def md(text):
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma list of mutant numbers (1-based) to run; default all")
    ap.add_argument("--out", default="", help="write the markdown table here (e.g. tests/mutate.md)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run (a timeout counts as killed)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = ap.parse_args()
    check(MUTANTS)
    chosen = [int(x) for x in args.only.split(",") if x] or list(range(1, len(MUTANTS) + 1))
    if args.list:
        for i in chosen:
            m = MUTANTS[i - 1]
            print(f"{i:3d} {m.file:20s} {m.area}: {m.old!r} -> {m.new!r}")
        return 0
    top = scratch_copy()
    repo = top / "repo"
    try:
        selections = sorted({(MUTANTS[i - 1].tests, MUTANTS[i - 1].k) for i in chosen})
        for tests, k in selections:  # the unmutated code must pass every selection, or a "kill" means nothing
            status, name, sec = run_tests(repo, tests, k, args.timeout)
            print(f"baseline {tests} -k {k!r}: {status} {name} ({sec:.0f} s)", flush=True)
            if status != "passed":
                raise SystemExit(f"baseline fails ({tests} -k {k!r}: {name}): fix the tests before mutating")
        rows, t_start = [], time.time()
        for i in chosen:
            m = MUTANTS[i - 1]
            path = repo / m.file
            original = path.read_text(encoding="utf-8")
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                status, name, sec = run_tests(repo, m.tests, m.k, args.timeout)
                ran = m.tests + (f" -k '{m.k}'" if m.k else "")
                if status == "passed" and m.k:  # survived the narrow run: the whole file gets its chance
                    status, name, more = run_tests(repo, m.tests, "", args.timeout)
                    sec += more
                    ran += f", then all of {m.tests}"
            finally:
                path.write_text(original, encoding="utf-8")
            killed = status != "passed"
            result = ("killed" + {"failed": "", "error": " (error)", "timeout": " (timeout)"}[status]
                      if killed else ("survived (explained)" if m.note else "SURVIVED"))
            rows.append((i, m, ran, result, name, sec))
            print(f"{i:3d} {result:21s} {sec:5.0f} s  {m.area}  {name}", flush=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    n_killed = sum(r[3].startswith("killed") for r in rows)
    explained = [r for r in rows if r[3] == "survived (explained)"]
    unexplained = [r for r in rows if r[3] == "SURVIVED"]
    score = (f"**{n_killed} of {len(rows)} mutants killed** ({n_killed} of {len(rows) - len(explained)} "
             f"non-equivalent); {len(explained)} survived with an explanation, {len(unexplained)} unexplained. "
             f"Total {time.time() - t_start:.0f} s of pytest at 1 thread.")
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else "")
    lines = ["# Mutation check of the core formulas", "",
             "Made by `OMP_NUM_THREADS=1 nice -n 10 python tests/mutate.py --out tests/mutate.md` at " + commit +
             " (tests/mutate.py: each mutant is a one-line substitution, run against its own file's tests; a "
             "survivor of the -k run is run again against the whole file).", "",
             score, "",
             "| # | what the tests must pin | mutation | tests run | result | first failing test / note |",
             "|---|---|---|---|---|---|"]
    for i, m, ran, result, name, sec in rows:
        why = m.note if not result.startswith("killed") else name
        lines.append(f"| {i} | {m.area} | {m.file}: {md(m.old)} → {md(m.new)} | {ran} | {result} | "
                     f"{why.replace('|', '/')} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
