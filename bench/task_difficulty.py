"""How hard is the embedded task for an SFT checkpoint? The two numbers IGPO's CPU demo needs.

  all-wrong fraction: RL-split prompts whose G rollouts (data.TASK_SAMPLING: low-confidence remasking at the RL
                      temperature) are all wrong; IGPO only acts on these (target 20-70%).
  test accuracy:      greedy (T = 0) on the test split; RL needs headroom (target 10-70%).
Also: pass rate of single rollouts, and the same numbers with reference-trace hints (inpaint.build_hints, as IGPO
would place them) on the all-wrong groups, to show that hints can help.

Run:  python bench/task_difficulty.py [--ckpt checkpoints/task-sft] [--n_rl 128] [--n_test 500]
"""
import argparse
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="checkpoints/task-sft", help="SFT checkpoint directory (HF format)")
    p.add_argument("--n_rl", type=int, default=128, help="RL-split prompts to roll out")
    p.add_argument("--n_test", type=int, default=500, help="test-split prompts, greedy")
    p.add_argument("--G", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--temperature", type=float, default=data.TASK_SAMPLING["temperature"], help="RL temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    a = p.parse_args()
    m, tok = M.load(a.ckpt)
    splits = data.task_splits()
    t0 = time.time()
    _, ok = rollouts(m, tok, splits["test"][:a.n_test], 1, 0.0, a.seed)
    print(f"test accuracy (greedy, {len(ok)} prompts): {sum(ok) / len(ok):.3f}   [{time.time() - t0:.0f}s]")
    rl = splits["rl"][:a.n_rl]
    texts, ok = rollouts(m, tok, rl, a.G, a.temperature, a.seed)
    groups = [ok[i * a.G:(i + 1) * a.G] for i in range(len(rl))]
    wrong = [it for it, g in zip(rl, groups) if not any(g)]
    print(f"RL split, G={a.G}, T={a.temperature}: pass rate {sum(ok) / len(ok):.3f}, all-wrong groups "
          f"{len(wrong)}/{len(rl)} = {len(wrong) / len(rl):.3f}   [{time.time() - t0:.0f}s]")
    print("example rollout:", repr(texts[0]))
    if wrong:
        _, hok = rollouts(m, tok, wrong, a.G, a.temperature, a.seed + 1, hints=reference_hints(tok, wrong, a.G, a.seed))
        solved = sum(any(hok[i * a.G:(i + 1) * a.G]) for i in range(len(wrong)))
        print(f"with hints on the all-wrong groups: pass rate {sum(hok) / len(hok):.3f}, groups with >= 1 correct "
              f"{solved}/{len(wrong)}   [{time.time() - t0:.0f}s]")


if __name__ == "__main__":
    main()
