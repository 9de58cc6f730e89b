"""Iterative unmasking for masked diffusion LMs: LLaDA's `generate()` (arXiv 2502.09992, Sec. 2.4 and App. B),
plus fixed hint positions for IGPO's inpainting (arXiv 2509.10396, Sec. 3.2), early exit, and a fast mode.

The answer starts as `gen_length` masks after the prompt and is filled block by block (semi-autoregressive). Each
block gets steps/num_blocks forward passes; at step i every masked position of the current block proposes a token
(argmax, or a float64 draw from softmax(logits / T) when temperature > 0), and the n_i proposals with the highest
confidence are committed: confidence = softmax probability of the proposed token ("low_confidence" remasking) or a
uniform draw ("random"). n_i spreads the block's masks evenly over its steps, remainder to the first steps (LLaDA
Eq. (8)'s linear schedule: the expected number of tokens unmasked per step is constant).

Hints (IGPO inpainting): `hints` (B, gen_length) holds hint ids at some positions and the mask id elsewhere. They
are written into the canvas before denoising, so they are never masked, never re-proposed, and are not counted in
any block's transfer budget: the sampler denoises only the remaining masks, as the official IGPO code does.

Early exit (`early_exit=True`, off by default): a committed token never changes, so once every position up to a
stop token (EOS) of a row is committed, the row's text up to that EOS is final. The row then leaves the batch (its
rows of the canvas, cache and generators are dropped; the other rows never read it), and its positions still
masked become EOS, committed at the step it left (tokens already committed after the stop stay, so `return_steps`
still describes the canvases the sampler really saw).
Exact in arithmetic and token-identical on CPU (tests); on a GPU a smaller batch may round differently, as any
change of micro-batch size does.

Fast mode (off by default; Fast-dLLM, arXiv 2505.22618, written from its description): `threshold` commits every
masked position of the block with confidence >= threshold, at least the most confident one, each step (a block
takes as many steps as it needs; `steps` is unused). `cache="prefix"` records every layer's keys/values at a
block's first step and then recomputes only the block and what follows it; "dual" recomputes only the block. Both
are approximations: the recorded positions do not see the tokens committed since the block began.

Deviations from LLaDA's generate.py (token-identical at temperature 0 on an fp32 model, see tests/test_sample.py):
 1. Proposals and confidences are computed for the masked positions of the current block only; the reference
    computes them for the whole canvas and then gives every other position -inf confidence: the same tokens.
 2. A proposal at T > 0 is drawn by inverse CDF from softmax(logits / T) computed in float64, with one float64
    uniform per position. The reference draws the same distribution by Gumbel-max with V float64 uniforms per
    position (exp(logits) / (-log u)^T): same distribution (chi-square test), 1 instead of V random numbers, but
    a different random stream. Rounding in the float64 cumulative sum moves a token's probability by at most
    ~V * 2^-53 of the total (1e-11 at V = 126k), far below the float32-Gumbel truncation that made LLaDA use
    float64. Each row draws from its own generator when `generator` is a list; a single generator draws for
    every row of the original batch, so early exit never shifts the other rows' draws.
 3. The low-confidence probability is exp(logit - logsumexp) in float32. LLaDA's generate.py: a softmax in the
    model dtype (bf16 on GPU); IGPO's official sampler: a float64 softmax. Only near-ties can commit differently.
 4. With cfg_scale > 0 only the prompt is masked in the unconditional branch (hints stay, they are part of x).
 5. The mask token itself is never proposed. The reference can commit it (then the canvas keeps a mask forever);
    a trained LLaDA never ranks it first, a random test model does. Confidences still use the full softmax, so
    whenever the reference's argmax is not the mask id the tokens are identical.
 6. A step in which no row has a token to commit (hints filled the block) skips its forward; its random draws are
    still made, so the tokens are those of the reference, which runs that forward and commits nothing.
Shapes: B batch, P prompt length, L gen_length, V vocab, K block_length.
"""
import torch
import torch.distributed as dist


