"""How every script starts and saves: flags from its config dataclass, torch.distributed from torchrun's
environment, FSDP2, named random streams, the data order, the lr schedule, atomic checkpoints and faults.

One script runs unchanged under `python X.py` and `torchrun --nproc_per_node=N X.py`: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK; NCCL is used on GPUs and gloo on CPUs, so a 2-process CPU run exercises every
collective. Every random draw of sft.py, igpo.py and eval.py comes from a generator seeded by
`seed(base, stream, *keys)`: runs are reproducible, resume exactly, and do not depend on the world size or the
batch layout. docs/faults.md lists the faults handled here, each with its test.
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
import pathlib
import re
import shutil
import signal
import sys
import warnings
import zipfile
from dataclasses import fields

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open

import model as M


# ------------------------------------------------------------------------------------------------ flags

def field_help(cls):
    """{field: the comment after it in cls's source, with the comment-only lines under it}: its --help text."""
    helps, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        code, _, comment = (part.strip() for part in line.partition("#"))
        if ":" in code and not code.startswith(("@", "class")):
            last = code.split(":")[0].strip()
            helps[last] = comment
        elif not code and comment and last:
            helps[last] += " " + comment
    return helps


def domain(text):
    """(check, label) of the domain a help text starts with, else None: an interval [lo, hi], (lo, inf) ... (a tuple:
    each element; None always passes) or choices {a|b|""}."""
    if m := re.match(r"([\[(])(-?[\d.e-]+), (-?[\d.e-]+|inf)([\])])", text):
        lo, hi = float(m[2]), float(m[3])
        inside = lambda v: (lo <= v if m[1] == "[" else lo < v) and (v <= hi if m[4] == "]" else v < hi)
        return (lambda v: v is None or all(inside(x) for x in (v if isinstance(v, tuple) else (v,)))), m[0]
    if m := re.match(r"\{([^}]*)\}", text):
        choices = [c.strip().strip('"') for c in m[1].split("|")]
        return (lambda v: v in choices), m[0]
    return None


def _flag_type(typ, paper_value):
    """argparse type of a field: a bool takes on/off, true/false, 1/0 or yes/no; a tuple a comma list (0.2,0.6)."""
    if typ is tuple:
        elem = type(paper_value[0])
        return lambda s: tuple(elem(x) for x in s.split(","))
    if typ is not bool:
        return typ

    def parse_bool(s):
        if s.lower() not in ("on", "true", "1", "yes", "off", "false", "0", "no"):
            raise argparse.ArgumentTypeError(f"expected on/off, true/false or 1/0, got {s!r}")
        return s.lower() in ("on", "true", "1", "yes")
    return parse_bool


def _shown(v):
    """A value as --help shows it: on/off, a comma list, or repr."""
    return ("on" if v else "off") if isinstance(v, bool) else ",".join(map(str, v)) if isinstance(v, tuple) else repr(v)


def parse_config(cls, presets, argv=None, doc="", official=None):
    """cls(**presets[--preset]) overridden by flags; the first preset is the no-flag run. --help shows each field's
    comment, its default, the paper's and the official run's; a value outside its domain() is a usage error."""
    first = next(iter(presets))
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=first, choices=list(presets),
                     help=f"base settings; flags override them (default {first!r}: the embedded CPU task)")
    base, paper, official = cls(**presets[pre.parse_known_args(argv)[0].preset]), cls(), official or {}
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0], parents=[pre])
    helps = field_help(cls)
    for f in fields(cls):
        o = f"; official {_shown(official[f.name])}" if f.name in official else ""
        shown = f"[default {_shown(getattr(base, f.name))}; paper {_shown(getattr(paper, f.name))}{o}]"
        p.add_argument(f"--{f.name}", type=_flag_type(f.type, getattr(paper, f.name)), default=getattr(base, f.name),
                       help=f"{helps.get(f.name, '')} {shown}".replace("%", "%%"))
    args = vars(p.parse_args(argv))
    for f in fields(cls):
        if (rule := domain(helps.get(f.name, ""))) and not rule[0](args[f.name]):
            p.error(f"--{f.name} {_shown(args[f.name])}: must be in {rule[1]}")
    return cls(**{f.name: args[f.name] for f in fields(cls)})


# ----------------------------------------------------------------------------------- distributed, FSDP2

