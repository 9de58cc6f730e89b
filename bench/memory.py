"""Memory budget per GPU of IGPO/SFT on LLaDA-8B under 8-way FSDP2, and a wall-time estimate per step.

Nothing here is a hand constant: the model is LLaDA-8B's config built on the meta device (no memory, seconds),
and every figure comes from its tensors.
- Static memory: numel x dtype size of the real parameter tensors, divided over the ranks: parameters (fp32 master
  weights for full fine-tuning; bf16 frozen base + fp32 adapters for LoRA), fp32 gradients and AdamW's two fp32
  states of the trainable ones, the reference policy (a bf16 copy; none with LoRA: the adapter is switched off),
  FSDP's unsharded bf16 buffers (the root's embeddings and head, which the root keeps gathered for the whole
  step, two blocks in flight, and the largest unsharded gradient with its fp32 reduce-scatter copy), and the
  unsharded fp32 gradients FSDP2 accumulates while micro-batches skip the reduce-scatter.
- Activations: MEASURED on the meta device with this repo's forward in bf16: a dispatch mode counts the bytes of
  every tensor an op creates until Python frees it, so the peak includes what autograd saves, the fp32 log-probs
  of the completion and the backward's transients. Parameter gradients are freed as soon as they are produced
  (FSDP reduce-scatters them per block; they are in the static part). Attention is counted as the
  memory-efficient SDPA kernel (no L x L matrix), the one a key-padding mask selects on GPU. Measured with 1 and
  2 blocks and extrapolated linearly to 32 (the blocks are identical; tests/test_memory.py checks the
  extrapolation against a direct measurement), which keeps the script at seconds.
- Rollouts: one sampler step (no grad): a forward over the canvas and the float64 Gumbel / fp32 softmax of one
  block, measured the same way.
- Time: an ESTIMATE from FLOPs (2 x matmul params x tokens + attention) at an assumed MFU; measure the MFU with
  bench/gpu_check.sh and pass --mfu.
Use:  python bench/memory.py                     # LLaDA-8B, 8 GPUs of 80 GB (prints in a few seconds)
      python bench/memory.py --world 16 --gpu_gb 141 --mfu 0.3
"""
import argparse
import os
import sys
import weakref
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import sample  # noqa: E402

