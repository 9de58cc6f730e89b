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
import datetime
import faulthandler
import functools
import glob
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import signal
import sys
import warnings
import zipfile
from dataclasses import fields

import torch
import torch.distributed as dist

import model as M


# ------------------------------------------------------------------------------------------------ flags

def field_help(cls):
    """{field: help text}: the comment after each field of the dataclass's source and the comment-only lines under
    it (one source of truth for the config screen and --help)."""
    comments, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        code, _, comment = line.partition("#")
        if ":" in code and code.strip() and not code.strip().startswith(("@", "class")):
            last = code.split(":")[0].strip()
            comments[last] = comment.strip()
        elif not code.strip() and comment.strip() and last:
            comments[last] += " " + comment.strip()
    return comments


_RANGE = re.compile(r"^([\[(])(-?[\d.e-]+), (-?[\d.e-]+|inf)([\])])")
_CHOICES = re.compile(r"^\{([^}]*)\}")


def domain(text):
    """(check, label) of the domain a help text starts with, else None: an interval [lo, hi], (lo, hi], [lo, inf)
    ... (a tuple: every element in it; None is always allowed: "the default") or choices {a|b|""}."""
    if m := _RANGE.match(text):
        lo, hi = float(m[2]), float(m[3])
        inside = lambda v: (lo <= v if m[1] == "[" else lo < v) and (v <= hi if m[4] == "]" else v < hi)
        return (lambda v: v is None or all(inside(x) for x in (v if isinstance(v, tuple) else (v,)))), m[0]
    if m := _CHOICES.match(text):
        choices = [c.strip().strip('"') for c in m[1].split("|")]
        return (lambda v: v in choices), m[0]
    return None


def _flag_type(typ, paper_value):
    """argparse type of a field: bools take on/off, true/false, 1/0; tuples are comma lists (--eta 0.2,0.6).
    A bad value raises ArgumentTypeError, which argparse turns into a usage error."""
    if typ is bool:
        def parse_bool(s):
            if s.lower() not in ("on", "true", "1", "yes", "off", "false", "0", "no"):
                raise argparse.ArgumentTypeError(f"expected on/off, true/false or 1/0, got {s!r}")
            return s.lower() in ("on", "true", "1", "yes")
        return parse_bool
    if typ is tuple:
        elem = type(paper_value[0])
        return lambda s: tuple(elem(x) for x in s.split(","))
    return typ


def _shown(v):
    """A value as --help shows it: on/off, a comma list, or repr."""
    return ("on" if v else "off") if isinstance(v, bool) else ",".join(map(str, v)) if isinstance(v, tuple) else repr(v)


def parse_config(cls, presets, argv=None, doc="", official=None):
    """cls(**presets[--preset]) overridden by flags; the first preset is the no-flag run. Every field of `cls` is a
    flag; --help shows its whole comment, the effective default (the preset's), the paper's (the field default)
    and, where `official` names it, the official run's. A value outside the domain its comment starts with
    ([lo, hi], {a|b}; see domain()) is a usage error naming the flag, before anything loads."""
    first = next(iter(presets))
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=first, choices=list(presets),
                     help=f"base settings; flags override them (default {first!r}: the embedded CPU task)")
    base = cls(**presets[pre.parse_known_args(argv)[0].preset])
    paper, official = cls(), official or {}
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0], parents=[pre])
    helps = field_help(cls)
    for f in fields(cls):
        o = f"; official {_shown(official[f.name])}" if f.name in official else ""
        shown = f"[default {_shown(getattr(base, f.name))}; paper {_shown(getattr(paper, f.name))}{o}]"
        p.add_argument(f"--{f.name}", type=_flag_type(f.type, getattr(paper, f.name)), default=getattr(base, f.name),
                       help=f"{helps.get(f.name, '')} {shown}".replace("%", "%%"))
    args = p.parse_args(argv)
    for f in fields(cls):
        rule = domain(helps.get(f.name, ""))
        if rule and not rule[0](getattr(args, f.name)):
            p.error(f"--{f.name} {_shown(getattr(args, f.name))}: must be in {rule[1]}")
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