def setup_dist(timeout_s=1800):
    """(rank, world, device); rank 0 of 1 without torchrun. A collective stuck past timeout_s (a rank died or hangs)
    raises, so every rank exits; a crash in native code prints every thread's Python stack (faulthandler)."""
    if not faulthandler.is_enabled():  # (pytest has its own)
        faulthandler.enable()
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return rank, world, torch.device("cuda" if cuda else "cpu")


def exit_worker():
    """A torchrun script's last line, after the process group is gone: os._exit(0) skips finalization, where gloo's
    C++ threads can abort (SIGABRT, 1 in 280 runs) and make torchrun fail a finished job. Without torchrun: returns."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def fsdp(model, device, param_dtype="auto", compile=None):
    """FSDP2 (a no-op without a process group): shard every block, then the root. Shards keep their dtype (fp32 master
    weights), modules compute in param_dtype ("auto": bf16 on GPU), gradients reduce in fp32; inputs are not cast, so
    RoPE's cos/sin stay fp32 as in LLaDA. compile: a torch.compile backend per block (parameter names unchanged)."""
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
    """sample.generate's lockstep (None without a process group): all ranks run a forward when any needs one."""
    return (lambda need: all_max(int(need), device) > 0) if dist.is_initialized() else None


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
    """A 63-bit seed for one draw of a named stream keyed by ints or strings (blake2b; hash() is salted per process)."""
    assert stream in STREAMS, f"unknown random stream {stream!r}"
    digest = hashlib.blake2b(repr((int(base), stream, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@functools.lru_cache(maxsize=4)
def _permutation(n, base, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed(base, "data", epoch))).tolist()


def data_order(n, base, positions):
    """Dataset indices at global sample positions: a seeded permutation per epoch, whatever the world size or resume."""
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
    """HF-format weights (and optim.pt) gathered on rank 0 (not sharded DCP: it loads at any world size; 8B: 96 GB of
    CPU memory), written to path.saving and renamed over path; a failed write (a full disk) is deleted and every rank
    exits naming the last good checkpoint. keep_last: a run's step-N (see write_latest). Every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    sd = full_state_dict(model)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    osd = None if opt is None else get_optimizer_state_dict(model, opt, options=full)
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
                good = os.path.join(parent, pathlib.Path(parent, "latest").read_text().strip())
            error = [f"{path}: not saved ({type(e).__name__}: {e}); the last good checkpoint is {good or 'none yet'}"]
    if dist.is_initialized():
        dist.broadcast_object_list(error)  # (the barrier) every rank learns that rank 0's save failed
    if error[0]:
        raise SystemExit(error[0])


def write_latest(run_dir, name, keep_last):
    """Point run_dir/latest at checkpoint `name`, atomically and last (a crash before leaves the previous one in
    force), then delete all but the newest keep_last step-N checkpoints (0: keep all)."""
    pathlib.Path(run_dir, "latest.tmp").write_text(name + "\n")
    os.replace(os.path.join(run_dir, "latest.tmp"), os.path.join(run_dir, "latest"))
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(run_dir) if d.split("-")[-1].isdigit())
    for step in steps[:-keep_last] if keep_last else []:
        shutil.rmtree(os.path.join(run_dir, f"step-{step}"))


def latest_checkpoint(run_dir):
    """The checkpoint run_dir/latest names (None before the first); if damaged (broken), with a warning, the newest
    intact older step-N; none intact: exits. Other crash leftovers (*.saving, .tmp-*, newer step-N) warn."""
    pointer = os.path.join(run_dir, "latest")
    name = pathlib.Path(pointer).read_text().strip() if os.path.exists(pointer) else None
    newest = int(name.split("-")[1]) if name else -1
    for d in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        newer = d.split("-")[-1].isdigit() and int(d.split("-")[-1]) > newest
        if d.endswith(".saving") or d.startswith(".tmp-") or newer:
            warnings.warn(f"{run_dir}/{d}: incomplete checkpoint (not named by {pointer}), ignored")
    if name is None:
        return None
    older = sorted((int(d[5:]) for d in os.listdir(run_dir) if re.fullmatch(r"step-\d+", d)), reverse=True)
    ckpts = [os.path.join(run_dir, d) for d in [name] + [f"step-{s}" for s in older if s < newest]]
    for ckpt in ckpts:
        if not (problem := broken(ckpt)):
            return ckpt
        warnings.warn(f"{problem}: damaged checkpoint, skipped")
    raise SystemExit(f"{run_dir}: no intact checkpoint to resume from; the newest is damaged: {broken(ckpts[0])}")


def broken(ckpt):
    """The first unreadable file of checkpoint ckpt and why, or None: a missing or truncated file (what a crash, a
    full disk or a partial copy leaves), not a flipped bit inside the tensor data (no checksums)."""
    weights = sorted(glob.glob(os.path.join(glob.escape(ckpt), "**", "*.safetensors"), recursive=True))
    for f in [os.path.join(ckpt, n) for n in ("trainer_state.json", "config.json", "optim.pt")] + weights:
        try:
            if f.endswith(".safetensors"):
                safe_open(f, "pt").keys()  # the header, and the file's size against it
            elif f.endswith(".pt"):
                zipfile.ZipFile(f).close()  # the zip directory at the end of the file
            else:
                json.loads(pathlib.Path(f).read_text())
        except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as e:
            return f"{f}: {type(e).__name__}: {e}"
    return None if weights else f"{ckpt}: no *.safetensors"


def recover(path):
    """sft.py's single checkpoint, when a crash came between save_checkpoint's two renames: rank 0 moves path.old
    (the last complete one) back; a half-written path.saving is ignored with a warning."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        if os.path.exists(path + ".saving"):
            warnings.warn(f"{path}.saving: half-written checkpoint, ignored")
        if not os.path.exists(os.path.join(path, "trainer_state.json")) and os.path.exists(path + ".old"):
            warnings.warn(f"{path}: missing, restored from {path}.old (a crash interrupted a save)")
            shutil.rmtree(path, ignore_errors=True)
            os.replace(path + ".old", path)
    if dist.is_initialized():
        dist.barrier()


def resume_state(ckpt, model_path):
    """trainer_state.json of checkpoint ckpt (None: a fresh start at step 0); refuses a model_path (the reference
    policy, a LoRA run's base) whose safetensors hash otherwise than at the run's start (LLaDA-8B: 16 GB, ~20 s)."""
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(glob.glob(os.path.join(glob.escape(model_path), "*.safetensors"))):
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    fp = h.hexdigest() if os.path.isdir(model_path) else model_path  # a hub id stands for itself
    if ckpt is None:
        return dict(step=0, bad_steps=0, model_fingerprint=fp)
    state = {"bad_steps": 0, **json.loads(pathlib.Path(ckpt, "trainer_state.json").read_text())}
    if state.setdefault("model_fingerprint", fp) != fp:
        raise SystemExit(f"--model {model_path}: not the weights {ckpt} was trained from (fingerprint {fp}, "
                         f"checkpoint {state['model_fingerprint']}); resuming would change the reference policy")
    return state


def load_model(path, **kw):
    """model.load; unreadable input (no directory, truncated weights, another architecture) exits in one line."""
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


# ------------------------------------------------------------------------------------------------ faults

def usage_error(problems):
    """Flags that cannot work together, if any: argparse's exit (status 2) at start-up, before a model loads."""
    for msg in problems:
        print(f"{os.path.basename(sys.argv[0])}: error: {msg}", file=sys.stderr)
    if problems:
        raise SystemExit(2)


_SIGTERM = []


def catch_sigterm():
    """SIGTERM (SLURM's pre-emption notice, forwarded by torchrun) sets a flag: the loop saves its step, exits 0."""
    _SIGTERM.clear()
    signal.signal(signal.SIGTERM, lambda signum, frame: _SIGTERM.append(signum))


def stop_requested(device):
    """True on every rank once any rank got SIGTERM: one all-reduce per step, so all ranks save the same step."""
    return all_max(int(bool(_SIGTERM)), device) > 0


def step_ok(loss, grad_norm, state, max_bad):
    """Apply this step? Not if the (global) loss or grad norm is non-finite; max_bad skips in a row stop the run."""
    ok = math.isfinite(loss) and math.isfinite(grad_norm)
    state["bad_steps"] = 0 if ok else state["bad_steps"] + 1
    if state["bad_steps"] >= max_bad:
        raise FloatingPointError(f"{max_bad} optimizer steps in a row had a non-finite loss or grad norm: stopped; "
                                 f"the last checkpoint holds the last good state")
    return ok


def keep_rows(path, step):
    """Drop a metrics.jsonl's rows after `step` and a torn last line: a resumed run appends what a whole run would."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.endswith("\n")]  # a torn last line has no newline
    with open(path + ".tmp", "w") as f:
        f.writelines(line for line in lines if json.loads(line).get("step", 0) <= step)
    os.replace(path + ".tmp", path)