GIB = 2**30
PEAK_TFLOPS = {"A100": 312, "H100": 989}  # dense bf16 tensor-core peaks (vendor datasheets, no sparsity)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors created inside the mode that are alive at once. A storage counts from the op that
    creates it until it is freed (a weakref finalizer); views and in-place results create no storage."""

    def __init__(self):
        super().__init__()
        self.now = 0
        self.peak = 0

    def _free(self, n):
        self.now -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for ret, t in zip(func._schema.returns, outs):
            if isinstance(t, torch.Tensor) and ret.alias_info is None:
                n = t.untyped_storage().nbytes()
                self.now += n
                self.peak = max(self.peak, self.now)
                weakref.finalize(t.untyped_storage(), self._free, n)
        return out


def build(lora_rank, n_layers=None, dtype=torch.bfloat16, lora_dtype=torch.bfloat16):
    """LLaDA-8B (optionally with fewer layers) on the meta device, in `dtype`, with adapters at lora_rank > 0."""
    kw = {} if n_layers is None else dict(n_layers=n_layers)
    with torch.device("meta"):
        net = M.LLaDA(M.ModelConfig(**kw)).to(dtype)
        M.add_lora(net, rank=lora_rank, alpha=64.0, dropout=0.05, dtype=lora_dtype)
    return net


def train_peak(net, batch, prompt_len, gen_len, ckpt):
    """Peak activation bytes of one micro-batch: forward, log-probs of the completion in fp32, backward."""
    net.gradient_checkpointing = ckpt
    net.train()
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
             for p in net.parameters() if p.requires_grad]
    ids = torch.zeros(batch, prompt_len + gen_len, dtype=torch.long, device="meta")
    attn = torch.ones_like(ids)
    with LiveBytes() as live, sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        logits = net(ids, attention_mask=attn)[:, -gen_len:].float()   # (b, gen, V), as the d1 estimator
        logp = logits.log_softmax(-1).gather(-1, ids[:, -gen_len:, None])
        del logits
        logp.sum().backward()
    for h in hooks:
        h.remove()
    return live.peak


def rollout_peak(net, batch, prompt_len, gen_len, block=32):
    """Peak bytes of one sampler step: the forward over the whole canvas and the proposal for one block."""
    net.eval()
    ids = torch.zeros(batch, prompt_len + gen_len, dtype=torch.long, device="meta")
    with LiveBytes() as live, sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), torch.no_grad():
        logits = net(ids, attention_mask=torch.ones_like(ids))[:, prompt_len:prompt_len + block]
        sample.propose(logits, 1.2, "low_confidence", forbid=net.config.mask_token_id)
    return live.peak


def extrapolated(measure, lora_rank, n_layers, *args):
    """measure(model, *args) of an n_layers model from models of 1 and 2 blocks: each block adds the same bytes."""
    one, two = (measure(build(lora_rank, k), *args) for k in (1, 2))
    return one + (n_layers - 1) * (two - one)


def nbytes(params):
    return sum(p.numel() * p.element_size() for p in params)


def static_gib(lora_rank, world):
    """{item: GiB per GPU} for full fine-tuning (lora_rank 0) or LoRA, from the parameter tensors."""
    net = build(lora_rank, dtype=torch.float32 if lora_rank == 0 else torch.bfloat16, lora_dtype=torch.float32)
    trainable = [p for p in net.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    t = net.model.transformer
    root16 = sum(p.numel() * 2 for n, p in net.named_parameters() if ".blocks." not in n)  # gathered bf16
    block16 = sum(p.numel() * 2 for p in t.blocks[0].parameters())
    root_grad = sum(p.numel() for n, p in net.named_parameters() if ".blocks." not in n and p.requires_grad)
    block_grad = sum(p.numel() for p in t.blocks[0].parameters() if p.requires_grad)
    ref = 0 if lora_rank else sum(p.numel() * 2 for p in net.parameters())  # a bf16 copy of the initial policy
    return {
        "parameters (sharded)": nbytes(net.parameters()) / world / GIB,
        "gradients (fp32, sharded)": n_train * 4 / world / GIB,
        "AdamW states (2 x fp32, sharded)": n_train * 8 / world / GIB,
        "reference policy (bf16, sharded)": ref / world / GIB,
        "FSDP unsharded buffers (bf16)": (root16 + 2 * block16 + max(root_grad, block_grad) * (2 + 4)) / GIB,
        # set_requires_gradient_sync(False) until the last micro-batch (igpo.py, sft.py): FSDP2 keeps every
        # unsharded gradient in reduce_dtype until then; syncing each micro-batch saves this at 1 x traffic each
        "unsharded grads while accumulating (fp32)": n_train * 4 / GIB,
    }, n_train


def fits(base, act, budget):
    return " | ".join(f"{base[c] + act[c]:.1f} {'fits' if base[c] + act[c] <= budget else 'OOM'}" for c in base)


def flops_per_token(c, seq_len):
    """Forward FLOPs per token: 2 x matmul parameters (blocks + head; the embedding is a lookup) + attention's
    QK^T and AV (2 x 2 x L x D per layer)."""
    hd = c.d_model // c.n_heads
    attn = c.d_model * (c.n_heads + 2 * c.n_kv_heads) * hd + c.n_heads * hd * c.d_model
    per_block = attn + 3 * c.d_model * c.mlp_hidden_size
    return 2 * (c.n_layers * per_block + c.d_model * c.embedding_size) + 4 * c.n_layers * seq_len * c.d_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=8, help="GPUs (FSDP shards)")
    p.add_argument("--gpu_gb", type=float, default=80, help="GPU memory, GiB (A100/H100 80GB = 80 GiB)")
    p.add_argument("--headroom", type=float, default=0.1, help="share kept free: CUDA context, NCCL, fragmentation")
    p.add_argument("--prompt_len", type=int, default=600, help="prompt tokens (official max_prompt_length)")
    p.add_argument("--gen_len", type=int, default=256, help="completion tokens (official)")
    p.add_argument("--lora_rank", type=int, default=128, help="LoRA rank of the LoRA column (official 128)")
    p.add_argument("--micro_batches", default="1,2,4,8", help="rows per forward/backward to tabulate")
    p.add_argument("--rollout_batch", type=int, default=8, help="rows per sampler forward (official 8)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per rollout batch, global (official 64)")
    p.add_argument("--G", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--steps", type=int, default=128, help="denoising steps per rollout")
    p.add_argument("--mu", type=int, default=4, help="optimizer steps per rollout batch")
    p.add_argument("--all_wrong", type=float, default=0.3, help="assumed share of groups re-sampled with hints")
    p.add_argument("--mfu", type=float, default=0.35, help="ASSUMED model FLOPs utilisation")
    a = p.parse_args(argv)
    total, non_emb = M.count_params(M.LLADA_8B)
    print(f"LLaDA-8B on the meta device: {total:,} parameters ({total / 1e9:.2f}B; {non_emb / 1e9:.2f}B without "
          f"embeddings); {a.world}-way FSDP2, bf16 compute; sequences {a.prompt_len} + {a.gen_len} tokens; GiB per GPU")
    static, n_train = memory_tables(a)
    time_estimate(a, M.LLADA_8B)
    return dict(total=total, static=static, n_train=n_train)


def memory_tables(a):
    columns = {"full FT": 0, f"LoRA r={a.lora_rank}": a.lora_rank}
    static, n_train = {}, {}
    for name, r in columns.items():
        static[name], n_train[name] = static_gib(r, a.world)
    print(f"\n| static, GiB per GPU | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for item in static["full FT"]:
        print(f"| {item} | {' | '.join(f'{static[c][item]:.2f}' for c in columns)} |")
    base = {c: sum(static[c].values()) for c in columns}
    print(f"| **sum** | {' | '.join(f'**{base[c]:.2f}**' for c in columns)} |")
    print(f"| trainable parameters | {' | '.join(f'{n_train[c] / 1e6:,.0f}M' for c in columns)} |")
    budget = a.gpu_gb * (1 - a.headroom)
    print(f"\n| one forward (+ backward), measured on meta | {' | '.join(f'peak {c}' for c in columns)} | "
          f"{' | '.join(f'total {c}' for c in columns)} |\n|---|{'---|' * 2 * len(columns)}")
    L, n = a.prompt_len + a.gen_len, M.LLADA_8B.n_layers
    for ckpt in (False, True):
        for b in [int(x) for x in a.micro_batches.split(",")]:
            act = {c: extrapolated(train_peak, r, n, b, a.prompt_len, a.gen_len, ckpt) / GIB
                   for c, r in columns.items()}
            print(f"| train {b} row(s) x {L} tokens, checkpointing {'on' if ckpt else 'off'} | "
                  f"{' | '.join(f'{act[c]:.2f}' for c in columns)} | {fits(base, act, budget)} |")
    roll = extrapolated(rollout_peak, 0, n, a.rollout_batch, a.prompt_len, a.gen_len) / GIB
    print(f"| rollout {a.rollout_batch} rows x {L} tokens, no grad | {' | '.join(f'{roll:.2f}' for _ in columns)} "
          f"| {fits(base, dict.fromkeys(columns, roll), budget)} |")
    print(f"\nfits = static sum + peak <= {budget:.0f} GiB ({a.gpu_gb:.0f} GiB less {a.headroom:.0%} headroom). "
          f"Rows are distinct rows: with d1's estimator (completion fully masked, p_mask_prompt 0) the G rollouts "
          f"of a prompt are one row, so the log-prob and update forwards run 1 row per {a.G} rollouts.")
    return static, n_train


def time_estimate(a, c):
    L = a.prompt_len + a.gen_len
    fpt = flops_per_token(c, L)
    rows = a.prompts * a.G
    rollout = rows * (1 + a.all_wrong) * a.steps * L * fpt                    # every step is a full-canvas forward
    logp = 2 * a.mu * a.prompts * L * fpt          # old + reference forwards; identical masked rows are one row
    train = {"full FT": 4, f"LoRA r={a.lora_rank}": 3}  # fwd + bwd (2x; LoRA: input grads only) + ckpt recompute
    print(f"\nESTIMATE of wall time (not measured): {fpt / 1e9:.1f} GFLOP per token forward; a rollout batch of "
          f"{rows} rollouts ({a.all_wrong:.0%} of groups re-sampled with hints) x {a.steps} steps = "
          f"{rollout / 1e15:,.0f} PFLOP; per optimizer step = rollout / mu + log-probs + update, at MFU {a.mfu}:")
    for gpu, tf in PEAK_TFLOPS.items():
        for col, k in train.items():
            per_step = rollout / a.mu + logp / a.mu + k * a.prompts * L * fpt
            sec = per_step / (a.world * tf * 1e12 * a.mfu)
            print(f"  {a.world} x {gpu} ({tf} TFLOP/s bf16), {col}: ~{sec:.0f} s per optimizer step, "
                  f"~{sec * 1000 / 3600:.0f} h per 1000 steps (rollouts {rollout / a.mu / per_step:.0%} of FLOPs)")


if __name__ == "__main__":
    main()
