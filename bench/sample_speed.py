"""Sampler overhead: wall time of sample.generate divided by (number of forward calls x one bare forward on the
same canvas). 1.00 means the sampler adds nothing around the model; the goal is <= 1.05. On a shared machine the
bare forwards and the sampler's run under different loads, so the script also prints wall / (time spent inside the
sampler's own forwards, which are bare forwards on the same batch), measured in the same run.

    python bench/sample_speed.py                   # tiny (B 4, 16, 64) and ~100M (B 4, 16) configs, T 0 and 1, CPU
    python bench/sample_speed.py --only 100M --B 64
The ratio is per forward, so the large cases use fewer steps (same block structure, more tokens per step).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402
import sample  # noqa: E402

CONFIGS = {  # name -> overrides of model.tiny_config
    "tiny": dict(),
    "100M": dict(d_model=768, n_layers=8, n_heads=12, n_kv_heads=12, mlp_hidden_size=2048, vocab_size=32000,
                 embedding_size=32000, mask_token_id=31999),
}
CASES = {  # name -> [(B, P, gen, block, steps)]
    "tiny": [(4, 64, 256, 32, 128), (16, 64, 256, 32, 32), (64, 64, 256, 32, 16)],
    "100M": [(4, 64, 128, 32, 8), (16, 64, 128, 32, 4), (64, 32, 64, 32, 2)],
}


class Counted:
    """The model with a forward counter (NFE is what the sampler really ran: it skips empty steps) and a clock on
    its forwards, so the time outside them is measured in the same run, under the same load."""
    def __init__(self, m):
        self.m, self.config, self.n, self.t = m, m.config, 0, 0.0

    def __call__(self, *a, **kw):
        t = time.perf_counter()
        out = self.m(*a, **kw)
        self.t += time.perf_counter() - t
        self.n += 1
        return out


def bench(name, B, P, gen, block, steps, temperature, reps=2):
    """Interleaves NFE bare forwards and one generate() per rep and takes the minimum of each, so a busy machine
    biases neither side."""
    torch.manual_seed(0)
    m = model.LLaDA(model.tiny_config(**CONFIGS[name])).init_weights().eval()
    prompt = torch.randint(2, m.config.mask_token_id, (B, P))
    canvas = torch.cat([prompt, torch.full((B, gen), m.config.mask_token_id)], dim=1)
    fwd, wall, inside = [], [], []
    with torch.no_grad():
        m(canvas)
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(steps):
                m(canvas)
            fwd.append((time.perf_counter() - t) / steps)
            c = Counted(m)
            gens = [torch.Generator().manual_seed(i) for i in range(B)]
            t = time.perf_counter()
            sample.generate(c, prompt, gen_length=gen, block_length=block, steps=steps, temperature=temperature,
                            generator=gens)
            wall.append(time.perf_counter() - t)
            inside.append(wall[-1] / c.t)
    f, w = min(fwd), min(wall)
    print(f"{name:5s} B={B:3d} P={P} gen={gen} block={block} steps={steps} T={temperature}: forward "
          f"{f * 1e3:8.2f} ms, NFE {c.n}, sampler {w:7.2f} s, wall/(NFE x bare forward) = {w / (c.n * f):.3f}, "
          f"wall/(its own forwards) = {min(inside):.3f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="one config name (tiny | 100M); default: all")
    p.add_argument("--B", type=int, default=0, help="only the case with this batch size; default: all")
    a = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, cases in CASES.items():
        for case in cases:
            if (a.only and name != a.only) or (a.B and case[0] != a.B):
                continue
            if not a.B and name == "100M" and case[0] == 64:
                continue  # ~10 min on one core: ask for it with --B 64
            for T in (0.0, 1.0):
                bench(name, *case, temperature=T)
