"""inpaint.py: chunking, hint ratios, placement (index and stretch), reserve, answer exclusion, entropy filter."""
import math

import pytest
import torch

import inpaint

MASK = 0


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def revealed_chunks(hint_mask_row, spans):
    """Indices of the chunks fully present in an index-placed row (chunks tile the trace, so nothing is partial)."""
    return [i for i, (s, e) in enumerate(spans) if hint_mask_row[s:e].all()]


@pytest.mark.parametrize("length,s_min,s_max", [(1, 5, 10), (37, 5, 10), (200, 5, 10), (50, 3, 3), (9, 4, 7)])
def test_chunks_tile_the_trace(length, s_min, s_max):
    for seed in range(5):
        spans = inpaint.chunk(list(range(length)), s_min, s_max, gen=gen(seed))
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap, no hole
        assert all(s_min <= e - s <= s_max for s, e in spans[:-1])
        assert 1 <= spans[-1][1] - spans[-1][0] <= s_max


def test_chunk_sizes_cover_the_whole_range():
    sizes = {e - s for seed in range(20) for s, e in inpaint.chunk(range(500), 5, 10, gen=gen(seed))[:-1]}
    assert sizes == set(range(5, 11))


@pytest.mark.parametrize("eta", [0.2, 0.25, 0.5, 0.6, 0.99, 1.0])
@pytest.mark.parametrize("n_chunks", [1, 3, 7, 10, 13])
def test_revealed_count_is_floor_eta_n(eta, n_chunks):
    s = 4
    trace = torch.arange(1, n_chunks * s + 1)
    spans = [(i * s, (i + 1) * s) for i in range(n_chunks)]
    hints, mask, etas = inpaint.build_hints(trace, 6, n_chunks * s + 30, MASK, gen=gen(), s_min=s, s_max=s,
                                            eta_low=eta, eta_high=eta)
    for g in range(6):
        assert len(revealed_chunks(mask[g], spans)) == math.floor(eta * n_chunks)
        assert mask[g].sum() == s * math.floor(eta * n_chunks)


def test_etas_sorted_in_range_and_count_matches():
    s, n_chunks, G = 5, 40, 8
    trace = torch.arange(1, n_chunks * s + 1)
    for seed in range(5):
        _, mask, etas = inpaint.build_hints(trace, G, n_chunks * s + 30, MASK, gen=gen(seed), s_min=s, s_max=s)
        assert etas.shape == (G,) and torch.all(etas[1:] >= etas[:-1])
        assert torch.all((etas >= 0.2) & (etas <= 0.6))
        for g in range(G):
            assert mask[g].sum() == s * math.floor(etas[g].item() * n_chunks)


def test_eta_zero_gives_no_hints():
    for reveal_last in (False, True):
        hints, mask, etas = inpaint.build_hints(torch.arange(1, 101), 8, 256, MASK, gen=gen(), eta_low=0.0,
                                                eta_high=0.0, reveal_last=reveal_last)
        assert torch.all(hints == MASK) and not mask.any() and torch.all(etas == 0)


def test_answer_never_revealed_without_flag():
    body, answer = torch.arange(1, 41), torch.arange(900, 905)
    trace = torch.cat([body, answer])
    for seed in range(10):
        hints, mask, _ = inpaint.build_hints(trace, 8, 128, MASK, gen=gen(seed), answer_start=40, eta_low=1.0,
                                             eta_high=1.0)
        assert not torch.isin(hints, answer).any()
        assert torch.equal(hints[:, :40], body.expand(8, 40))  # η = 1 reveals the whole body at its index


def test_flag_always_reveals_last_chunk_with_answer():
    trace = torch.cat([torch.arange(1, 41), torch.arange(900, 905)])
    for seed in range(10):
        last_s, last_e = inpaint.chunk(trace, 5, 10, gen=gen(seed))[-1]  # build_hints draws the chunks first
        hints, _, _ = inpaint.build_hints(trace, 8, 128, MASK, gen=gen(seed), answer_start=40, eta_low=0.2,
                                          eta_high=0.3, reveal_last=True)
        assert torch.all(hints[:, last_s:last_e] == trace[last_s:last_e])
        assert torch.all(hints[:, 44] == 904)


