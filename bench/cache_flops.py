"""Model FLOPs of LLaDA's exact sampler vs sample.generate's approximate KV cache (cache="prefix" / "dual")
WITHOUT a confidence threshold: the same low-confidence schedule and number of steps, so every variant runs the
same forwards and they differ only in how many positions each forward recomputes. Two shapes in one run: the
paper's (prompt 200, gen 256, block 32, 128 steps: 8 blocks) and the embedded task's (prompt ~35-41, gen 56,
block 8, 28 steps: 7 blocks), both 2 tokens per step.

    OMP_NUM_THREADS=1 python bench/cache_flops.py [--ckpt checkpoints/task-sft] [--n 32] [--width 0]

FLOPs: fast_mode.forward_flops of every forward actually run (its Meter), evaluated twice on the same recorded
forward shapes: with the bench model's config and with LLaDA-8B's (model.LLADA_8B: d_model 4096, 32 layers,
32 heads, MLP 12288, vocab 126464). The ratios come out the same at both widths: every forward attends to the
whole canvas, so only the number of query tokens differs between variants (closed_form, printed as a check).
The paper shape's prompt is the task prompt left-padded to 200 with masked padding (see `prompts`).
Model: the task SFT checkpoint (trained, d_model 128, 4 layers) or, with --width D, a random-init LLaDA of width D
(D/32 heads, MLP 3D, --layers layers; "same text" then says little). Rollouts: the RL split's prompts, one rollout
each at --temperature with a seeded generator per row, the same seeds for every variant. "same text": share of
rollouts whose text up to the first EOS equals exact's; "same tok": share of positions of those texts (the longer
of the two) holding the same token; "acc": share of rollouts with the right answer (reward.py). Wall times are
on a shared CPU: one measurement each, read them loosely.
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import model as M  # noqa: E402
import reward  # noqa: E402
import sample  # noqa: E402
from bench.fast_mode import Meter, cut_at_eos, forward_flops  # noqa: E402

SHAPES = {  # name -> (prompt length or None = the batch's own, generate() sampling settings)
    "paper": (200, dict(gen_length=256, block_length=32, steps=128)),
    "task": (None, dict(gen_length=56, block_length=8, steps=28)),
}
VARIANTS = {"exact": None, "prefix cache": "prefix", "dual cache": "dual"}


class ShapeMeter(Meter):
    """fast_mode's Meter that also keeps each forward's (rows, queries, keys), to recount them at another width."""
    def __init__(self, m):
        super().__init__(m)
        self.shapes = []

    def __call__(self, input_ids, attention_mask=None, cache=None, start=0):
        n_key = cache[0][0].shape[2] if cache and cache[0] else input_ids.shape[1]  # as Meter counts it
        self.shapes.append((input_ids.shape[0], input_ids.shape[1], n_key))
        return super().__call__(input_ids, attention_mask=attention_mask, cache=cache, start=start)


def prompts(tok, items, prompt_len, pad_id):
    """Chat prompts left-padded to prompt_len with masked padding. The forward costs what a prompt_len prompt
    costs, while RoPE being relative and the padding masked, the model sees the task prompt it was trained on:
    token agreement is measured on real content instead of filler text the small model never saw."""
    ids, attn = M.encode_chat(tok, [data.task_messages(it["question"]) for it in items])
    if prompt_len is None:
        return ids, attn
    extra = prompt_len - ids.shape[1]
    assert extra >= 0, f"prompts are {ids.shape[1]} tokens, longer than --prompt_len {prompt_len}"
    return (torch.cat([ids.new_full((len(ids), extra), pad_id), ids], 1),
            torch.cat([attn.new_zeros((len(ids), extra)), attn], 1))


def closed_form(P, gen_length, block_length, steps):
    """Query tokens of prefix / dual per exact's. Every forward attends to all P + L keys (the cache replaces keys
    that are not recomputed, it does not drop them), so FLOPs per query token are the same in every variant and
    the FLOP ratio is this token ratio at any width. Each block: one full forward that records the cache, then
    steps_per_block - 1 forwards of the block and what follows it (prefix) or of the block alone (dual)."""
    nb, full = gen_length // block_length, P + gen_length
    spb, exact = steps // nb, steps * full
    prefix = sum(full + (spb - 1) * (gen_length - b * block_length) for b in range(nb))
    dual = nb * full + (steps - nb) * block_length
    return prefix / exact, dual / exact


def same_tokens(pairs):
    """Share of positions, over the longer text of each pair, where both texts hold the same token."""
    hit = sum(int((g[:min(len(g), len(b))] == b[:min(len(g), len(b))]).sum()) for g, b in pairs)
    return hit / max(1, sum(max(len(g), len(b)) for g, b in pairs))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="checkpoints/task-sft", help="model and tokenizer (sft.py: presets task, task-2, task-3)")
    p.add_argument("--width", type=int, default=0, help="0: the checkpoint's weights; D: random-init width D")
    p.add_argument("--layers", type=int, default=4, help="layers of the random-init model (--width > 0)")
    p.add_argument("--n", type=int, default=32, help="rollouts per shape and variant (one generate() call)")
    p.add_argument("--temperature", type=float, default=1.2, help="sampling temperature (RL rollouts: 1.2)")
    p.add_argument("--prompt_len", type=int, default=SHAPES["paper"][0], help="the paper shape's prompt length")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    m, tok = M.load(a.ckpt)
    if a.width:
        kw = dict(d_model=a.width, n_layers=a.layers, n_heads=max(1, a.width // 32), mlp_hidden_size=3 * a.width)
        cfg = dataclasses.replace(m.config, **kw, n_kv_heads=kw["n_heads"])
        m = M.LLaDA(cfg).init_weights(generator=torch.Generator().manual_seed(0)).eval()
    c, big = m.config, M.LLADA_8B
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, T {a.temperature}, {a.n} rollouts, "
          f"{'trained ' + a.ckpt if not a.width else 'random weights'}: d_model {c.d_model}, {c.n_layers} layers, "
          f"{c.n_heads} heads, MLP {c.mlp_hidden_size}, vocab {c.vocab_size}; 8B: d_model {big.d_model}, "
          f"{big.n_layers} layers, {big.n_heads} heads, MLP {big.mlp_hidden_size}, vocab {big.vocab_size}")
    items = data.task_level("task", "rl")[:a.n]
    golds = [it["answer"] for it in items]
    for shape, (plen, sampling) in SHAPES.items():
        plen = a.prompt_len if shape == "paper" else plen
        ids, attn = prompts(tok, items, plen, c.pad_token_id)
        print(f"\n{shape} shape: prompt {ids.shape[1]} (real {int(attn.sum(1).min())}-{int(attn.sum(1).max())}), "
              f"{sampling}, {sampling['gen_length'] // sampling['block_length']} blocks")
        print(f"| {'variant':12s} | {'fwd/rollout':>11s} | {'GFLOP bench':>11s} | {'GFLOP 8B':>9s} | "
              f"{'FLOPs/exact bench':>17s} | {'FLOPs/exact 8B':>14s} | {'wall s/rollout':>14s} | "
              f"{'wall/exact':>10s} | {'same text':>9s} | {'same tok':>8s} | {'acc':>5s} |")
        print("|" + "|".join("-" * (w + 2) for w in (12, 11, 11, 9, 17, 14, 14, 10, 9, 8, 5)) + "|")
        base = None
        for name, cache in VARIANTS.items():
            meter = ShapeMeter(m)
            gens = [torch.Generator().manual_seed(1000 + i) for i in range(a.n)]  # same seeds for every variant
            t0 = time.perf_counter()
            out = sample.generate(meter, ids, attention_mask=attn, generator=gens, temperature=a.temperature,
                                  cache=cache, **sampling)
            wall = (time.perf_counter() - t0) / a.n
            gen = cut_at_eos(out[:, ids.shape[1]:], c.eos_token_id)
            f8 = sum(forward_flops(big, *s) for s in meter.shapes)
            base = base or (meter.flops, f8, wall, gen)
            pairs = list(zip(gen, base[3]))
            same = sum(len(g) == len(b) and bool((g == b).all()) for g, b in pairs) / a.n
            tok_same = same_tokens(pairs)
            texts = tok.batch_decode(gen, skip_special_tokens=True)
            acc = sum(reward.correctness_reward(t, g) > 0 for t, g in zip(texts, golds)) / a.n
            print(f"| {name:12s} | {meter.nfe:11d} | {meter.flops / a.n / 1e9:11.3f} | {f8 / a.n / 1e9:9.0f} | "
                  f"{meter.flops / base[0]:17.3f} | {f8 / base[1]:14.3f} | {wall:14.3f} | {wall / base[2]:10.2f} | "
                  f"{same:9.3f} | {tok_same:8.3f} | {acc:5.3f} |", flush=True)
        cf = closed_form(ids.shape[1], **sampling)
        print(f"closed form: prefix {cf[0]:.3f}, dual {cf[1]:.3f} of exact's FLOPs at any width")


if __name__ == "__main__":
    main()
