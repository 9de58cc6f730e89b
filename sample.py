"""Iterative unmasking for masked diffusion LMs: LLaDA's `generate()` (arXiv 2502.09992, Sec. 2.4 and App. B),
plus fixed hint positions for IGPO's inpainting (arXiv 2509.10396, Sec. 3.2).

The answer starts as `gen_length` masks after the prompt and is filled block by block (semi-autoregressive). Each
block gets steps/num_blocks forward passes; at step i every masked position of the current block proposes a token
(argmax, or Gumbel-max in float64 when temperature > 0), and the n_i proposals with the highest confidence are
committed: confidence = softmax probability of the proposed token ("low_confidence" remasking) or a uniform draw
("random"). n_i spreads the block's masks evenly over its steps, remainder to the first steps (LLaDA Eq. (8)'s
linear schedule: the expected number of tokens unmasked per step is constant).

Hints (IGPO inpainting): `hints` (B, gen_length) holds hint ids at some positions and the mask id elsewhere. They
are written into the canvas before denoising, so they are never masked, never re-proposed, and are not counted in
any block's transfer budget: the sampler denoises only the remaining masks, as the official IGPO code does.

Deviations from LLaDA's generate.py (token-identical at temperature 0 on an fp32 model, see tests/test_sample.py):
 1. Proposals, noise and confidences are computed for the current block only; the reference computes them for the
    whole canvas and then gives every position outside the block -inf confidence, so it commits the same tokens.
 2. Gumbel-max is computed as argmax(logits/T - log e) in float64 with e ~ Exp(1) (e = -log u), which has the
    reference's argmax (exp(logits) / (-log u)^T) without overflowing exp and with one log less; e is drawn per
    row when `generator` is a list, so one rollout does not depend on the others in its batch.
 3. The low-confidence probabilities are a float32 softmax (the reference uses the model dtype, bf16 on GPU).
 4. With cfg_scale > 0 only the prompt is masked in the unconditional branch (hints stay, they are part of x).
 5. The mask token itself is never proposed. The reference can commit it (then the canvas keeps a mask forever);
    a trained LLaDA never ranks it first, a random test model does. Confidences still use the full softmax, so
    whenever the reference's argmax is not the mask id the tokens are identical.
Shapes: B batch, P prompt length, L gen_length, V vocab, K block_length.
"""
import torch
import torch.nn.functional as F


def num_transfer_tokens(block_masks, steps):
    """block_masks (B, K) bool -> (B, steps) int: masks spread evenly over steps, remainder to the first steps."""
    n = block_masks.sum(dim=1, keepdim=True)
    counts = (n // steps).repeat(1, steps)
    counts += torch.arange(steps, device=n.device)[None, :] < (n % steps)
    return counts


def _rand(shape, generator, dtype, device, exponential=False):
    """Uniform (or Exp(1) = -log uniform) draws of shape (B, ...): one stream per row when `generator` is a list
    of per-row generators."""
    def draw(shp, g):
        x = torch.empty(shp, dtype=dtype, device=device)
        return x.exponential_(generator=g) if exponential else x.uniform_(generator=g)
    if isinstance(generator, (list, tuple)):
        return torch.stack([draw(shape[1:], g) for g in generator])
    return draw(shape, generator)


def propose(logits, temperature, remasking, generator=None, forbid=None):
    """logits (B, K, V) -> proposed tokens x0 (B, K) and their confidence (B, K). `forbid`: a token id never
    proposed (the mask id, deviation 5); the confidence still uses the unmodified softmax."""
    scores = logits.double() if temperature > 0 else logits
    if forbid is not None:
        scores = scores.index_fill(-1, torch.tensor([forbid], device=logits.device), -torch.inf)
    if temperature > 0:
        e = _rand(logits.shape, generator, torch.float64, logits.device, exponential=True)  # e = -log u
        x0 = (scores / temperature - e.log_()).argmax(dim=-1)  # Gumbel-max in float64: -log(-log u) is Gumbel
    else:
        x0 = scores.argmax(dim=-1)
    if remasking == "low_confidence":
        conf = torch.gather(F.softmax(logits.float(), dim=-1), -1, x0[..., None]).squeeze(-1)
    elif remasking == "random":
        conf = _rand(x0.shape, generator, torch.float32, logits.device)
    else:
        raise ValueError(f"unknown remasking {remasking!r} (low_confidence | random)")
    return x0, conf


@torch.no_grad()
def generate(model, prompt_ids, *, gen_length, block_length, steps, temperature=0.0, remasking="low_confidence",
             hints=None, attention_mask=None, cfg_scale=0.0, generator=None, return_steps=False, mask_id=None):
    """prompt_ids (B, P) -> (B, P + L). attention_mask (B, P): key padding of a left-padded prompt batch; None is
    the no-mask mode of the reference runs. hints (B, L): hint ids, mask id elsewhere. generator: a
    torch.Generator or a list of B of them. return_steps: also return (B, L) int, the global step at which each
    generated token was committed (-1 for hints)."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    B, P = prompt_ids.shape
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps {steps} do not split evenly over {num_blocks} blocks")
    steps_per_block = steps // num_blocks
    assert not (prompt_ids == mask_id).any(), "the prompt must not contain the mask token"
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt_ids.device)
    x[:, :P] = prompt_ids
    if hints is not None:
        assert hints.shape == (B, gen_length), f"hints must be (B, gen_length), got {tuple(hints.shape)}"
        x[:, P:] = hints
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, gen_length)], dim=1)
    committed = torch.full((B, gen_length), -1, dtype=torch.long, device=x.device)
    for b in range(num_blocks):
        s, e = P + b * block_length, P + (b + 1) * block_length
        counts = num_transfer_tokens(x[:, s:e] == mask_id, steps_per_block)  # (B, steps_per_block)
        for i in range(steps_per_block):
            logits = _forward(model, x, attention_mask, P, cfg_scale, mask_id)[:, s:e]  # (B, K, V)
            x0, conf = propose(logits, temperature, remasking, generator, forbid=mask_id)
            masked = x[:, s:e] == mask_id
            conf = torch.where(masked, conf, -torch.inf)
            k = counts[:, i]
            if (k == k[0]).all():  # the usual case: one batched topk
                idx = conf.topk(int(k[0]), dim=-1).indices  # (B, k)
                sel = torch.zeros_like(masked).scatter_(1, idx, True)
            else:
                sel = torch.zeros_like(masked)
                for j in range(B):
                    sel[j, conf[j].topk(int(k[j])).indices] = True
            x[:, s:e] = torch.where(sel, x0, x[:, s:e])
            committed[:, s - P:e - P][sel] = b * steps_per_block + i
    assert not (x[:, P:] == mask_id).any(), "masks left after the last step"
    return (x, committed) if return_steps else x


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
