"""How hard is the embedded task for an SFT checkpoint? The two numbers IGPO's CPU demo needs.

  all-wrong fraction: RL-split prompts whose G rollouts (data.TASK_SAMPLING: low-confidence remasking at the RL
                      temperature) are all wrong; IGPO only acts on these (target 20-70%).
  greedy accuracy:    greedy (T = 0) on the val split (--split test only for a final choice), overall and by chain
                      length; RL needs headroom (target: 40-70% on 2-3 steps).
Also: pass rate of single rollouts, and the same numbers with reference-trace hints (inpaint.build_hints, as IGPO
would place them) on the all-wrong groups, to show that hints can help.

Run:  python bench/task_difficulty.py [--ckpt checkpoints/task-sft] [--split val] [--steps 28] [--json out.json]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import inpaint  # noqa: E402
import model as M  # noqa: E402
import reward  # noqa: E402
import sample  # noqa: E402


def rollouts(m, tok, items, G, temperature, seed, hints=None, batch=256, **kw):
    """Decoded completions, G per item (grouped), and their correctness (bool list)."""
    kw = {**data.TASK_SAMPLING, **kw, "temperature": temperature}
    convs = [data.task_messages(it["question"]) for it in items for _ in range(G)]
    texts = []
    for k in range(0, len(convs), batch):
        ids, attn = M.encode_chat(tok, convs[k:k + batch])
        gens = [torch.Generator().manual_seed(seed * 100_003 + k + i) for i in range(len(ids))]
        h = None if hints is None else hints[k:k + batch]
        out = sample.generate(m, ids, attention_mask=attn, hints=h, generator=gens, **kw)
        texts += tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    golds = [it["answer"] for it in items for _ in range(G)]
    return texts, [reward.correctness_reward(t, g) > 0 for t, g in zip(texts, golds)]


def reference_hints(tok, items, G, seed):
    """(len(items) * G, gen_length) hint rows from each item's formatted reference response (answer excluded)."""
    gen, rows = torch.Generator().manual_seed(seed), []
    L = data.TASK_SAMPLING["gen_length"]
    for it in items:
        ref = data.format_response(it)
        trace = tok(ref, add_special_tokens=False)["input_ids"]
        answer_start = len(tok(ref[:ref.index("</reasoning>")], add_special_tokens=False)["input_ids"])
        h, _, _ = inpaint.build_hints(trace, G, L, tok.mask_token_id, gen=gen, answer_start=answer_start,
                                      reserve=data.TASK_HINT_RESERVE)
        rows.append(h)
    return torch.cat(rows)


def by_length(items, ok):
    """{chain length: accuracy} of greedy results `ok` on `items` (chain length = lines of the reference trace)."""
    n, hit = {}, {}
    for it, o in zip(items, ok):
        k = it["solution"].count("\n") + 1
        n[k], hit[k] = n.get(k, 0) + 1, hit.get(k, 0) + o
    return {k: round(hit[k] / n[k], 3) for k in sorted(n)}


def measure(m, tok, split="val", n_eval=500, n_rl=128, G=8, temperature=None, seed=0, steps=None, log=print):
    """The numbers of the module docstring as a dict; steps: denoising steps (None = data.TASK_SAMPLING's)."""
    temperature = data.TASK_SAMPLING["temperature"] if temperature is None else temperature
    kw = {} if steps is None else {"steps": steps}
    splits, r, t0 = data.task_splits(), {}, time.time()
    items = splits[split][:n_eval]
    texts, ok = rollouts(m, tok, items, 1, 0.0, seed, **kw)
    r.update(split=split, greedy=round(sum(ok) / len(ok), 3), greedy_by_length=by_length(items, ok),
             greedy_n=len(ok), boxed=round(sum(reward.extract_answer(t) is not None for t in texts) / len(texts), 3))
    log(f"{split} accuracy (greedy, {len(ok)} prompts): {r['greedy']:.3f}, by chain length {r['greedy_by_length']}, "
        f"answer extracted {r['boxed']:.3f}   [{time.time() - t0:.0f}s]")
    rl = splits["rl"][:n_rl]
    texts, ok = rollouts(m, tok, rl, G, temperature, seed, **kw)
    groups = [ok[i * G:(i + 1) * G] for i in range(len(rl))]
    wrong = [it for it, g in zip(rl, groups) if not any(g)]
    r.update(rl_pass=round(sum(ok) / len(ok), 3), all_wrong=round(len(wrong) / len(rl), 3), n_rl=len(rl),
             n_all_wrong=len(wrong), rl_pass_by_length=by_length([it for it in rl for _ in range(G)], ok),
             all_wrong_by_length=by_length(rl, [not any(g) for g in groups]))
    log(f"RL split, G={G}, T={temperature}: pass rate {r['rl_pass']:.3f} (by length {r['rl_pass_by_length']}), "
        f"all-wrong groups {len(wrong)}/{len(rl)} = {r['all_wrong']:.3f} (by length {r['all_wrong_by_length']})   "
        f"[{time.time() - t0:.0f}s]")
    log("example rollout:", repr(texts[0]))
    r.update(hint_pass=None, hint_rescued=0)
    if wrong:
        _, hok = rollouts(m, tok, wrong, G, temperature, seed + 1, hints=reference_hints(tok, wrong, G, seed), **kw)
        solved = sum(any(hok[i * G:(i + 1) * G]) for i in range(len(wrong)))
        r.update(hint_pass=round(sum(hok) / len(hok), 3), hint_rescued=solved)
        log(f"with hints on the all-wrong groups: pass rate {r['hint_pass']:.3f}, groups with >= 1 correct "
            f"{solved}/{len(wrong)}   [{time.time() - t0:.0f}s]")
    r["eval_seconds"] = round(time.time() - t0)
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="checkpoints/task-sft", help="SFT checkpoint directory (HF format)")
    p.add_argument("--split", default="val", choices=("val", "test"), help="greedy split: choose settings on val; "
                   "report test only for the final choice")
    p.add_argument("--n_eval", type=int, default=500, help="greedy prompts of --split")
    p.add_argument("--n_rl", type=int, default=128, help="RL-split prompts to roll out")
    p.add_argument("--G", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--temperature", type=float, default=data.TASK_SAMPLING["temperature"], help="RL temperature")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for gen_length tokens; default "
                   f"data.TASK_SAMPLING's {data.TASK_SAMPLING['steps']}; gen_length // 2 = 2 tokens per step (paper)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", default="", help="also write the numbers to this JSON file")
    a = p.parse_args()
    m, tok = M.load(a.ckpt)
    r = measure(m, tok, a.split, a.n_eval, a.n_rl, a.G, a.temperature, a.seed, a.steps)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"ckpt": a.ckpt, **vars(a), **r}, f, indent=1)


if __name__ == "__main__":
    main()
