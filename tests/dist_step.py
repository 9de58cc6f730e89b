"""One optimizer step of a tiny LLaDA through launch.fsdp, for the 1-vs-2-process and mixed-precision tests.

    python tests/dist_step.py OUT [--lora_rank R] [--param_dtype bfloat16] [--compile eager]
    python -m torch.distributed.run --nproc_per_node=2 tests/dist_step.py OUT ...

Every rank takes its contiguous share of the same global batch (8 rows); the loss is the global mean of the
per-token cross-entropy, so the update must not depend on the world size. Rank 0 writes OUT (torch.save): the
full state dict after the step, the gradients before it (as full tensors), and the dtypes seen during the step.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import launch  # noqa: E402
import model as M  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--lora_rank", type=int, default=0)
    p.add_argument("--param_dtype", default="none")  # none | bfloat16 | float16
    p.add_argument("--compile", default=None)
    p.add_argument("--grad_ckpt", type=int, default=0)
    p.add_argument("--optim", default="adamw")  # adamw | sgd
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rank, world, device = launch.setup_dist()
    net = M.LLaDA(M.tiny_config()).init_weights(std=0.2)
    if a.lora_rank:
        M.add_lora(net, rank=a.lora_rank, alpha=2.0 * a.lora_rank, dropout=0.0, targets=M.LORA_ALL)
        with torch.no_grad():  # B = 0 at init would leave A without gradient; make both matter
            for name, prm in net.named_parameters():
                if "lora_B" in name:
                    prm.normal_(0.0, 0.1)
    net.gradient_checkpointing = bool(a.grad_ckpt)
    net.train()
    seen = {}
    blk = net.model.transformer.blocks[0]
    blk.register_forward_pre_hook(lambda m, args: seen.setdefault("block_in", [t.dtype for t in args[:3]]) and None)
    blk.q_proj.register_forward_hook(lambda m, args, out: seen.setdefault("q_out", out.dtype) and None)
    dtype = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[a.param_dtype]
    net = launch.fsdp(net, device, param_dtype=dtype, compile=a.compile)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 127, (8, 12), generator=g)
    targets = torch.randint(0, 127, (8, 12), generator=g)
    per = 8 // world
    mine = slice(rank * per, (rank + 1) * per)
    logits = net(ids[mine])
    seen["logits"] = logits.dtype
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets[mine].flatten(), reduction="sum") / targets.numel()
    (loss * world).backward()  # FSDP averages gradients over ranks; the loss is already a global mean
    trainable = [prm for prm in net.parameters() if prm.requires_grad]
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731
    grads = {n: full(prm.grad).detach().clone() for n, prm in net.named_parameters() if prm.grad is not None}
    seen["shard"] = {n: prm.dtype for n, prm in net.named_parameters()}
    seen["grad"] = {n: gr.dtype for n, gr in grads.items()}
    opt = torch.optim.AdamW(trainable, lr=1e-2) if a.optim == "adamw" else torch.optim.SGD(trainable, lr=1.0)
    opt.step()
    sd = launch.full_state_dict(net)
    if rank == 0:
        torch.save(dict(state=sd, grads=grads, seen=seen, world=world), a.out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    launch.exit_worker()
