"""A CPU stand-in for the wall between a GPU and its host: which tensors live on the training device, and a record
of every op that mixes them with host tensors the way CUDA refuses (issue 27, point 9).

DEVICE (cpu:0) is the training device handed to the code under test (e.g. in place of launch.setup_dist's). A tensor
is on it when its storage was made there: by a factory called with device=DEVICE, by .to(DEVICE) / .cuda() of a host
tensor (a copy, as on a GPU), by an op with an input on the device (views share the storage, so they follow), and a
.grad follows its parameter. .cpu(), .to("cpu") and factories without a device make host tensors. A device tensor
reports DEVICE as its .device, so `device=x.device` follows x. Allowed, because CUDA allows it:
  - a 0-dim host tensor as an operand: TensorIterator reads a CPU scalar as a number (never as a write's target);
  - host index tensors into a device tensor (x[idx] and x[idx] = v: the indices are copied over);
  - copy_, .to(), .data = and the like: the cross-device copies and metadata themselves.
Every other op that sees a device tensor beside a host tensor with elements is a mixing, and so is an all_reduce of a
host tensor (NCCL reduces device tensors only), and a draw from a generator made for the other side. Use:
    with DeviceCheck() as check:
        ...
    assert not check.found, "\\n".join(check.found)
"""
import collections
import os
import traceback

import torch
import torch.distributed as dist
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

DEVICE = torch.device("cpu", 0)  # != torch.device("cpu"), and CPU factories accept it
INDEXING = ("__getitem__", "__setitem__", "index_put_", "index_put")
NOT_COMPUTE = ("copy_", "__set__", "_has_compatible_shallow_copy_type", "backward")  # cross-device by design
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tensors(*trees):
    return [t for t in tree_flatten(trees)[0] if isinstance(t, torch.Tensor)]


def in_place(op):
    return op == "__setitem__" or (op.endswith("_") and not op.startswith("__"))  # x += y arrives as add_


class DeviceCheck(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.storages = {}  # storage address -> weak reference: the storages on DEVICE (held, so never reused)
        self.found = []     # "file:line: op: what mixed", in call order
        self.ran = collections.Counter()  # op -> calls with an input on the device (the check is not vacuous)

    def on_device(self, t):
        try:
            ref = self.storages.get(t.untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError):  # no storage (a wrapper subclass): host
            return False
        return ref is not None and not ref.expired()

    def tag(self, out):
        for t in tensors(out):
            s = t.untyped_storage()
            self.storages[s._cdata] = StorageWeakRef(s)

    def report(self, op, what):
        lines = [f"{os.path.relpath(f.filename, ROOT)}:{f.lineno}" for f in traceback.extract_stack()
                 if f.filename.startswith(ROOT) and f.filename != __file__ and "site-packages" not in f.filename]
        # the repo's lines, outermost first (CI's virtualenv lives inside the repo: its packages are not the repo's)
        where = list(dict.fromkeys(lines))[-2:]  # the caller and the line (a comprehension's frame repeats a line)
        self.found.append(f"{' > '.join(where)}: {op}: {what}")

    def describe(self, t):
        return f"{'device' if self.on_device(t) else 'host'} {tuple(t.shape)}"

    def check(self, op, args, kwargs):
        """Report the call if CUDA would refuse it (see the module docstring)."""
        written = tensors(args, kwargs)[0] if in_place(op) else None  # a write's target is never read as a number
        if op in INDEXING:
            index = [t for t in tensors(args[1]) if t.dim() > 0]
            if not self.on_device(args[0]) and any(self.on_device(t) for t in index):
                self.report(op, f"device index into host {tuple(args[0].shape)}")
            args = (args[0], *args[2:])
        ts = tensors(args, kwargs)
        dev = [t for t in ts if self.on_device(t)]
        host = [t for t in ts if not self.on_device(t) and (t.dim() > 0 or t is written)]
        if dev and host:
            self.report(op, ", ".join(self.describe(t) for t in ts))

    def move(self, func, op, args, kwargs):
        """.to / .cuda / .cpu: a copy when the tensor changes sides, as on a GPU (on a CPU torch returns self)."""
        src = args[0]
        if op == "to" and tensors(args[1:], kwargs):
            to_device = self.on_device(tensors(args[1:], kwargs)[0])  # .to(other): other's side
        elif op == "to":
            device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            to_device = self.on_device(src) if device is None else device == DEVICE
        else:
            to_device = op == "cuda"
        out = src if op == "cuda" else func(*args, **kwargs)
        if to_device != self.on_device(src) and out.untyped_storage()._cdata == src.untyped_storage()._cdata:
            out = out.clone()
        if to_device:
            self.tag(out)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = getattr(func, "__name__", str(func))
        if op == "__get__":  # attribute reads: .device answers for the device, .grad lives with its parameter
            out, attr = func(*args), func.__self__.__name__
            if attr == "device" and self.on_device(args[0]):
                return DEVICE
            if attr == "grad" and out is not None and self.on_device(args[0]):
                self.tag(out)
            return out
        if op in ("to", "cuda", "cpu"):
            return self.move(func, op, args, kwargs)
        factory = kwargs.get("device") is not None  # the output goes where `device` says; else where its inputs are
        if not factory and op not in NOT_COMPUTE:
            self.check(op, args, kwargs)
        out = func(*args, **kwargs)
        inputs = tensors(args, kwargs)[:1] if op in INDEXING or in_place(op) else tensors(args, kwargs)
        to_device = torch.device(kwargs["device"]) == DEVICE if factory else any(map(self.on_device, inputs))
        gen = kwargs.get("generator")
        if isinstance(gen, torch.Generator) and getattr(gen, "on_device", False) != to_device:
            self.report(op, f"a {'device' if to_device else 'host'} draw from a generator made for the other side")
        if to_device:
            self.ran[op] += 1
            self.tag(out)
        return out

    def all_reduce(self, t, *args, **kwargs):
        if not self.on_device(t):
            self.report("dist.all_reduce", f"host {tuple(t.shape)} (NCCL reduces device tensors only)")
        return self.real_all_reduce(t, *args, **kwargs)

    def __enter__(self):
        self.real_all_reduce, dist.all_reduce = dist.all_reduce, self.all_reduce
        self.real_generator, torch.Generator = torch.Generator, Generator
        return super().__enter__()

    def __exit__(self, *exc):
        dist.all_reduce, torch.Generator = self.real_all_reduce, self.real_generator
        return super().__exit__(*exc)


class Generator(torch.Generator):
    """torch.Generator that remembers whether it was made for DEVICE (CUDA draws need a CUDA generator, and back)."""
    def __new__(cls, device="cpu"):
        g = super().__new__(cls, device)
        g.on_device = torch.device(device) == DEVICE
        return g