def num_transfer_tokens(block_masks, steps):
    """block_masks (B, K) bool -> (B, steps) int: masks spread evenly over steps, remainder to the first steps."""
    n = block_masks.sum(dim=1, keepdim=True)
    counts = (n // steps).repeat(1, steps)
    counts += torch.arange(steps, device=n.device)[None, :] < (n % steps)
    return counts


def propose(logits, temperature, remasking, generator=None, forbid=None, u=None):
    """logits (..., V) -> proposed tokens x0 (...) and their confidence (...). u (..., 2): float64 uniforms, one
    for the draw and one for "random" confidence (drawn from `generator` when None). `forbid`: a token id never
    proposed (the mask id, deviation 5); the confidence still uses the unmodified softmax."""
    if u is None and (temperature > 0 or remasking == "random"):
        u = torch.rand((*logits.shape[:-1], 2), generator=generator, dtype=torch.float64, device=logits.device)
    if temperature > 0:
        s = logits.double() if temperature == 1 else logits.double().div_(temperature)
        if forbid is not None:
            s[..., forbid] = -torch.inf
        cdf = s.sub_(s.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)  # unnormalised, float64 (deviation 2)
        total = cdf[..., -1:]
        # u * total < total, so the draw never lands past the last token with mass (zero-mass tokens never win)
        v = torch.minimum(u[..., :1] * total, total.nextafter(total.new_zeros(())))
        x0 = torch.searchsorted(cdf, v, right=True).squeeze(-1)
    else:
        x0 = logits.max(dim=-1).indices  # the first maximum, as argmax, but vectorised on CPU (1.6x faster)
        bad = x0 == (-1 if forbid is None else forbid)
        if bad.any():  # rare after training: re-take the argmax without the forbidden id (cheaper than a copy)
            x0[bad] = logits[bad].index_fill(-1, torch.tensor([forbid], device=logits.device), -torch.inf).argmax(-1)
    if remasking == "low_confidence":
        lf = logits.float()
        conf = (lf.gather(-1, x0[..., None]).squeeze(-1) - lf.logsumexp(dim=-1)).exp_()  # softmax(l)[x0], no V write
    elif remasking == "random":
        conf = u[..., 1].float()
    else:
        raise ValueError(f"unknown remasking {remasking!r} (low_confidence | random)")
    return x0, conf


def _uniforms(generator, rows, n_rows, shape, device):
    """(len(rows), *shape) float64 uniforms for the rows still in the batch (`rows` index the original batch)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.rand(shape, generator=generator[r], dtype=torch.float64, device=device)
                            for r in rows.tolist()])
    return torch.rand((n_rows, *shape), generator=generator, dtype=torch.float64, device=device)[rows]


def _select(conf, masked, counts, threshold):
    """(B, K) bool, the positions to commit: LLaDA's counts[j] most confident masked positions of row j (conf: -inf
    elsewhere), or with a threshold (fast mode) every masked one with conf >= threshold plus the most confident."""
    if threshold is not None:
        top = torch.zeros_like(masked).scatter_(1, conf.argmax(dim=1, keepdim=True), True)
        return masked & ((conf >= threshold) | top)
    if len(set(counts)) == 1:  # the usual case: one batched topk
        return torch.zeros_like(masked).scatter_(1, conf.topk(counts[0], dim=-1).indices, True)
    sel = torch.zeros_like(masked)
    for j, k in enumerate(counts):
        sel[j, conf[j].topk(k).indices] = True
    return sel


@torch.no_grad()
def generate(model, prompt_ids, *, gen_length, block_length, steps, temperature=0.0, remasking="low_confidence",
             hints=None, attention_mask=None, cfg_scale=0.0, generator=None, return_steps=False, mask_id=None,
             early_exit=False, stop_ids=None, threshold=None, cache=None, lockstep=None):
    """prompt_ids (B, P) -> (B, P + L). attention_mask (B, P): key padding of a left-padded prompt batch; None is the
    no-mask mode of the reference runs. hints (B, L): hint ids, mask id elsewhere. generator: a torch.Generator or a
    list of B of them. return_steps: also return (B, L) int, the step b * steps_per_block + i at which each generated
    token was committed (with a threshold: steps_per_block = block_length; -1 for hints; with early exit, the positions
    still masked when the row left hold that step). early_exit: see the module docstring; stop_ids: the ids that end a
    row (default: EOS only; pass EOS and <|eot_id|> when the reader of the output cuts at either). threshold, cache:
    fast mode (module docstring); None, None is LLaDA's sampler. lockstep: None, or f(need: bool) -> bool called by
    every process at every step, True when any process needs that step's forward (under FSDP every rank must run every
    forward, so a process whose rows have nothing to do runs a discarded one; igpo/eval pass an all_reduce of `need`).
    Under torch.distributed without a lockstep, every process runs every forward: safe for FSDP, no skipped steps."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    eos = model.config.eos_token_id
    B, P = prompt_ids.shape
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if threshold is None and steps % num_blocks:
        raise ValueError(f"steps {steps} do not split evenly over {num_blocks} blocks")
    if cache not in (None, "prefix", "dual") or (cache and cfg_scale > 0):
        raise ValueError(f"cache must be None, 'prefix' or 'dual' (and cfg_scale 0 with a cache), got {cache!r}")
    steps_per_block = steps // num_blocks if threshold is None else block_length  # a threshold commits >= 1 a step
    assert not (prompt_ids == mask_id).any(), "the prompt must not contain the mask token"
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt_ids.device)
    x[:, :P] = prompt_ids
    if hints is not None:
        assert hints.shape == (B, gen_length), f"hints must be (B, gen_length), got {tuple(hints.shape)}"
        x[:, P:] = hints
    am = None if attention_mask is None else torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], 1)
    committed = torch.full((B, gen_length), -1, dtype=torch.long, device=x.device)
    out, out_steps = x.clone(), committed.clone()  # rows that leave early are written here
    rows = torch.arange(B, device=x.device)  # original index of each row still in the batch
    stops = torch.tensor(sorted(stop_ids or [eos]), device=x.device)
    draw = temperature > 0 or remasking == "random"
    if lockstep is None and dist.is_initialized() and dist.get_world_size() > 1:
        lockstep = lambda need: True  # noqa: E731
    step = 0
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        counts = num_transfer_tokens(x[:, s:e] == mask_id, steps_per_block).tolist()  # B lists of steps_per_block
        # a block's draws are made at its start: one call per row and block, not per step (same stream per row)
        u = None
        if draw and len(rows):
            u = _uniforms(generator, rows, len(out), (steps_per_block, block_length, 2), x.device)
        kv = None  # fast mode's cache, recorded by the block's first forward
        for i in range(steps_per_block):
            masked = x[:, s:e] == mask_id  # (B, K)
            k = [row[i] for row in counts]
            need = any(k) if threshold is None else bool(masked.any())  # no: deviation 6, or the block is done
            if lockstep is not None and lockstep(need) and not need:
                model(out[:1])
            if not need:
                step += 1
                continue
            if cache is None:
                logits = _forward(model, x, am, P, cfg_scale, mask_id)[:, s:e]  # (B, K, V)
            elif kv is None:
                kv = [[] for _ in range(model.config.n_layers)]
                logits = model(x, attention_mask=am, cache=kv)[:, s:e]
            else:
                end = e if cache == "dual" else x.shape[1]
                logits = model(x[:, s:end], attention_mask=am, cache=kv, start=s)[:, :block_length]
            at = masked.nonzero(as_tuple=True)  # half the block on average: half the float64 work (deviation 1)
            x0, conf = propose(logits[at], temperature, remasking, forbid=mask_id, u=None if u is None else u[:, i][at])
            proposal = x[:, s:e].clone()
            proposal[at] = x0
            conf_b = torch.full(masked.shape, -torch.inf, device=x.device)
            conf_b[at] = conf
            sel = _select(conf_b, masked, k, threshold)
            x[:, s:e] = torch.where(sel, proposal, x[:, s:e])
            committed[:, s - P:e - P].masked_fill_(sel, step)
            step += 1
            if early_exit:
                gen = x[:, P:]
                final = (gen != mask_id).cummin(dim=1).values  # nothing masked up to here: never changes again
                hit = final & torch.isin(gen, stops)
                done = hit.any(dim=1)
                if done.any():
                    fill = done[:, None] & (gen == mask_id)  # all after the stop; committed tokens stay as sampled
                    gen.masked_fill_(fill, eos)
                    committed.masked_fill_(fill, step - 1)
                    out[rows[done]], out_steps[rows[done]] = x[done], committed[done]
                    keep = ~done
                    x, committed, rows = x[keep], committed[keep], rows[keep]
                    counts = [row for row, d in zip(counts, done.tolist()) if not d]
                    u = None if u is None else u[keep]
                    am = None if am is None else am[keep]
                    kv = None if kv is None else [[t[keep] for t in layer] for layer in kv]
                    if not len(rows) and lockstep is None:
                        break
        if not len(rows) and lockstep is None:
            break
    out[rows], out_steps[rows] = x, committed
    assert not (out[:, P:] == mask_id).any(), "masks left after the last step"
    return (out, out_steps) if return_steps else out


def _forward(model, x, attention_mask, P, cfg_scale, mask_id):
    if cfg_scale <= 0:
        return model(x, attention_mask=attention_mask)
    un_x = x.clone()
    un_x[:, :P] = mask_id  # unconditional branch: prompt masked (deviation 4)
    am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    logits, un_logits = model(torch.cat([x, un_x]), attention_mask=am).chunk(2, dim=0)
    return un_logits + (cfg_scale + 1) * (logits - un_logits)


def until_stop(row, stop_ids):
    """A completion's tokens (1-D tensor or list) before its first stop id (EOS, <|eot_id|>): what a reader sees."""
    ids = row.tolist() if torch.is_tensor(row) else list(row)
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return row[:cut]
