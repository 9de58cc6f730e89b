"""Sampler overhead: wall time of sample.generate divided by (number of forward calls x one bare forward on the
same canvas). 1.00 means the sampler adds nothing around the model; the goal is <= 1.05.

    python bench/sample_speed.py            # tiny and small configs, gen 256 / block 32 / 128 steps, CPU
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402
import sample  # noqa: E402

CONFIGS = {  # name -> overrides of model.tiny_config
    "tiny": dict(),
    "small": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=8, mlp_hidden_size=688, vocab_size=4096,
                  embedding_size=4096, mask_token_id=4095),
}


def bench(name, B=4, P=64, gen=256, block=32, steps=128, temperature=1.0, reps=3):
    """Interleaves `steps` bare forwards and one generate() per rep and takes the minimum of each, so a busy
    machine biases neither side."""
    torch.manual_seed(0)
    m = model.LLaDA(model.tiny_config(**CONFIGS[name])).init_weights().eval()
    prompt = torch.randint(2, m.config.mask_token_id, (B, P))
    canvas = torch.cat([prompt, torch.full((B, gen), m.config.mask_token_id)], dim=1)
    fwd, wall = [], []
    with torch.no_grad():
        m(canvas)
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(steps):
                m(canvas)
            fwd.append((time.perf_counter() - t) / steps)
            t = time.perf_counter()
            sample.generate(m, prompt, gen_length=gen, block_length=block, steps=steps, temperature=temperature,
                            generator=torch.Generator().manual_seed(0))
            wall.append(time.perf_counter() - t)
    f, w = min(fwd), min(wall)
    print(f"{name:6s} B={B} P={P} gen={gen} block={block} steps={steps} T={temperature}: forward {f * 1e3:.2f} ms, "
          f"sampler {w:.2f} s, ratio wall/(NFE x forward) = {w / (steps * f):.3f}", flush=True)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in CONFIGS:
        for T in (0.0, 1.0):
            bench(name, temperature=T)
