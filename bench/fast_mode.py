"""Fast mode vs exact mode on the embedded task: test accuracy (greedy), RL-rollout pass rate (T = 1.2, G = 8),
forward calls (NFE), model FLOPs and wall time per rollout, for LLaDA's sampler and for sample.generate's fast
mode (confidence threshold, prefix / dual KV cache), each with and without early exit.

    python bench/fast_mode.py [--ckpt checkpoints/task-sft] [--n_test 500] [--n_rl 64]
    python bench/fast_mode.py --only "exact,exact + early exit" --gen_length 256 --block_length 32 --steps 128
The second line is early exit on GSM8K-length rollouts (the task's answers are <= 53 tokens). "same text": share of
rollouts whose text up to the first EOS equals the first variant's (early exit must give 1.000).
FLOPs are the model's matmul FLOPs (linear layers, attention scores and values, head) of every forward actually
run, counted from the input and key lengths; the sampler's own work is not counted (see bench/sample_speed.py).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import model as M  # noqa: E402
import reward  # noqa: E402
import sample  # noqa: E402

VARIANTS = {  # name -> generate() keyword arguments on top of the sampling settings
    "exact": dict(),
    "exact + early exit": dict(early_exit=True),
    "thr 0.9": dict(threshold=0.9),
    "thr 0.9 + prefix": dict(threshold=0.9, cache="prefix"),
    "thr 0.9 + dual": dict(threshold=0.9, cache="dual"),
    "thr 0.9 + dual + early exit": dict(threshold=0.9, cache="dual", early_exit=True),
    "thr 0.7 + dual + early exit": dict(threshold=0.7, cache="dual", early_exit=True),
    "thr 0.5 + dual + early exit": dict(threshold=0.5, cache="dual", early_exit=True),
}


def forward_flops(c, rows, n_query, n_key):
    """Matmul FLOPs of one forward: rows x n_query tokens through every linear layer and the head, each query
    attending to n_key keys (QK^T and AV)."""
    hd = c.d_model // c.n_heads
    linear = 2 * c.d_model * (2 * c.n_heads * hd + 2 * c.n_kv_heads * hd + 3 * c.mlp_hidden_size)
    attention = 2 * 2 * c.n_heads * hd * n_key
    return rows * n_query * (c.n_layers * (linear + attention) + 2 * c.d_model * c.vocab_size)


class Meter:
    """The model, counting forwards (NFE), rows x forwards, and FLOPs of every call."""
    def __init__(self, m):
        self.m, self.config = m, m.config
        self.nfe, self.row_forwards, self.flops = 0, 0, 0

    def __call__(self, input_ids, attention_mask=None, cache=None, start=0):
        n_key = cache[0][0].shape[2] if cache and cache[0] else input_ids.shape[1]
        self.nfe += 1
        self.row_forwards += input_ids.shape[0]
        self.flops += forward_flops(self.config, input_ids.shape[0], input_ids.shape[1], n_key)
        return self.m(input_ids, attention_mask=attention_mask, cache=cache, start=start)


def run(m, tok, items, G, sampling, kw, batch, seed=0):
    """(accuracy, Meter, wall seconds, texts) of G rollouts per item under generate(**sampling, **kw)."""
    meter, texts, t0 = Meter(m), [], time.perf_counter()
    convs = [data.task_messages(it["question"]) for it in items for _ in range(G)]
    for k in range(0, len(convs), batch):
        ids, attn = M.encode_chat(tok, convs[k:k + batch])
        gens = [torch.Generator().manual_seed(seed * 100_003 + k + i) for i in range(len(ids))]
        out = sample.generate(meter, ids, attention_mask=attn, generator=gens,
                              **sampling, **kw)
        texts += tok.batch_decode(cut_at_eos(out[:, ids.shape[1]:], tok.eos_token_id), skip_special_tokens=True)
    wall = time.perf_counter() - t0
    golds = [it["answer"] for it in items for _ in range(G)]
    ok = [reward.correctness_reward(t, g) > 0 for t, g in zip(texts, golds)]
    return sum(ok) / len(ok), meter, wall, texts


def cut_at_eos(rows, eos):
    """Each row up to its first EOS (as igpo.py reads a completion)."""
    return [r[:int((r == eos).nonzero()[0])] if (r == eos).any() else r for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="checkpoints/task-sft", help="task SFT checkpoint (sft.py: presets task, task-2, task-3)")
    p.add_argument("--n_test", type=int, default=500, help="test problems, greedy")
    p.add_argument("--n_rl", type=int, default=64, help="RL-split prompts, G = 8 rollouts each at T = 1.2")
    p.add_argument("--batch", type=int, default=256, help="rows per generate() call")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--gen_length", type=int, default=data.TASK_SAMPLING["gen_length"], help="tokens per rollout")
    p.add_argument("--block_length", type=int, default=data.TASK_SAMPLING["block_length"], help="block length")
    p.add_argument("--steps", type=int, default=data.TASK_SAMPLING["steps"], help="exact mode's steps")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    m, tok = M.load(a.ckpt)
    sampling = dict(gen_length=a.gen_length, block_length=a.block_length, steps=a.steps)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, sampling {sampling}")
    names = a.only.split(",") if a.only else list(VARIANTS)
    base = {}
    for setting, items, G, T in (("test greedy", data.task_level("task", "test")[:a.n_test], 1, 0.0),
                                 ("RL T=1.2 G=8", data.task_level("task", "rl")[:a.n_rl], 8, 1.2)):
        print(f"\n{setting}: {len(items)} prompts x {G}")
        print(f"{'variant':30s} {'acc':>6s} {'NFE/call':>8s} {'row-fwd/rollout':>15s} {'GFLOP/rollout':>13s} "
              f"{'FLOPs x':>7s} {'wall s':>7s} {'wall x':>6s} {'same text':>9s}")
        for name in names:
            acc, meter, wall, texts = run(m, tok, items, G, {**sampling, "temperature": T}, VARIANTS[name], a.batch)
            n = len(items) * G
            base.setdefault(setting, (meter.flops, wall, texts))
            f0, w0, t0 = base[setting]
            same = sum(x == y for x, y in zip(texts, t0)) / n
            calls = -(-n // a.batch)
            print(f"{name:30s} {acc:6.3f} {meter.nfe / calls:8.1f} {meter.row_forwards / n:15.1f} "
                  f"{meter.flops / n / 1e9:13.3f} {f0 / meter.flops:7.2f} {wall:7.1f} {w0 / wall:6.2f} {same:9.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