def test_index_placement_matches_trace():
    trace = torch.arange(1, 451)
    for seed, (lo, hi) in enumerate([(0.2, 0.6), (0.05, 0.1), (0.9, 1.0)]):  # small η: gaps > max_gap, uncapped
        hints, mask, _ = inpaint.build_hints(trace, 8, 512, MASK, gen=gen(seed), eta_low=lo, eta_high=hi)
        assert mask.any()
        positions = mask.nonzero()
        assert torch.equal(hints[mask], trace[positions[:, 1]])  # hint at position p is trace[p]


def test_place_stretch_hand_computed():
    spans = [(3, 8), (13, 18), (33, 38)]
    # factor 1.5: first start int(3*1.5)=4; gap 5 -> int(7.5)=7; gap 15 -> int(22.5)=22, capped at 12
    assert inpaint.place(spans, 1.5, 12, 100) == [(4, 9), (16, 21), (33, 38)]
    assert inpaint.place(spans, 1.5, 12, 35) == [(4, 9), (16, 21), (33, 35)]  # cut at the limit
    assert inpaint.place(spans, 1.5, 12, 33) == [(4, 9), (16, 21)]  # starts at the limit: dropped
    assert inpaint.place(spans, 1.0, math.inf, 100) == spans  # index placement is the identity


# 12 tokens, chunks (0,4) (4,8) (8,12), L_eff = 48 - 30 = 18, factor 18/12 = 1.5, η = 0.7 reveals 2 of 3 chunks.
# 20 tokens, chunks of 5, L_eff = 54 - 30 = 24, factor 24/20 = 1.2, η = 0.5 reveals 2 of 4 chunks.
# 10 tokens, chunks of 5, L_eff = 60 - 30 = 30, factor min(1.5, 30/10) = 1.5, η = 0.5 reveals 1 of 2 chunks.
# Expected (dest_start, dest_end, trace_start) for each set of revealed chunks.
STRETCH_CASES = [
    (10, 5, 60, 0.5, {(0,): [(0, 5, 0)], (1,): [(7, 12, 5)]}),
    (12, 4, 48, 0.7, {(0, 1): [(0, 4, 0), (4, 8, 4)], (0, 2): [(0, 4, 0), (10, 14, 8)],
                      (1, 2): [(6, 10, 4), (10, 14, 8)]}),
    (20, 5, 54, 0.5, {(0, 1): [(0, 5, 0), (5, 10, 5)], (0, 2): [(0, 5, 0), (11, 16, 10)],
                      (0, 3): [(0, 5, 0), (17, 22, 15)], (1, 2): [(6, 11, 5), (11, 16, 10)],
                      (1, 3): [(6, 11, 5), (17, 22, 15)], (2, 3): [(12, 17, 10), (17, 22, 15)]}),
]


