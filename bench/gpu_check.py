"""GPU check of the 8B path without weights or network: a random LLaDA with LLaDA-8B's width and a few layers.

Measures, in one process on one device:
 1. the sampler (sample.generate, low-confidence remasking, float64 Gumbel at T = 1.2) in bf16: tokens/s and MFU
    at gen 256 / block 32 / 128 steps;
 2. one training step (forward + backward of the d1 masked log-prob of the completion + AdamW) through
    launch.fsdp on a 1-process group, i.e. FSDP2 with bf16 MixedPrecisionPolicy, fp32 master weights and
    activation checkpointing: wall time, peak memory, MFU; full fine-tuning and LoRA (r 128, the reference
    forward with the adapter off included in the LoRA row, not in its timing).
MFU = model FLOPs (bench/memory.flops_per_token) / wall / the GPU's dense bf16 peak (--peak_tflops, else from the
device name). `--cpu` runs the same code at tiny sizes (a smoke test; no MFU).
Use:  bash bench/gpu_check.sh            # on a GPU machine (< 8 min on one H100/H200)
      python bench/gpu_check.py --cpu    # the same on CPU, seconds
"""
import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import launch  # noqa: E402
import memory  # noqa: E402
import model as M  # noqa: E402
import sample  # noqa: E402

GPU_PEAKS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10G": 70}  # dense bf16 TFLOP/s, datasheets


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(cfg, device, dtype, lora_rank=0):
    torch.manual_seed(0)
    with torch.device(device):
        net = M.LLaDA(cfg).init_weights(std=0.02).to(dtype)
    return M.add_lora(net, rank=lora_rank, alpha=64.0, dropout=0.05)


def check_sampler(cfg, a, device, peak):
    net = build(cfg, device, torch.bfloat16).eval()
    prompt = torch.randint(0, cfg.vocab_size - 1000, (a.batch, a.prompt), device=device)
    kw = dict(gen_length=a.gen, block_length=a.block, temperature=1.2, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        sample.generate(net, prompt, steps=a.gen // a.block, **kw)  # warm-up: kernels, allocator
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        out = sample.generate(net, prompt, steps=a.steps, **kw, generator=torch.Generator(device).manual_seed(0))
        sync(device)
    wall = time.time() - t0
    assert out.shape == (a.batch, a.prompt + a.gen)
    flops = a.steps * a.batch * (a.prompt + a.gen) * memory.flops_per_token(cfg, a.prompt + a.gen)
    mfu = f"{flops / wall / (peak * 1e12):.1%}" if peak else "n/a"
    return dict(what=f"sampler bf16, {a.batch} x ({a.prompt} + {a.gen}), {a.steps} steps", wall=wall,
                rate=f"{a.batch * a.gen / wall:,.0f} tok/s", mfu=mfu, peak_mem=peak_memory(device))


def masked_logp(net, ids, gen, mask_id):
    """d1's estimator: every completion token masked, log pi of the true token at those positions (B, gen)."""
    x = ids.clone()
    x[:, -gen:] = mask_id
    logits = net(x, attention_mask=torch.ones_like(x))[:, -gen:].float()
    return logits.log_softmax(-1).gather(-1, ids[:, -gen:, None]).squeeze(-1)


def check_train_step(cfg, a, device, peak, lora_rank):
    master = torch.float32 if lora_rank == 0 else torch.bfloat16  # LoRA: frozen bf16 base, fp32 adapters
    net = build(cfg, device, master, lora_rank)
    net.gradient_checkpointing = True
    net = launch.fsdp(net, device, param_dtype=torch.bfloat16, compile=a.compile)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-6, betas=(0.9, 0.99))
    ids = torch.randint(0, cfg.vocab_size - 1000, (a.train_rows, a.prompt + a.gen), device=device)
    if lora_rank:
        with torch.no_grad(), M.lora_disabled(net):
            ref = masked_logp(net, ids, a.gen, cfg.mask_token_id)
    for it in range(2):  # the first step warms up; the second is measured
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.time()
        net.train()
        loss = -masked_logp(net, ids, a.gen, cfg.mask_token_id).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        wall = time.time() - t0
    assert torch.isfinite(loss)
    if lora_rank:
        assert torch.isfinite(ref).all()
    passes = 4 if lora_rank == 0 else 3  # forward, backward (2x; LoRA: input grads only), checkpoint recompute
    flops = passes * a.train_rows * (a.prompt + a.gen) * memory.flops_per_token(cfg, a.prompt + a.gen)
    mfu = f"{flops / wall / (peak * 1e12):.1%}" if peak else "n/a"
    kind = "full FT" if lora_rank == 0 else f"LoRA r={lora_rank}"
    what = f"train step, {kind}, {a.train_rows} x ({a.prompt} + {a.gen})"
    return dict(what=what, wall=wall, rate=f"{a.train_rows * (a.prompt + a.gen) / wall:,.0f} tok/s", mfu=mfu,
                peak_mem=peak_memory(device))


def peak_memory(device):
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny sizes on CPU (smoke test of this script)")
    p.add_argument("--layers", type=int, default=4, help="blocks of the random LLaDA (8B has 32)")
    p.add_argument("--batch", type=int, default=8, help="rows per sampler call (official generation batch)")
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    p.add_argument("--gen", type=int, default=256, help="generated tokens")
    p.add_argument("--block", type=int, default=32, help="semi-autoregressive block")
    p.add_argument("--steps", type=int, default=128, help="denoising steps")
    p.add_argument("--train_rows", type=int, default=8, help="rows per training step")
    p.add_argument("--lora_rank", type=int, default=128, help="rank of the LoRA row")
    p.add_argument("--compile", default=None, help="torch.compile backend for the training rows (e.g. inductor)")
    p.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak of the device")
    a = p.parse_args()
    cfg = M.ModelConfig(n_layers=a.layers)
    device = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        a.batch, a.prompt, a.gen, a.block, a.steps, a.train_rows, a.lora_rank = 2, 8, 16, 8, 8, 2, 8
        cfg = M.tiny_config(d_model=128, n_heads=4, n_kv_heads=4, mlp_hidden_size=384, vocab_size=2048,
                            embedding_size=2048, mask_token_id=2047, n_layers=2)
        peak, name = a.peak_tflops, "CPU"
    else:
        name = torch.cuda.get_device_name()
        peak = a.peak_tflops or next((v for k, v in GPU_PEAKS.items() if k in name), None)
    with socket.socket() as s:  # a free port for the 1-process group
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)  # FSDP2 on 1 rank
    print(f"device {name} (peak {peak or 'n/a'} TFLOP/s bf16), torch {torch.__version__}; random LLaDA d_model "
          f"{cfg.d_model}, {cfg.n_heads} heads, mlp {cfg.mlp_hidden_size}, vocab {cfg.vocab_size}, {cfg.n_layers} "
          f"layers: {M.count_params(cfg)[0] / 1e9:.2f}B parameters")
    rows = [check_sampler(cfg, a, device, peak)]
    for rank in (0, a.lora_rank):
        rows.append(check_train_step(cfg, a, device, peak, rank))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| check | wall, s | throughput | MFU | peak memory |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['wall']:.2f} | {r['rate']} | {r['mfu']} | {r['peak_mem']} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
