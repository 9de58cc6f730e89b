"""sample.py's early exit and fast mode: exactness where it must hold (the text up to the first stop token equals
the full run's; the cache reproduces the uncached forward on the canvas it was recorded on; a threshold that
never fires is LLaDA's one-token-per-step schedule), and the properties of the approximate parts."""
import pytest
import torch

import model
import sample
from test_sample import Counted

STOPS = set(range(1, 20))  # ~15% of a random model's tokens: most rows stop early, some never


def first_stop(row):
    hits = [i for i, t in enumerate(row.tolist()) if t in STOPS]
    return hits[0] if hits else None


@pytest.mark.parametrize("gen,block,steps,remasking,with_hints,per_row", [
    (24, 8, 12, "low_confidence", True, True), (20, 4, 15, "low_confidence", False, True),
    (32, 16, 8, "random", True, True), (24, 8, 24, "low_confidence", True, False)])
def test_early_exit_keeps_the_text_up_to_the_first_stop(tiny_model, gen, block, steps, remasking, with_hints,
                                                        per_row):
    B, P, exited_early = 6, 5, 0
    for seed in range(4):
        torch.manual_seed(seed)
        prompt = torch.randint(20, 120, (B, P))
        hints = None
        if with_hints:
            hints = torch.full((B, gen), 127)
            hints[:, 2:5] = torch.randint(20, 120, (B, 3))
            hints[1, block:block + 2] = 1  # a hinted stop token in row 1, with masks before it in block 0
        def run(early_exit):  # noqa: E306
            gens = ([torch.Generator().manual_seed(100 * seed + j) for j in range(B)] if per_row
                    else torch.Generator().manual_seed(seed))
            c = Counted(tiny_model)
            out, when = sample.generate(c, prompt, gen_length=gen, block_length=block, steps=steps, temperature=1.0,
                                        remasking=remasking, hints=hints, generator=gens, return_steps=True,
                                        early_exit=early_exit, stop_ids=STOPS)
            return out[:, P:], when, c.n
        full, full_when, full_nfe = run(False)
        fast, fast_when, fast_nfe = run(True)
        assert fast_nfe <= full_nfe
        for j in range(B):
            f = first_stop(full[j])
            assert f == first_stop(fast[j])
            if f is None:
                assert torch.equal(fast[j], full[j]) and torch.equal(fast_when[j], full_when[j])
                continue
            assert torch.equal(fast[j, :f + 1], full[j, :f + 1])
            assert torch.equal(fast_when[j, :f + 1], full_when[j, :f + 1])
            left = fast_when[j].max()  # the step at which the row left
            same = full_when[j] <= left  # committed by then in the full run: the same token at the same step
            assert torch.equal(fast[j][same], full[j][same]) and torch.equal(fast_when[j][same], full_when[j][same])
            assert (fast[j][~same] == tiny_model.config.eos_token_id).all() and (fast_when[j][~same] == left).all()
            exited_early += bool((~same).any())
    assert exited_early >= 4  # the property was exercised, not vacuous


def test_early_exit_stops_the_batch_and_saves_forwards(tiny_model):
    prompt = torch.randint(20, 120, (4, 5))
    hints = torch.full((4, 32), 127)
    hints[:, 0] = 1  # every row has a final stop token after its first step
    c = Counted(tiny_model)
    out, when = sample.generate(c, prompt, gen_length=32, block_length=8, steps=16, hints=hints, early_exit=True,
                                return_steps=True)
    assert c.n == 1 and (when[:, 1:] == 0).all()  # 2 tokens committed at step 0, the other 29 filled then
    assert ((out[:, 6:] == 1).sum(dim=1) >= 29).all()