@pytest.mark.parametrize("length,s,gen_length,eta,expected", STRETCH_CASES)
def test_stretch_end_to_end_hand_computed(length, s, gen_length, eta, expected):
    trace = torch.arange(101, 101 + length)
    seen = set()
    for seed in range(40):
        hints, mask, _ = inpaint.build_hints(trace, 4, gen_length, MASK, gen=gen(seed), s_min=s, s_max=s,
                                             eta_low=eta, eta_high=eta, stretch=True)
        for g in range(4):
            chosen = tuple(sorted({(t - 101) // s for t in hints[g][mask[g]].tolist()}))
            want = torch.full((gen_length,), MASK)
            for a, b, start in expected[chosen]:
                want[a:b] = trace[start:start + b - a]
            assert torch.equal(hints[g], want)
            seen.add(chosen)
    assert seen == set(expected)


def test_stretch_factor_is_one_when_trace_fills_window():
    trace = torch.arange(1, 301)  # longer than L_eff = 226: factor clamps to 1, so stretch = index placement
    for seed in range(5):
        a = inpaint.build_hints(trace, 8, 256, MASK, gen=gen(seed), stretch=True, max_gap=10**6)
        b = inpaint.build_hints(trace, 8, 256, MASK, gen=gen(seed), stretch=False)
        assert torch.equal(a[0], b[0])


def test_eta_counts_chunks_that_fit_the_window():
    # O truncates the trace to L_eff = 65 - 30 = 35 before chunking: N = 7 chunks of 5, η = 0.5 reveals 3 of them
    _, mask, _ = inpaint.build_hints(torch.arange(1, 301), 8, 65, MASK, gen=gen(), s_min=5, s_max=5,
                                     eta_low=0.5, eta_high=0.5)
    assert torch.all(mask.sum(1) == 15)


@pytest.mark.parametrize("stretch", [False, True])
@pytest.mark.parametrize("gen_length,reserve", [(64, 30), (256, 30), (40, 0), (20, 30)])
def test_hints_stay_inside_window_and_reserve(stretch, gen_length, reserve):
    trace = torch.arange(1, 301)
    for seed in range(5):
        hints, mask, _ = inpaint.build_hints(trace, 8, gen_length, MASK, gen=gen(seed), eta_low=0.6, eta_high=1.0,
                                             stretch=stretch, reserve=reserve, reveal_last=True)
        assert hints.shape == mask.shape == (8, gen_length)
        assert not mask[:, max(0, gen_length - reserve):].any()
        if gen_length > reserve:
            assert mask.any()


def test_same_seed_same_hints():
    trace = torch.arange(1, 201)
    for stretch in (False, True):
        a = inpaint.build_hints(trace, 8, 256, MASK, gen=gen(7), stretch=stretch)
        b = inpaint.build_hints(trace, 8, 256, MASK, gen=gen(7), stretch=stretch)
        c = inpaint.build_hints(trace, 8, 256, MASK, gen=gen(8), stretch=stretch)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not torch.equal(a[0], c[0])


def test_entropy_filter_exact():
    ent = torch.tensor([
        [0.1, 0.9, 0.5, 0.9, 0.3, 0.9, 0.2, 0.0, 0.4, 0.6, 5.0, 5.0],  # 10 hints -> keep 2; three-way tie at 0.9
        [0.3, 0.7, 0.7, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # 3 hints -> max(1, 0) = 1; tie at 0.7
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0],  # no hints -> keep all
    ])
    hint = torch.zeros(3, 12, dtype=torch.bool)
    hint[0, :10] = True
    hint[1, :3] = True
    want = torch.ones(3, 12, dtype=torch.bool)
    want[0, :10] = torch.tensor([0, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)  # ties go to the earlier position
    want[1, :3] = torch.tensor([0, 1, 0], dtype=torch.bool)
    assert torch.equal(inpaint.entropy_filter(ent, hint, tau=0.2), want)
    want[0, 5] = want[0, 9] = True  # τ = 0.4 keeps 4: the three 0.9s and 0.6
    assert torch.equal(inpaint.entropy_filter(ent, hint, tau=0.4), want)




def _dataset_items(name):
    """Real rows of each dataset the loaders support: ../shared/data (GSM8K, MATH) and the MetaMathQA fixture of
    tests/test_hub_data.py (its GSM- and MATH-style rows), as data.py turns them into items."""
    import data
    if name.startswith("metamath"):
        from test_hub_data import METAMATH
        kind = "GSM_AnsAug" if name == "metamath-gsm" else "MATH_AnsAug"
        items = [data._to_item("metamath", "train", i, r) for i, r in enumerate(METAMATH) if r["type"] == kind]
        return [it for it in items if it]  # a row without "The answer is:" is skipped (None)
    return [it for it in data.load_split(name, "train" if name != "math500" else "test")[:40]]


@pytest.mark.parametrize("name", ["metamath-gsm", "metamath-math", "math", "math500", "gsm8k"])
def test_hints_never_contain_the_final_answer_unless_reveal_last(name):
    """Every chunk revealed (η = 1): the hint text holds no answer statement (a \\boxed, MetaMathQA's "####" or "The
    answer is:"); MATH solutions box their answer mid-trace, before the response's own box. reveal_last on (O)
    reveals the answer."""
    import data
    from conftest import build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    items = _dataset_items(name)
    assert items and all(it["solution"] for it in items)
    boxed_in_trace = 0
    for it in items:
        text = data.format_response(it)
        boxed_in_trace += "\\boxed" in it["solution"]
        trace, start = inpaint.reference_trace(tok, text)
        hints, mask, _ = inpaint.build_hints(trace, 2, len(trace) + 8, tok.mask_token_id, gen=gen(), s_min=3,
                                             s_max=6, eta_low=1.0, eta_high=1.0, reserve=0, answer_start=start)
        shown = tok.decode(hints[0][mask[0]])
        assert shown and shown == tok.decode(trace[:start])  # every chunk before the answer, nothing after
        for statement in ("\\boxed", "####", "The answer is:"):
            assert statement not in shown, (name, it["id"], shown[-80:])
        hints, mask, _ = inpaint.build_hints(trace, 2, len(trace) + 8, tok.mask_token_id, gen=gen(), s_min=3,
                                             s_max=6, eta_low=1.0, eta_high=1.0, reserve=0, answer_start=start,
                                             reveal_last=True)
        assert f"\\boxed{{{it['answer']}}}" in tok.decode(hints[0][mask[0]])
    assert boxed_in_trace > 0 if name in ("metamath-math", "math", "math500") else boxed_in_trace == 0


def test_withhold_step_also_cuts_the_last_reasoning_line():
    """--withhold step: hints show neither the answer nor the last reasoning line (on the task its result is the
    answer, so hints would give it away); tag lines are not steps; a MATH-style line holding the box is the step."""
    import data
    tok = data.task_tokenizer()
    text = "<reasoning>\nfirst: 3+4=7\nsecond: 7-2=5\n</reasoning>\n<answer>\n\\boxed{5}\n</answer>"
    ids, start = inpaint.reference_trace(tok, text)
    assert tok.decode(ids[:start]) == "<reasoning>\nfirst: 3+4=7\nsecond: 7-2=5\n</reasoning>\n<answer>\n"
    ids, start = inpaint.reference_trace(tok, text, withhold_step=True)
    assert tok.decode(ids[:start]) == "<reasoning>\nfirst: 3+4=7\n"
    text = "<reasoning>\nWe add.\nSo it is $\\boxed{5}$.\n</reasoning>\n<answer>\n\\boxed{5}\n</answer>"
    ids, start = inpaint.reference_trace(tok, text, withhold_step=True)
    assert tok.decode(ids[:start]) == "<reasoning>\nWe add.\n"


def test_entropy_filter_keeps_floor_tau_n_when_tau_n_is_not_whole():
    """τ = 0.2 of n = 7 hints keeps ⌊1.4⌋ = 1, of n = 14 keeps ⌊2.8⌋ = 2, of n = 4 keeps max(1, ⌊0.8⌋) = 1: the
    highest entropies (a ceiling would keep 2, 3 and 1; a round 1, 3 and 1)."""
    ent = torch.zeros(3, 14)
    hint = torch.zeros(3, 14, dtype=torch.bool)
    hint[0, :7], hint[1, :], hint[2, 10:] = True, True, True
    ent[0, :7] = torch.tensor([0.5, 0.1, 0.9, 0.8, 0.3, 0.2, 0.4])        # top 1: position 2
    ent[1] = torch.arange(14.0) % 5                                      # 4.0 at 4 and 9, then 3.0 at 3, 8, 13
    ent[2, 10:] = torch.tensor([0.2, 0.7, 0.1, 0.3])                     # top 1: position 11
    keep = inpaint.entropy_filter(ent, hint, tau=0.2)
    assert (keep & hint).nonzero().tolist() == [[0, 2], [1, 4], [1, 9], [2, 11]]
    assert keep[~hint].all()  # every self-generated token stays


def test_reference_trace_cuts_at_the_first_of_several_boxes():
    """A MATH solution boxes its answer inside the trace and the response boxes it again: the answer starts at the
    first \\boxed (character 2 with the character-level test tokenizer); no box, no answer."""
    from conftest import build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    text = "a=\\boxed{1}, so b=\\boxed{2}.\n</reasoning>\n<answer>\n\\boxed{2}\n</answer>"
    ids, start = inpaint.reference_trace(tok, text)
    assert start == 2 and tok.decode(ids[:start]) == "a=" and tok.decode(ids) == text
    assert inpaint.reference_trace(tok, "no box here")[1] is None
