"""How every script starts: flags from a config dataclass, and torch.distributed from torchrun's environment.

One script runs unchanged under `python X.py` and `torchrun --nproc_per_node=N X.py`: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK; NCCL is used on GPUs and gloo on CPUs, so a 2-process CPU run exercises every
collective. `fsdp` shards each LLaDA block and then the root with FSDP2 (`fully_shard`), for full fine-tuning;
`full_state_dict` gathers the weights back for an HF-format checkpoint.
"""
import argparse
import inspect
import os
from dataclasses import fields

import torch
import torch.distributed as dist


def setup_dist():
    """(rank, world, device). Without torchrun: rank 0 of 1, no process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return rank, world, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fsdp(model, device, param_dtype="auto", compile=None):
    """FSDP2: shard every block, then the root (embeddings, head). A no-op without a process group.
    Mixed precision the FSDP2 way, not autocast: the shards keep their own dtype (fp32 = the master weights that
    AdamW updates; a frozen LoRA base may be bf16), each module all-gathers them in `param_dtype` ("auto": bf16 on
    GPU, none on CPU) and computes in it, gradients are reduce-scattered and kept in fp32. Blocks do not cast their
    inputs, so RoPE's cos/sin stay fp32 as in LLaDA. compile: a torch.compile backend ("inductor") per block;
    Module.compile keeps the parameter names. Activation checkpointing is model.gradient_checkpointing."""
    if not dist.is_initialized():
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if param_dtype == "auto":
        param_dtype = torch.bfloat16 if device.type == "cuda" else None
    mesh = dist.device_mesh.init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.model.transformer.blocks:
        if compile:
            block.compile(backend=compile)
        fully_shard(block, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype, torch.float32,
                                                                      cast_forward_inputs=False))
    return fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype, torch.float32))


def full_state_dict(model):
    """The full (unsharded) state dict on CPU; every rank must call it, all get it."""
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def parse_config(cls, presets, argv=None, doc=""):
    """cls(**presets[--preset]) overridden by flags. Every field of `cls` is a flag whose --help is the field's
    trailing comment in the source (one source of truth). Tuples are written as comma lists: --eta 0.2,0.6."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        if ":" in line and "#" in line and not line.strip().startswith("#"):
            comments[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default=next(iter(presets)), choices=list(presets),
                   help=f"base settings, flags override them (default {next(iter(presets))!r}: the embedded CPU task)")
    defaults = cls()
    for f in fields(cls):
        if f.type is bool:
            kind = lambda s: {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}[s.lower()]  # noqa: E731
        elif f.type is tuple:
            kind = lambda s, t=type(getattr(defaults, f.name)[0]): tuple(t(x) for x in s.split(","))  # noqa: E731
        else:
            kind = f.type
        p.add_argument(f"--{f.name}", type=kind, default=None, help=comments.get(f.name, ""))
    args = p.parse_args(argv)
    cfg = cls(**presets[args.preset])
    for f in fields(cls):
        if getattr(args, f.name) is not None:
            setattr(cfg, f.name, getattr(args, f.name))
    return cfg
