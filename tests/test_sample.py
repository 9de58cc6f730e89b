"""sample.py: token parity with a straight transcription of LLaDA's generate(), and the sampler's properties."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sample


class Wrapped:
    """The reference calls model(x).logits; this adapter gives it that interface over our model."""
    def __init__(self, m):
        self.m = m

    def __call__(self, x, attention_mask=None):
        return type("Out", (), {"logits": self.m(x, attention_mask=attention_mask)})


class Counted:
    """The model with a count of its forward calls (NFE)."""
    def __init__(self, m):
        self.m, self.config, self.n = m, m.config, 0

    def __call__(self, *a, **kw):
        self.n += 1
        return self.m(*a, **kw)


@torch.no_grad()
def reference_generate(model, prompt, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
                       remasking="low_confidence", mask_id=127, attention_mask=None, hints=None):
    """LLaDA generate.py, transcribed step by step: full-canvas logits, exp/Gumbel noise, -inf outside the block,
    per-row topk over the whole canvas. hints: written into the canvas first, as the official IGPO code does."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    if hints is not None:
        x[:, prompt.shape[1]:] = hints
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones((prompt.shape[0], gen_length), dtype=attention_mask.dtype)], dim=-1)
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for nb in range(num_blocks):
        lo, hi = prompt.shape[1] + nb * block_length, prompt.shape[1] + (nb + 1) * block_length
        block_mask_index = x[:, lo:hi] == mask_id
        mask_num = block_mask_index.sum(dim=1, keepdim=True)
        base, rem = mask_num // steps, mask_num % steps
        ntt = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
        for i in range(mask_num.size(0)):
            ntt[i, :rem[i]] += 1
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                logits = model(torch.cat([x, un_x], dim=0), attention_mask=am).logits
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x, attention_mask=attention_mask).logits
            if temperature == 0:
                noisy = logits
            else:
                noisy = logits.to(torch.float64).exp() / (-torch.log(torch.rand_like(logits, dtype=torch.float64))) ** temperature
            x0 = torch.argmax(noisy, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                x0_p = torch.rand((x0.shape[0], x0.shape[1]))
            x0_p[:, hi:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=ntt[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


@pytest.mark.parametrize("gen,block,steps", [(16, 16, 16), (16, 16, 5), (24, 8, 12), (32, 8, 8), (20, 4, 15)])
def test_greedy_matches_llada_generate(tiny_model, gen, block, steps):
    prompt = torch.randint(2, 120, (3, 7))
    got = sample.generate(tiny_model, prompt, gen_length=gen, block_length=block, steps=steps)
    want = reference_generate(Wrapped(tiny_model), prompt, steps, gen, block)
    assert torch.equal(got, want)


def test_cfg_and_attention_mask_match_reference(tiny_model):
    prompt = torch.randint(2, 120, (2, 6))
    am = torch.ones(2, 6, dtype=torch.long)
    am[1, :2] = 0
    got = sample.generate(tiny_model, prompt, gen_length=16, block_length=8, steps=8, cfg_scale=1.5, attention_mask=am)
    want = reference_generate(Wrapped(tiny_model), prompt, 8, 16, 8, cfg_scale=1.5, attention_mask=am)
    assert torch.equal(got, want)


def test_bad_schedules_raise(tiny_model):
    p = torch.randint(2, 120, (1, 4))
    with pytest.raises(ValueError, match="multiple of block_length"):
        sample.generate(tiny_model, p, gen_length=20, block_length=8, steps=8)
    with pytest.raises(ValueError, match="split evenly"):
        sample.generate(tiny_model, p, gen_length=24, block_length=8, steps=10)


def test_transfer_schedule_by_hand():
    m = torch.zeros(2, 8, dtype=torch.bool)
    m[0, :7], m[1, :3] = True, True
    assert sample.num_transfer_tokens(m, 3).tolist() == [[3, 2, 2], [1, 1, 1]]
    assert sample.num_transfer_tokens(m, 4).tolist() == [[2, 2, 2, 1], [1, 1, 1, 0]]


def test_hints_and_prompt_fixed_and_exact_per_step_budget(tiny_model):
    B, P, L, K, steps = 3, 5, 24, 8, 12
    prompt = torch.randint(2, 120, (B, P))
    hints = torch.full((B, L), 127)
    hints[0, [0, 1, 2, 9, 23]] = torch.tensor([40, 41, 42, 43, 44])
    hints[1, 8:16] = 50  # a whole block of hints: that block has nothing to denoise
    out, when = sample.generate(tiny_model, prompt, gen_length=L, block_length=K, steps=steps, temperature=1.0,
                                hints=hints, generator=torch.Generator().manual_seed(0), return_steps=True)
    assert torch.equal(out[:, :P], prompt)
    is_hint = hints != 127
    assert torch.equal(out[:, P:][is_hint], hints[is_hint]) and (when[is_hint] == -1).all()
    assert not (out == 127).any() and (when[~is_hint] >= 0).all()
    spb = steps // (L // K)
    for j in range(B):
        for b in range(L // K):
            free = ~is_hint[j, b * K:(b + 1) * K]
            want = sample.num_transfer_tokens(free[None], spb)[0]
            got = torch.bincount(when[j, b * K:(b + 1) * K][free] - b * spb, minlength=spb)
            assert got.tolist() == want.tolist()


def test_seeded_sampling_is_reproducible_and_per_row(tiny_model):
    prompt = torch.randint(2, 120, (3, 5))
    kw = dict(gen_length=16, block_length=8, steps=8, temperature=1.2)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = sample.generate(tiny_model, prompt, generator=gens([1, 2, 3]), **kw)
    b = sample.generate(tiny_model, prompt, generator=gens([1, 2, 3]), **kw)
    assert torch.equal(a, b)
    alone = sample.generate(tiny_model, prompt[1:2], generator=gens([2]), **kw)
    assert torch.equal(alone, a[1:2])  # a row's rollout does not depend on its batch mates
    c = sample.generate(tiny_model, prompt, generator=gens([4, 5, 6]), **kw)
    assert not torch.equal(a, c)
    r1 = sample.generate(tiny_model, prompt, remasking="random", generator=torch.Generator().manual_seed(7), **kw)
    r2 = sample.generate(tiny_model, prompt, remasking="random", generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(r1, r2) and not (r1 == 127).any()


def test_gumbel_max_matches_softmax_distribution():
    """Chi-square goodness of fit of 40k Gumbel-max draws to softmax(logits / T), 5 categories (df = 4)."""
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    T, n = 1.2, 40_000
    x0, _ = sample.propose(logits.expand(1, n, 5), T, "low_confidence", torch.Generator().manual_seed(0))
    counts = torch.bincount(x0[0], minlength=5).double()
    expected = n * torch.softmax(logits.double() / T, dim=0)
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.47  # p = 0.001 critical value for df = 4
    # and the test has power: the untempered distribution is rejected
    wrong = n * torch.softmax(logits.double(), dim=0)
    assert ((counts - wrong) ** 2 / wrong).sum().item() > 18.47


def test_left_padded_batch_equals_unpadded_rows(tiny_model):
    a, b = torch.randint(2, 120, (1, 8)), torch.randint(2, 120, (1, 5))
    batch = torch.cat([a, torch.cat([torch.full((1, 3), 1), b], dim=1)])
    am = torch.ones(2, 8, dtype=torch.long)
    am[1, :3] = 0
    kw = dict(gen_length=16, block_length=8, steps=8)
    out = sample.generate(tiny_model, batch, attention_mask=am, **kw)
    assert torch.equal(out[0, 8:], sample.generate(tiny_model, a, **kw)[0, 8:])
    assert torch.equal(out[1, 8:], sample.generate(tiny_model, b, **kw)[0, 5:])


def test_greedy_with_hints_matches_reference_and_skips_empty_steps(tiny_model):
    """Hints fill block 1 of every row, so its 4 steps commit nothing: the sampler skips their forwards
    (deviation 6) and still commits the reference's tokens."""
    B, P, L, K, steps = 3, 5, 24, 8, 12
    prompt = torch.randint(2, 120, (B, P))
    hints = torch.full((B, L), 127)
    hints[:, 8:16] = torch.randint(2, 120, (B, 8))
    hints[0, [0, 3, 20]] = torch.tensor([40, 41, 42])
    counted = Counted(tiny_model)
    got = sample.generate(counted, prompt, gen_length=L, block_length=K, steps=steps, hints=hints)
    want = reference_generate(Wrapped(tiny_model), prompt, steps, L, K, hints=hints)
    assert torch.equal(got, want)
    assert counted.n == steps - steps // (L // K)


def test_draws_match_softmax_with_forbidden_token_and_per_row_streams():
    """Chi-square of the float64 inverse-CDF draws against softmax(logits / T) over the tokens other than the
    forbidden one, at T = 0.7 with 8 categories (df = 6), drawn through per-row generators (B = 4 rows)."""
    logits = torch.tensor([3.0, 1.0, 0.5, -1.0, 0.0, 2.5, -4.0, 1.5])
    T, B, n, forbid = 0.7, 4, 10_000, 5
    gens = [torch.Generator().manual_seed(s) for s in range(B)]
    u = torch.stack([torch.rand((n, 2), generator=g, dtype=torch.float64) for g in gens])
    x0, conf = sample.propose(logits.expand(B, n, 8), T, "low_confidence", forbid=forbid, u=u)
    assert not (x0 == forbid).any()
    assert torch.allclose(conf, torch.softmax(logits, 0)[x0])  # confidence: the full, untempered softmax
    counts = torch.bincount(x0.flatten(), minlength=8).double()
    keep = torch.arange(8) != forbid
    expected = B * n * torch.softmax(logits.double()[keep] / T, dim=0)
    chi2 = ((counts[keep] - expected) ** 2 / expected).sum().item()
    assert chi2 < 22.46  # p = 0.001 critical value for df = 6