def test_threshold_that_never_fires_is_one_token_per_step(tiny_model):
    """threshold > 1 commits only the most confident token each step: LLaDA's schedule with steps = gen_length,
    token for token and step for step, at T = 0 and T > 0 (same draws: one (K, K, 2) draw per row and block)."""
    prompt = torch.randint(2, 120, (3, 5))
    hints = torch.full((3, 24), 127)
    hints[0, [1, 9, 10]] = torch.tensor([40, 41, 42])
    for T in (0.0, 1.3):
        kw = dict(gen_length=24, block_length=8, temperature=T, hints=hints, return_steps=True)
        a = sample.generate(tiny_model, prompt, steps=24, generator=torch.Generator().manual_seed(3), **kw)
        b = sample.generate(tiny_model, prompt, steps=1, threshold=1.01, generator=torch.Generator().manual_seed(3),
                            **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_threshold_zero_fills_each_block_from_one_forward(tiny_model):
    """threshold 0 commits the whole block at once: block b is the argmax (mask id excluded) of one forward on
    the canvas with blocks < b filled; NFE = number of blocks."""
    P, L, K = 5, 24, 8
    prompt = torch.randint(2, 120, (2, P))
    c = Counted(tiny_model)
    out = sample.generate(c, prompt, gen_length=L, block_length=K, steps=1, threshold=0.0)
    assert c.n == L // K
    x = torch.cat([prompt, torch.full((2, L), 127)], dim=1)
    for b in range(L // K):
        with torch.no_grad():
            logits = tiny_model(x)[:, P + b * K:P + (b + 1) * K]
        logits[..., 127] = -torch.inf
        x[:, P + b * K:P + (b + 1) * K] = logits.argmax(-1)
    assert torch.equal(out, x)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_cached_forward_equals_full_forward_on_the_recorded_canvas(n_kv_heads):
    """At a block boundary the cache is recorded from the canvas itself, so recomputing the block (dual) or the
    block and everything after it (prefix) against the cache gives the full forward's logits (left padding and
    GQA included)."""
    torch.manual_seed(0)
    m = model.LLaDA(model.tiny_config(n_kv_heads=n_kv_heads)).init_weights(std=0.2).eval()
    x = torch.randint(2, 127, (3, 30))
    x[:, 18:] = 127
    am = torch.ones(3, 30, dtype=torch.long)
    am[1, :4] = 0
    s, e = 14, 22
    with torch.no_grad():
        full = m(x, attention_mask=am)
        kv = [[] for _ in range(m.config.n_layers)]
        rec = m(x, attention_mask=am, cache=kv)
        dual = m(x[:, s:e], attention_mask=am, cache=kv, start=s)
        prefix = m(x[:, s:], attention_mask=am, cache=kv, start=s)
    assert torch.equal(rec, full)
    assert torch.allclose(dual, full[:, s:e], atol=1e-5) and torch.allclose(prefix, full[:, s:], atol=1e-5)
    assert len(kv[0]) == 2 and kv[0][0].shape == (3, n_kv_heads, 30, 16)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_is_exact_when_no_position_reads_another(tiny_model, cache):
    """With v_proj = 0 attention carries nothing between positions, so a stale cache changes nothing: the cached
    sampler must then equal the uncached one (block refresh, span offsets, early-exit compaction of the cache)."""
    for blk in tiny_model.model.transformer.blocks:
        blk.v_proj.weight.data.zero_()
    prompt = torch.randint(20, 120, (5, 6))
    kw = dict(gen_length=24, block_length=8, steps=12, temperature=1.0, early_exit=True, stop_ids=STOPS,
              return_steps=True)
    for threshold in (None, 0.3):
        gens = lambda: [torch.Generator().manual_seed(j) for j in range(5)]  # noqa: E731
        a = sample.generate(tiny_model, prompt, generator=gens(), threshold=threshold, **kw)
        b = sample.generate(tiny_model, prompt, generator=gens(), threshold=threshold, cache=cache, **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_fast_mode_properties(tiny_model, cache):
    """Prompt and hints are never overwritten, nothing stays masked, every step commits at least one token per
    row that has masks, and seeded runs repeat."""
    B, P, L, K = 3, 5, 24, 8
    prompt = torch.randint(2, 120, (B, P))
    hints = torch.full((B, L), 127)
    hints[0, [0, 5, 17]] = torch.tensor([40, 41, 42])
    kw = dict(gen_length=L, block_length=K, steps=1, temperature=0.8, hints=hints, threshold=0.2, cache=cache,
              return_steps=True)
    out, when = sample.generate(tiny_model, prompt, generator=torch.Generator().manual_seed(0), **kw)
    again = sample.generate(tiny_model, prompt, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out, again[0]) and torch.equal(when, again[1])
    assert torch.equal(out[:, :P], prompt) and not (out == 127).any()
    is_hint = hints != 127
    assert torch.equal(out[:, P:][is_hint], hints[is_hint]) and (when[is_hint] == -1).all()
    for j in range(B):
        for b in range(L // K):
            w = when[j, b * K:(b + 1) * K][~is_hint[j, b * K:(b + 1) * K]]
            used = sorted(set(w.tolist()))
            assert used == list(range(b * K, b * K + len(used)))  # no step without a commit until the block is done


def test_cache_with_cfg_is_refused(tiny_model):
    with pytest.raises(ValueError, match="cache"):
        sample.generate(tiny_model, torch.randint(2, 120, (1, 4)), gen_length=8, block_length=8, steps=8,
                        cfg_scale=1.0, cache="dual")


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_lockstep_runs_every_forward_without_changing_the_result(tiny_model, threshold):
    """Another process that always needs a forward (FSDP): this one then calls the model at every step, even with
    all its rows finished or its block done, and its result is unchanged."""
    prompt = torch.randint(20, 120, (3, 5))
    hints = torch.full((3, 24), 127)
    hints[:, 8:16] = 50  # a fully hinted block: its steps have nothing to do here
    kw = dict(gen_length=24, block_length=8, steps=12, temperature=1.0, hints=hints, early_exit=True,
              stop_ids=STOPS, threshold=threshold, return_steps=True)
    alone, synced = Counted(tiny_model), Counted(tiny_model)
    a = sample.generate(alone, prompt, generator=torch.Generator().manual_seed(1), **kw)
    b = sample.generate(synced, prompt, generator=torch.Generator().manual_seed(1), lockstep=lambda need: True,
                        **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert alone.n < synced.n == (12 if threshold is None else 24)