# ----------------------------------------------------------------------------------- distributed, FSDP2

def setup_dist(timeout_s=1800):
    """(rank, world, device). Without torchrun: rank 0 of 1, no process group. A collective that waits longer than
    timeout_s (a rank died or hangs) raises, so every rank exits instead of hanging until the job's wall limit.
    A crash in native code (SIGSEGV, SIGABRT, ...) prints every thread's Python stack to stderr (faulthandler)."""
    if not faulthandler.is_enabled():  # (pytest has its own)
        faulthandler.enable()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return rank, world, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def exit_worker():
    """The last line of a script run under torchrun (WORLD_SIZE > 1), after train() destroyed the process group:
    flush and leave with os._exit(0), skipping interpreter finalization. Finalizing with gloo's C++ threads alive can
    abort in one of them (std::terminate, SIGABRT; seen here once in 280 two-process CPU runs, after the final save
    and the last log line), and torchrun then reports a finished job as failed. Without torchrun: returns."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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

STREAMS = ("data", "sft_mask", "rollout", "hints", "inpaint", "pick", "mask", "eval", "dropout")  # every random stream


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
    frac = min(1.0, max(0, step - warmup) / max(1, total - warmup))
    shape = 1 - frac if decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return peak * min(1.0, (step + 1) / max(1, warmup)) * (min_ratio + (1 - min_ratio) * shape)


# ------------------------------------------------------------------------------------------- checkpoints

def full_state_dict(model):
    """The full (unsharded) state dict on CPU; every rank must call it, all get it."""
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(model, tok, path, extra_files, opt=None, keep_last=None):
    """HF-format weights (model.save) at `path`, plus the optimizer state (optim.pt) when `opt` is given, all
    gathered on rank 0 and written to path.saving, then renamed over `path`: a crash never leaves a torn
    checkpoint; a write that fails (a full disk) is deleted, and every rank exits with one line naming the last good
    one. keep_last (a run's step-N checkpoints): then the run's `latest` names `path` and only the newest keep_last
    step-N directories stay (0: all). Every rank calls it. Gathered, not sharded DCP: the output is one HF-format
    directory that loads at any world size (full 8B fine-tuning: 96 GB in rank 0's CPU memory, minutes a save)."""
    from safetensors import SafetensorError
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = full_state_dict(model)
    osd = None
    if opt is not None:
        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        path = path.rstrip("/")
        try:
            M.save(model, tok, path + ".saving", extra_files=extra_files, state_dict=sd)  # LoRA: merged + adapter/
            if osd is not None:
                torch.save(osd, os.path.join(path + ".saving", "optim.pt"))
            if os.path.exists(path):
                os.replace(path, path + ".old")
            os.replace(path + ".saving", path)
            shutil.rmtree(path + ".old", ignore_errors=True)
            if keep_last is not None:
                write_latest(os.path.dirname(path), os.path.basename(path), keep_last)
        except (OSError, RuntimeError, SafetensorError) as e:  # what a full disk raises in os, torch.save, safetensors
            parent, name = os.path.split(path)  # free what this save wrote (M.save's .tmp-* too); the rest is as it was
            for d in [path + ".saving"] + glob.glob(glob.escape(os.path.join(parent, f".tmp-{name}.saving")) + "*"):
                shutil.rmtree(d, ignore_errors=True)
            good = path if keep_last is None and os.path.exists(path) else None
            if keep_last is not None and os.path.exists(os.path.join(parent, "latest")):
                with open(os.path.join(parent, "latest")) as f:
                    good = os.path.join(parent, f.read().strip())
            error = [f"{path}: not saved ({type(e).__name__}: {e}); the last good checkpoint is {good or 'none yet'}"]
    if dist.is_initialized():
        dist.broadcast_object_list(error)  # (the barrier) every rank learns that rank 0's save failed
    if error[0]:
        raise SystemExit(error[0])


def write_latest(run_dir, name, keep_last):
    """Point run_dir/latest at checkpoint `name`, written last and atomically (a crash before it leaves the previous
    checkpoint in force), then delete all but the newest keep_last step-N checkpoints (0: keep all)."""
    with open(os.path.join(run_dir, "latest.tmp"), "w") as f:
        f.write(name + "\n")
    os.replace(os.path.join(run_dir, "latest.tmp"), os.path.join(run_dir, "latest"))
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(run_dir) if d.split("-")[-1].isdigit())
    for step in steps[:-keep_last] if keep_last else []:
        shutil.rmtree(os.path.join(run_dir, f"step-{step}"))


def latest_checkpoint(run_dir):
    """The checkpoint run_dir/latest names, or None before the first one. A damaged one (see broken) is skipped with a
    warning naming its bad file, for the newest intact older step-N (the steps after it are recomputed, identically);
    none intact: exits naming the newest's bad file. Anything else a crash can leave (a half-written *.saving or
    .tmp-* directory, a step-N newer than `latest`) is ignored with a warning."""
    pointer, name = os.path.join(run_dir, "latest"), None
    if os.path.exists(pointer):
        with open(pointer) as f:
            name = f.read().strip()
    newest = int(name.split("-")[1]) if name else -1
    for d in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        newer = d.split("-")[-1].isdigit() and int(d.split("-")[-1]) > newest
        if d.endswith(".saving") or d.startswith(".tmp-") or newer:
            warnings.warn(f"{run_dir}/{d}: incomplete checkpoint (not named by {pointer}), ignored")
    if name is None:
        return None
    older = sorted((int(d[5:]) for d in os.listdir(run_dir) if re.fullmatch(r"step-\d+", d)), reverse=True)
    damaged = []
    for ckpt in [os.path.join(run_dir, d) for d in [name] + [f"step-{s}" for s in older if s < newest]]:
        if not (problem := broken(ckpt)):
            return ckpt
        damaged.append(problem)
        warnings.warn(f"{problem}: damaged checkpoint, skipped")
    raise SystemExit(f"{run_dir}: no intact checkpoint to resume from; the newest is damaged: {damaged[0]}")


def broken(ckpt):
    """The first unreadable file of checkpoint ckpt and why, or None: the damage a crash, a full disk or a partial
    copy leaves (a missing or truncated file), not a flipped bit inside the tensor data (no checksums)."""
    from safetensors import SafetensorError, safe_open
    weights = sorted(glob.glob(os.path.join(glob.escape(ckpt), "**", "*.safetensors"), recursive=True))
    for f in [os.path.join(ckpt, n) for n in ("trainer_state.json", "config.json", "optim.pt")] + weights:
        try:
            if f.endswith(".safetensors"):
                safe_open(f, "pt").keys()  # the header, and the file's size against it
            elif f.endswith(".pt"):
                zipfile.ZipFile(f).close()  # the zip directory at the end of the file
            else:
                with open(f) as fh:
                    json.load(fh)
        except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as e:
            return f"{f}: {type(e).__name__}: {e}"
    return None if weights else f"{ckpt}: no *.safetensors"


def recover(path):
    """A single-directory checkpoint (sft.py) that a crash caught between its two renames: path.old is the last
    complete one. Rank 0 moves it back; a half-written path.saving is ignored with a warning."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        if os.path.exists(path + ".saving"):
            warnings.warn(f"{path}.saving: half-written checkpoint, ignored")
        if not os.path.exists(os.path.join(path, "trainer_state.json")) and os.path.exists(path + ".old"):
            warnings.warn(f"{path}: missing, restored from {path}.old (a crash interrupted a save)")
            shutil.rmtree(path, ignore_errors=True)
            os.replace(path + ".old", path)
    if dist.is_initialized():
        dist.barrier()


def fingerprint(path):
    """blake2b of a model directory's safetensors files, names and bytes (LLaDA-8B: 16 GB, ~20 s once per start):
    resume refuses a --model that no longer holds the weights the run began from. A hub id stands for itself."""
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(glob.glob(os.path.join(glob.escape(path), "*.safetensors"))):
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest() if os.path.isdir(path) else path


def resume_state(ckpt, model_path):
    """The run state to continue from: trainer_state.json of checkpoint ckpt (None: a fresh start at step 0), after
    checking that model_path (the reference policy, and a LoRA run's base) still holds the same weights."""
    fp = fingerprint(model_path)
    if ckpt is None:
        return dict(step=0, bad_steps=0, model_fingerprint=fp)
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        state = {"bad_steps": 0, **json.load(f)}
    if state.setdefault("model_fingerprint", fp) != fp:
        raise SystemExit(f"--model {model_path}: not the weights {ckpt} was trained from (fingerprint {fp}, "
                         f"checkpoint {state['model_fingerprint']}); resuming would change the reference policy")
    return state


def load_model(path, **kw):
    """model.load, with unreadable input (no such directory, a truncated safetensors file, a config.json of another
    architecture) as one line naming the path and the problem."""
    from safetensors import SafetensorError
    if not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") != 1):  # not owner/name
        raise SystemExit(f"{path}: cannot load a LLaDA checkpoint: no such directory")
    try:
        return M.load(path, **kw)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise SystemExit(f"{path}: cannot load a LLaDA checkpoint: {type(e).__name__}: {e}") from None


def load_optimizer(model, opt, path):
    """Load optim.pt written by save_checkpoint into `opt` (rank 0 reads it and broadcasts under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    osd = torch.load(os.path.join(path, "optim.pt"), weights_only=False) if rank0 else {}
    set_optimizer_state_dict(model, opt, osd,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized()))



# ------------------------------------------------------------------------------------ faults

def usage_error(problems):
    """Flags that cannot work together, if any: argparse's exit (status 2) at start-up, before a model loads."""
    for msg in problems:
        print(f"{os.path.basename(sys.argv[0])}: error: {msg}", file=sys.stderr)
    if problems:
        raise SystemExit(2)


_SIGTERM = []


def catch_sigterm():
    """SIGTERM (SLURM's notice before pre-emption; torchrun forwards it) only sets a flag: the training loop
    finishes its step, saves and exits 0 (stop_requested)."""
    _SIGTERM.clear()
    signal.signal(signal.SIGTERM, lambda signum, frame: _SIGTERM.append(signum))


def stop_requested(device):
    """True on every rank once any rank got SIGTERM: one all-reduce per step, so all ranks save the same step."""
    return all_max(int(bool(_SIGTERM)), device) > 0


def step_ok(loss, grad_norm, state, max_bad):
    """May this optimizer step be applied? A non-finite loss or grad norm (both global, so every rank agrees)
    skips it; state["bad_steps"] counts skips in a row, and max_bad of them stop the run before it saves again."""
    ok = math.isfinite(loss) and math.isfinite(grad_norm)
    state["bad_steps"] = 0 if ok else state["bad_steps"] + 1
    if state["bad_steps"] >= max_bad:
        raise FloatingPointError(f"{max_bad} optimizer steps in a row had a non-finite loss or grad norm: stopped; "
                                 f"the last checkpoint holds the last good state")
    return ok


def keep_rows(path, step):
    """Drop the rows of a metrics.jsonl that a killed run wrote after its last checkpoint (and a torn last line),
    so a resumed run appends exactly what an uninterrupted one would have written."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.endswith("\n")]  # a torn last line has no newline
    with open(path + ".tmp", "w") as f:
        f.writelines(line for line in lines if json.loads(line).get("step", 0) <= step)
    os.replace(path + ".tmp", path)
