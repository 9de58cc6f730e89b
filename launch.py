"""How every script starts and saves: flags from its config dataclass, torch.distributed from torchrun's
environment, FSDP2, named random streams, the data order, the lr schedule, and atomic checkpoints.

One script runs unchanged under `python X.py` and `torchrun --nproc_per_node=N X.py`: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK; NCCL is used on GPUs and gloo on CPUs, so a 2-process CPU run exercises every
collective. `fsdp` shards each LLaDA block and then the root with FSDP2 (`fully_shard`), for full fine-tuning;
`save_checkpoint` gathers the weights (and optimizer state) back to rank 0 for an HF-format checkpoint.
Every random draw of sft.py, igpo.py and eval.py comes from a generator seeded by `seed(base, stream, *keys)`:
runs are reproducible, resume exactly, and do not depend on the world size or the batch layout.
"""
import argparse
import functools
import hashlib
import inspect
import math
import os
import shutil
from dataclasses import fields

import torch
import torch.distributed as dist

import model as M


# ------------------------------------------------------------------------------------------------ flags

def field_help(cls):
    """{field: help text}: the trailing comment of each field in the dataclass's source (one source of truth)."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        if ":" in line and "#" in line and not line.strip().startswith("#"):
            comments[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
    return comments


def _flag_type(typ, paper_value):
    """argparse type of a field: bools take on/off, true/false, 1/0; tuples are comma lists (--eta 0.2,0.6).
    A bad value raises ArgumentTypeError, which argparse turns into a usage error."""
    if typ is bool:
        def parse_bool(s):
            table = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False,
                     "no": False}
            if s.lower() not in table:
                raise argparse.ArgumentTypeError(f"expected on/off, true/false or 1/0, got {s!r}")
            return table[s.lower()]
        return parse_bool
    if typ is tuple:
        elem = type(paper_value[0])
        return lambda s: tuple(elem(x) for x in s.split(","))
    return typ


def parse_config(cls, presets, argv=None, doc=""):
    """cls(**presets[--preset]) overridden by flags; the first preset is the no-flag run. Every field of `cls` is a
    flag; --help shows its comment, the effective default (the preset's) and the paper's (the field default)."""
    first = next(iter(presets))
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=first, choices=list(presets),
                     help=f"base settings; flags override them (default {first!r}: the embedded CPU task)")
    base = cls(**presets[pre.parse_known_args(argv)[0].preset])
    paper = cls()
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0], parents=[pre],
                                formatter_class=argparse.RawTextHelpFormatter)
    helps = field_help(cls)
    for f in fields(cls):
        text = helps.get(f.name, "").replace("%", "%%")
        shown = f"[default {getattr(base, f.name)!r}; paper {getattr(paper, f.name)!r}]".replace("%", "%%")
        p.add_argument(f"--{f.name}", type=_flag_type(f.type, getattr(paper, f.name)), default=getattr(base, f.name),
                       help=f"{text} {shown}")
    args = p.parse_args(argv)
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


# ----------------------------------------------------------------------------------- distributed, FSDP2

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


def all_sum(t):
    """A tensor summed over ranks (itself without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def lockstep(device):
    """sample.generate's lockstep under a process group (every FSDP rank runs a forward whenever any rank needs
    one, so early exit and skipped steps never hang a collective); None without one."""
    if not dist.is_initialized():
        return None
    return lambda need: all_max(int(need), device) > 0


def all_max(n, device):
    """The largest int n over ranks: ranks that must run the same number of forwards agree on it."""
    if not dist.is_initialized():
        return n
    t = torch.tensor(n, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


# ------------------------------------------------------------------------------ randomness and data order

STREAMS = ("data", "sft_mask", "rollout", "hints", "inpaint", "pick", "mask", "eval")  # every random stream


def seed(base, stream, *keys):
    """A 63-bit generator seed for one draw of a named stream (STREAMS), keyed by ints or strings, e.g.
    seed(cfg.seed, "rollout", batch, row). Streams never share a seed (Python's hash() is salted per process)."""
    assert stream in STREAMS, f"unknown random stream {stream!r}"
    digest = hashlib.blake2b(repr((int(base), stream, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@functools.lru_cache(maxsize=4)
def _permutation(n, base, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed(base, "data", epoch))).tolist()


def data_order(n, base, positions):
    """Dataset indices (of n items) at global positions of the sample stream: epoch k (positions kn..kn+n-1) is a
    seeded permutation, so any world size and a resumed run read the same items in the same order."""
    return [_permutation(n, base, pos // n)[pos % n] for pos in positions]


def lr_at(step, total, peak, warmup, min_ratio=0.0, decay="linear"):
    """Linear warmup over `warmup` steps, then linear or cosine decay from peak to min_ratio * peak at `total`."""
    frac = max(0, step - warmup) / max(1, total - warmup)
    shape = 1 - frac if decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return peak * min(1.0, (step + 1) / max(1, warmup)) * (min_ratio + (1 - min_ratio) * shape)


# ------------------------------------------------------------------------------------------- checkpoints

def full_state_dict(model):
    """The full (unsharded) state dict on CPU; every rank must call it, all get it."""
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(model, tok, path, extra_files, opt=None):
    """HF-format weights (model.save) at `path`, plus the optimizer state (optim.pt) when `opt` is given, all
    gathered on rank 0 and written to path.saving, then renamed over `path`: a crash never leaves a torn
    checkpoint. Every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = full_state_dict(model)
    osd = None
    if opt is not None:
        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist.is_initialized() or dist.get_rank() == 0:
        path = path.rstrip("/")
        M.save(model, tok, path + ".saving", extra_files=extra_files, state_dict=sd)  # LoRA: merged + adapter/
        if osd is not None:
            torch.save(osd, os.path.join(path + ".saving", "optim.pt"))
        if os.path.exists(path):
            os.replace(path, path + ".old")
        os.replace(path + ".saving", path)
        shutil.rmtree(path + ".old", ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def load_optimizer(model, opt, path):
    """Load optim.pt written by save_checkpoint into `opt` (rank 0 reads it and broadcasts under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    osd = torch.load(os.path.join(path, "optim.pt"), weights_only=False) if rank0 else {}
    set_optimizer_state_dict(model, opt, osd,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized()))
