"""Hints for IGPO: cut a reference reasoning trace into chunks, reveal a random fraction of them, place them.

For an all-wrong group, each of the G new rollouts gets its own hint ratio η_i ~ U[η_low, η_high] (sorted); the
reference trace (final answer excluded) is cut into N contiguous chunks of random size in [s_min, s_max], ⌊η_i·N⌋
random chunks are revealed at their trace index (or "stretched", as the official code does), and the sampler keeps
them fixed while it denoises the rest (paper: the IGPO method section and its overview, Fig. 2).
The last `reserve` positions of the window stay free so the model can write its own answer. `entropy_filter` keeps,
per inpainted sample, only the top-τ hint tokens by old-policy entropy in the loss (paper, "entropy-based filtering").
No section/equation numbers: they could not be checked against the paper here. Official code: facebookresearch/igpo,
utils/generate.py (create_spacing_scaled_inpainting_sequence, scale_chunk_positions) and trainer_igpo.py.

Behaves differently from the paper (P) or the official code (O); the flag names are igpo.py's:
  reveal count   ⌊η·N⌋ chunks (P). O masks ⌊(1-η)·N⌋ chunks and reveals the rest, i.e. one chunk more whenever
                 η·N is not an integer (no flag: P's count).
  short tail     a tail shorter than s_min is kept as the last chunk. O drops it (never revealed, not in N).
  --reveal_last  off (P): answer tokens are excluded. O's training path always reveals the last chunk of the
                 trace it is given (its `inpaint_last_chunk_end` flag is never passed down, so the callee's default
                 True applies); on also chunks the whole trace, answer included.
  --stretch      off (P): placement at the trace index. O always stretches: factor clamp(L_eff/len, 1, 1.5),
                 gaps between revealed chunks capped at `max_gap` (O's max_spacing, 100).
  --rechunk      on (O): each of the G rollouts cuts the trace into its own random chunks; off: one chunking per
                 group (the paper does not say).
  η = 0          a row with η = 0 gets no hints even with reveal_last (O skips inpainting when its smallest η is 0).
Notes (same distribution, different bookkeeping): entropy ties are broken by position (stable sort; O's
torch.topk leaves ties unspecified); the filter's candidates are the hint tokens that are in the loss (O: the
hint positions masked in that iteration's forward, which under d1 masking is every hint); all draws come from a
passed torch.Generator (O reseeds the global `random`/torch RNGs).

Shapes: G group (rollouts per prompt), B batch, L gen length, N number of chunks of one trace.
"""
import math
import re

import torch


def chunk(trace, s_min=5, s_max=10, *, gen):
    """Half-open spans [(start, end), ...] that tile range(len(trace)); sizes ~ U{s_min..s_max}, last may be short."""
    spans, start = [], 0
    while start < len(trace):
        size = int(torch.randint(s_min, s_max + 1, (1,), generator=gen))
        spans.append((start, min(start + size, len(trace))))
        start = spans[-1][1]
    return spans


def draw_etas(G, eta_low=0.2, eta_high=0.6, *, gen):
    """Hint ratio per rollout, η ~ U[η_low, η_high], sorted ascending as in O (trainer_igpo.py)."""
    etas = torch.rand(G, generator=gen, dtype=torch.float64) * (eta_high - eta_low) + eta_low
    return etas.sort().values


def place(spans, factor, max_gap, limit):
    """Destination spans of the revealed `spans` (sorted): first start scaled, later gaps scaled and capped at
    max_gap, all cut at `limit` (O's scale_chunk_positions). factor=1, max_gap=inf gives the trace index itself."""
    out = []
    for i, (s, e) in enumerate(spans):
        start = int(s * factor) if i == 0 else out[-1][1] + min(int((s - spans[i - 1][1]) * factor), max_gap)
        if start >= limit:
            break
        out.append((start, min(start + e - s, limit)))
    return out


def build_hints(trace, G, gen_length, mask_id, *, gen, answer_start=None, s_min=5, s_max=10, eta_low=0.2,
                eta_high=0.6, stretch=False, max_gap=100, reserve=30, reveal_last=False, rechunk=False):
    """Hint rows for G inpainted rollouts of one prompt. trace: 1-D token ids of the reference solution;
    trace[answer_start:] is its final answer (None: no answer in it). Returns hints (G, L) long (hint ids, mask_id
    elsewhere: the sampler's format), hint_mask (G, L) bool, etas (G,)."""
    trace = torch.as_tensor(trace, dtype=torch.long)
    if not reveal_last and answer_start is not None:
        trace = trace[:answer_start]  # P: hints never contain the final answer
    limit = max(0, gen_length - reserve)  # O: the last 30 positions stay free for the model's own ending
    trace = trace[:limit]  # O truncates before chunking, so η is a fraction of what can be shown
    spans = chunk(trace, s_min, s_max, gen=gen)
    etas = draw_etas(G, eta_low, eta_high, gen=gen)
    factor = min(1.5, limit / max(len(trace), 1)) if stretch else 1.0  # >= 1: trace was cut to limit
    hints = torch.full((G, gen_length), mask_id, dtype=torch.long)
    for g, eta in enumerate(etas.tolist()):
        if rechunk and g > 0:  # O: every hinted rollout draws its own chunk boundaries
            spans = chunk(trace, s_min, s_max, gen=gen)
        k = math.floor(eta * len(spans))
        picked = set(torch.randperm(len(spans), generator=gen)[:k].tolist())
        if reveal_last and eta > 0 and spans:
            picked.add(len(spans) - 1)
        revealed = [spans[i] for i in sorted(picked)]
        for (s, _), (a, b) in zip(revealed, place(revealed, factor, max_gap if stretch else math.inf, limit)):
            hints[g, a:b] = trace[s:s + b - a]
    return hints, hints != mask_id, etas


def reference_trace(tok, text, withhold_step=False):
    """Token ids of a reference response and the index where its final answer starts: its first \\boxed (None if
    it has none). Hints are cut from trace[:answer_start] (P: hints never contain the answer). The first box, not
    the last: a MATH solution boxes its answer inside the trace, before the response's own <answer> box.
    withhold_step: also cut the last reasoning line before it (the step whose result is the answer; a tag line
    such as </reasoning> is not a step)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    cut = text.find("\\boxed")
    if cut < 0:
        return enc["input_ids"], None
    if withhold_step:  # back to the start of the last line before the box that is neither blank nor a tag
        starts = [0] + [m.end() for m in re.finditer("\n", text[:cut])]
        lines = [(a, text[a:b].strip()) for a, b in zip(starts, starts[1:] + [cut])]
        cut = next((a for a, line in reversed(lines) if line and not re.fullmatch(r"</?\w+>", line)), cut)
    return enc["input_ids"], next((i for i, (s, _) in enumerate(enc["offset_mapping"]) if s >= cut), None)


def entropy_filter(entropy, hint_mask, tau=0.2):
    """(B, L) keep mask for the loss: every non-hint token, and per row the top max(1, ⌊τ·n⌋) of its n hint
    tokens by old-policy entropy (O's entropy_clipping_ratio_inpaint = 0.2). A row without hints keeps all."""
    assert entropy.shape == hint_mask.shape
    keep = ~hint_mask
    for b in range(hint_mask.shape[0]):
        idx = hint_mask[b].nonzero().squeeze(1)
        k = max(1, math.floor(tau * idx.numel()))
        order = torch.sort(entropy[b, idx], descending=True, stable=True).indices
        keep[b, idx[order[:k]]] = True
    return keep
