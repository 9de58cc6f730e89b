"""igpo.py: advantages, replacement, loss vs hand-computed values, micro-batch invariance, zero-gradient groups,
log-prob parity, 1 vs 2 processes, and an end-to-end smoke run."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import data
import igpo
import launch
import model as M
from conftest import failure_log, save_tiny_task_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN = math.log


@pytest.fixture(scope="module")
def task_ckpt(tmp_path_factory):
    """A tiny random LLaDA with the embedded task's tokenizer, saved in the HF format."""
    return save_tiny_task_model(tmp_path_factory.mktemp("ck") / "tiny-task")


def small_cfg(task_ckpt, **kw):
    base = ["--model", task_ckpt, "--steps", "2", "--mu", "2", "--prompts_per_step", "2", "--G", "4",
            "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "4", "--micro_batch", "8",
            "--chunk", "2,3", "--reserve", "2", "--eval_limit", "0", "--warmup", "1", "--beta", "0"]  # no reference model
    for k, v in kw.items():
        base += [f"--{k}", str(v)]
    return launch.parse_config(igpo.Config, igpo.PRESETS, base)


def test_group_advantages_sum_to_zero_and_vanish_on_uniform_groups():
    total = torch.tensor([3.5, 0.0, 0.25, 3.0, 1.0, 1.0, 1.0, 1.0])
    adv = igpo.group_advantages(total, 4)
    torch.testing.assert_close(adv[:4], torch.tensor([3.5, 0.0, 0.25, 3.0]) - 6.75 / 4)
    assert abs(adv[:4].sum()) < 1e-6 and torch.equal(adv[4:], torch.zeros(4))


def test_all_wrong_ignores_format():
    correct = torch.tensor([0.0, 0, 0, 0, 0, 3, 0, 0, 3, 3, 3, 3])
    assert igpo.all_wrong(correct, 4).tolist() == [True, False, False]


def test_replacement_only_correct_and_at_most_floor_lambda_g():
    G = 8
    for n_correct, lam, want in [(0, 0.5, 0), (2, 0.5, 2), (7, 0.5, 4), (8, 0.3, 2), (3, 0.0, 0)]:
        new_correct = torch.zeros(G)
        new_correct[torch.randperm(G)[:n_correct]] = 3.0
        pick = igpo.pick_replacements(new_correct, lam, torch.Generator().manual_seed(0))
        K = len(pick)
        assert K == want == min(n_correct, math.floor(lam * G))
        assert (new_correct[pick] == 3.0).all()  # every replacement is a verified-correct inpainted rollout
        assert len(set(pick.tolist())) == K  # none used twice


def test_rescue_overwrites_the_first_k_rows_of_all_wrong_groups_only(task_ckpt, monkeypatch):
    cfg = small_cfg(task_ckpt, G=4, lam=0.5)
    G, L = 4, 5
    comp = torch.zeros(2 * G, L, dtype=torch.long)
    correct = torch.tensor([0.0] * G + [3.0, 0, 0, 0])  # group 0 all wrong, group 1 not
    b = igpo.Batch(idx=0, prompt=None, attn=None, comp=comp, order=comp, correct=correct, reward=correct + 0.25,
                   correct_policy=correct.clone(), hint=torch.zeros(2 * G, L, dtype=torch.bool),
                   replaced=torch.zeros(2 * G, dtype=torch.bool))
    new_correct = torch.tensor([0.0, 3.0, 3.0, 3.0])
    new = torch.arange(G)[:, None].expand(G, L) + 100  # row r of the inpainted batch is all (100 + r)
    hinted = (new, new - 100, new_correct, new_correct + 0.5, torch.ones(G, L, dtype=torch.bool))
    monkeypatch.setattr(igpo, "inpaint_groups", lambda pol, tok, groups, *a, **k: (
        hinted if [gi for gi, _ in groups] == [0] else pytest.fail(f"inpainted {groups}")))
    items = [{"solution": "s"}, {"solution": "s"}]  # both have a reference trace
    rows, new_comp, new_order, new_c, new_t, new_h = igpo.rescue(None, None, items, b, cfg, first=0)
    assert torch.equal(new_order + 100, new_comp)  # commit steps travel with their rows
    assert rows.tolist() == [0, 1]  # K = min(3 correct, floor(0.5 * 4)) = 2, the first rows of group 0
    assert (new_c == 3.0).all() and (new_t == 3.5).all() and new_h.all()
    assert len(set(new_comp[:, 0].tolist())) == 2 and all(new_correct[c - 100] == 3.0 for c in new_comp[:, 0])


def test_loss_mask_stops_after_first_eos():
    comp = torch.tensor([[5, 6, 1, 1, 7], [5, 5, 5, 5, 5], [1, 2, 3, 1, 1]])
    want = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert igpo.loss_mask(comp, 1, post_eos=False).int().tolist() == want
    assert igpo.loss_mask(comp, 1, post_eos=True).all()


def _lp(ratios, old=(0.5, 0.25, 0.4, 0.2)):
    old = torch.tensor(old).log().view(2, 2)
    return old + torch.tensor(ratios).log().view(2, 2), old


def test_token_loss_by_hand():
    logp, old = _lp([1.5, 0.9, 0.5, 1.1])
    adv, keep = torch.tensor([2.0, -1.0]), torch.tensor([[True, True], [True, False]])
    loss, st = igpo.grpo_loss(logp, old, None, adv, keep, torch.tensor(3.0), eps=0.2, beta=0.0)
    # A=+2: min(1.5*2, 1.2*2) = 2.4, min(0.9*2, 0.9*2) = 1.8; A=-1: min(-0.5, -0.8) = -0.8; last token not kept
    assert loss.item() == pytest.approx(-(2.4 + 1.8 - 0.8) / 3, abs=1e-6)
    assert st["clipped"] == 2  # the upper clip on A>0 and the lower clip on A<0
    ref = logp + torch.tensor([[0.0, LN(2)], [-LN(2), 5.0]])  # d = ref - logp
    loss_kl, st = igpo.grpo_loss(logp, old, ref, adv, keep, torch.tensor(3.0), eps=0.2, beta=0.1)
    k3 = [0.0, 2 - LN(2) - 1, 0.5 + LN(2) - 1]  # e^d - d - 1 on the kept tokens
    assert loss_kl.item() == pytest.approx(-(2.4 + 1.8 - 0.8) / 3 + 0.1 * sum(k3) / 3, abs=1e-6)
    assert st["kl"] == pytest.approx(sum(k3), abs=1e-6)


def test_sequence_loss_by_hand():
    logp, old = _lp([1.5, 0.9, 0.5, 1.1])
    adv, keep = torch.tensor([2.0, -1.0]), torch.ones(2, 2, dtype=torch.bool)
    loss, st = igpo.grpo_loss(logp, old, None, adv, keep, torch.tensor(4.0), eps=0.2, beta=0.0, ratio="sequence")
    s0, s1 = math.sqrt(1.5 * 0.9), math.sqrt(0.5 * 1.1)  # geometric means: 1.1619 (inside), 0.7416 (clipped)
    assert loss.item() == pytest.approx((-2 * s0 * 2 + 0.8 * 2) / 4, abs=1e-6)
    assert st["clipped"] == 2  # both tokens of the second sequence
    # the gradient of a sequence ratio reaches every token of the sequence equally
    lp = logp.clone().requires_grad_(True)
    igpo.grpo_loss(lp, old, None, adv, keep, torch.tensor(4.0), eps=0.2, beta=0.0, ratio="sequence")[0].backward()
    assert lp.grad[0, 0] == lp.grad[0, 1] != 0 and (lp.grad[1] == 0).all()


def test_masked_input_seeds_fix_the_prompt_mask():
    prompt, comp = torch.randint(0, 50, (4, 30)), torch.randint(0, 50, (4, 6))
    a = igpo.masked_input(prompt, comp, 99, 0.5, seed=1)
    assert (a[:, 30:] == 99).all()  # completion fully masked
    assert torch.equal(a, igpo.masked_input(prompt, comp, 99, 0.5, seed=1))
    assert not torch.equal(a, igpo.masked_input(prompt, comp, 99, 0.5, seed=2))
    assert 0.3 < (a[:, :30] == 99).float().mean() < 0.7
    assert torch.equal(igpo.masked_input(prompt, comp, 99, 0.0, seed=3)[:, :30], prompt)


def test_token_logps_match_plain_log_softmax(task_ckpt):
    pol, tok = M.load(task_ckpt)
    prompt = torch.randint(5, 100, (2, 7)).repeat_interleave(3, 0)  # 2 groups of 3 identical prompts
    comp = torch.randint(5, 100, (6, 5))
    x = igpo.masked_input(prompt, comp, pol.config.mask_token_id, 0.0, 0)
    attn = torch.ones_like(x)
    with torch.no_grad():
        logp, ent = igpo.token_logps(pol, x, attn, comp, with_entropy=True)
        ls = torch.log_softmax(pol(x)[:, -5:].float(), -1)
    torch.testing.assert_close(logp, ls.gather(-1, comp[..., None]).squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, -(ls.exp() * ls).sum(-1), atol=1e-5, rtol=1e-5)


def _grads_after_update(cfg, b, pol, j=0):
    pol.zero_grad()
    igpo.update(pol, b, j, cfg, world=1)
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in pol.parameters()]


def _batch(task_ckpt, cfg):
    pol, tok = M.load(task_ckpt)
    items = data.task_level("task", "rl")[:cfg.prompts_per_step]
    b = igpo.make_batch(pol, None, tok, items, data.task_messages, cfg, 0, 0, torch.device("cpu"), {})
    return pol, b, igpo.batch_stats(b, cfg, tok, items)


def test_update_does_not_depend_on_micro_batches_and_old_uses_same_masks(task_ckpt):
    cfg = small_cfg(task_ckpt, p_mask_prompt=0.5)
    pol, b, m = _batch(task_ckpt, cfg)
    b.adv = torch.linspace(-1, 1, len(b.adv))  # a signal in every row, whatever the rewards were
    g8 = _grads_after_update(cfg, b, pol, j=1)
    cfg.micro_batch = 3
    g3 = _grads_after_update(cfg, b, pol, j=1)
    for a, c in zip(g8, g3):
        torch.testing.assert_close(a, c, atol=1e-7, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in g8)
    # before any step the current policy equals the old one under the same mask seed: ratio 1 everywhere, so the
    # loss is exactly -sum(A * kept) / n_kept (it would not be with a different prompt mask)
    s = igpo.update(pol, b, 1, cfg, world=1)
    keep = b.lmask & igpo.inpaint.entropy_filter(b.ent[1], b.hint, cfg.tau)
    assert s["clip_frac"][0] == 0
    loss = s["loss"][0] / s["loss"][1]
    assert loss == pytest.approx(-(b.adv[:, None] * keep).sum().item() / keep.sum().item(), abs=1e-6)


def test_all_equal_group_contributes_exactly_zero_gradient(task_ckpt):
    cfg = small_cfg(task_ckpt, beta=0.0)
    pol, b, m = _batch(task_ckpt, cfg)
    b.adv = igpo.group_advantages(torch.tensor([0.25] * 4 + [3.0, 0.0, 0.0, 0.0]), 4)  # group 0: failed rescue
    b.comp[4:] = b.comp[:4]  # identical completions and prompts: only the advantages differ
    for name in ("prompt", "attn", "lmask", "hint"):
        getattr(b, name)[4:] = getattr(b, name)[:4]
    for j in range(cfg.mu):
        b.old[j][4:], b.ent[j][4:] = b.old[j][:4], b.ent[j][:4]
    both = _grads_after_update(cfg, b, pol)
    b.adv[:4] = 0.0
    b.adv[4:] = igpo.group_advantages(torch.tensor([3.0, 0.0, 0.0, 0.0]), 4)
    only_second = _grads_after_update(cfg, b, pol)
    for a, c in zip(both, only_second):
        assert torch.equal(a, c)  # the all-equal group adds nothing, not even rounding
    assert any(g.abs().sum() > 0 for g in both)


def test_reference_trace_excludes_the_final_answer():
    tok = data.task_tokenizer()
    item = data.task_level("task", "rl")[0]
    ids, start = igpo.inpaint.reference_trace(tok, data.format_response(item))
    assert tok.decode(ids[start:]).startswith("\\boxed") and "\\boxed" not in tok.decode(ids[:start])


def _read_params(path):
    m, _ = M.load(path)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_smoke_and_two_processes_match_one(task_ckpt, tmp_path):
    """python igpo.py --steps 2 runs end to end (metrics, HF checkpoint), and torchrun with 2 gloo processes
    and the same global batch gives the same parameters."""
    args = ["--model", task_ckpt, "--steps", "2", "--mu", "2", "--prompts_per_step", "2", "--G", "4",
            "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "4", "--micro_batch", "4",
            "--chunk", "2,3", "--reserve", "2", "--eval_limit", "0", "--warmup", "1", "--beta", "0", "--lr", "1e-3"]
    # beta = 0: with the k3 KL on, step 2's KL gradient nearly cancels step 1's in Adam's first moment, which
    # amplifies the 1e-7 rounding differences of the sharded grad-norm into parameter differences of up to 6e-6
    # (measured); without it the two runs agree bit for bit. The reference model path is covered by the 1-process
    # smoke run above it and by the loss tests.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([sys.executable, "igpo.py", *args, "--beta", "0.01", "--steps", "2", "--out_dir",
                          str(tmp_path / "ref")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, failure_log(ref.stderr)
    one = subprocess.run([sys.executable, "igpo.py", *args, "--out_dir", str(tmp_path / "one")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, failure_log(one.stderr)
    rows = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and "all_wrong_before" in rows[0] and math.isfinite(rows[1]["loss"])
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "igpo.py", *args, "--out_dir", str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, failure_log(two.stderr)
    p1, p2, p0 = _read_params(tmp_path / "one" / "step-2"), _read_params(tmp_path / "two" / "step-2"), _read_params(task_ckpt)
    assert any(not torch.equal(p1[k], p0[k]) for k in p0)  # the policy moved
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], atol=1e-6, rtol=0)
    assert any(not torch.equal(_read_params(tmp_path / "ref" / "step-2")[k], p1[k]) for k in p1)  # the KL acts


def test_sequence_all_ratio_averages_over_every_position_by_hand():
    """O's GSPO: s_i = exp(mean over all L positions), also over tokens dropped from the loss."""
    logp, old = _lp([1.5, 0.9, 0.5, 1.1])
    adv, keep = torch.tensor([2.0, -1.0]), torch.tensor([[True, False], [True, True]])
    loss, st = igpo.grpo_loss(logp, old, None, adv, keep, torch.tensor(3.0), eps=0.2, beta=0.0,
                              ratio="sequence_all")
    s0, s1 = math.sqrt(1.5 * 0.9), math.sqrt(0.5 * 1.1)  # both positions count, kept or not
    assert loss.item() == pytest.approx((-2 * s0 + 0.8 * 2) / 3, abs=1e-6)
    lp = logp.clone().requires_grad_(True)
    igpo.grpo_loss(lp, old, None, adv, keep, torch.tensor(3.0), eps=0.2, beta=0.0, ratio="sequence_all")[0].backward()
    assert lp.grad[0, 1] == lp.grad[0, 0] != 0  # the dropped token still gets gradient through the mean


def test_entropy_filter_candidates_are_hint_tokens_in_the_loss(task_ckpt):
    """A hint after the first EOS must not take one of the top-tau slots (fidelity point 4)."""
    cfg = small_cfg(task_ckpt, beta=0.0, tau=0.5)
    pol, b, _ = _batch(task_ckpt, cfg)
    L = b.comp.shape[1]
    b.comp[0] = 7
    b.comp[0, 10] = pol.config.eos_token_id  # loss tokens: 0..10
    b.lmask = igpo.loss_mask(b.comp, pol.config.eos_token_id, False)
    b.hint[0] = False
    b.hint[0, [2, 3, 12, 13]] = True  # two hints in the loss, two after the EOS
    b.ent[0][0] = torch.arange(L, dtype=torch.float)  # post-EOS hints have the highest entropy
    keep = b.lmask & igpo.inpaint.entropy_filter(b.ent[0], b.hint & b.lmask, cfg.tau)
    assert keep[0, 3] and not keep[0, 2]  # max(1, floor(0.5 * 2)) = 1 in-loss hint kept: the higher-entropy one
    assert not keep[0, 12:].any()


def test_official_reward_rule_first_box_and_no_box_scores_zero():
    import reward
    assert reward.correctness_reward("\\boxed{3} then \\boxed{4}", "3", rule="official") == 3.0
    assert reward.correctness_reward("\\boxed{3} then \\boxed{4}", "3", rule="lenient") == 0.0
    assert reward.correctness_reward("<answer>7</answer>", "7", rule="official") == 0.0
    assert reward.correctness_reward("so it is 7", "7", rule="lenient") == 3.0
    assert reward.correctness_reward(None, "7", rule="official") == 0.0


def test_rechunk_gives_each_rollout_its_own_chunks():
    from inpaint import build_hints
    trace = list(range(100, 160))
    kw = dict(gen=None, s_min=2, s_max=6, eta_low=1.0, eta_high=1.0, reserve=0)
    a, _, _ = build_hints(trace, 4, 64, 0, **{**kw, "gen": torch.Generator().manual_seed(0)}, rechunk=True)
    assert (a[:, :60] == torch.tensor(trace)).all()  # eta = 1: every chunk revealed, whatever the chunking
    masks = []
    for rechunk in (False, True):
        _, hm, _ = build_hints(trace, 8, 64, 0, **{**kw, "eta_low": 0.5, "eta_high": 0.5,
                                                    "gen": torch.Generator().manual_seed(1)}, rechunk=rechunk)
        masks.append(hm)
    starts = [{tuple((m[r, 1:] & ~m[r, :-1]).nonzero().squeeze(1).tolist()) for r in range(8)} for m in masks]
    ends_in = [set().union(*[set((m[r, 1:] != m[r, :-1]).nonzero().squeeze(1).tolist()) for r in range(8)])
               for m in masks]
    # one chunking: every boundary of every row lies on the group's shared boundaries; rechunked rows do not
    assert len(ends_in[1]) > len(ends_in[0]) and len(starts[1]) > 1


def test_missing_model_is_a_clear_error_except_the_task_default(tmp_path):
    cfg = small_cfg(str(tmp_path / "checkpoints" / "typo"))
    with pytest.raises(SystemExit, match="typo"):
        igpo.build(cfg, torch.device("cpu"))


def _trajectory_batch(task_ckpt, hinted):
    """A 3-row batch sampled at T = 1 with the sampler's own per-step log-probs recorded by a forward hook."""
    pol, tok = M.load(task_ckpt)
    mask_id = pol.config.mask_token_id
    prompt = torch.randint(10, 100, (3, 6))
    attn = torch.ones_like(prompt)
    hints = torch.full((3, 16), mask_id)
    if hinted:
        hints[1, [2, 3, 9]] = torch.tensor([40, 41, 42])
    seen = []  # (canvas (B, P + L), log-probs (B, P + L, V)) of every sampler forward, in order
    handle = pol.register_forward_hook(lambda m, args, out: seen.append((args[0].clone(), out.float().log_softmax(-1))))
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    x, order = igpo.sample.generate(pol, prompt, attention_mask=attn, gen_length=16, block_length=8, steps=8,
                                    temperature=1.0, hints=hints, generator=gens, return_steps=True)
    handle.remove()
    comp = x[:, 6:]
    b = igpo.Batch(idx=0, prompt=prompt, attn=attn, comp=comp, order=order, correct=None, reward=None,
                   correct_policy=None, hint=hints != mask_id, replaced=None)
    return pol, b, seen


@pytest.mark.parametrize("hinted", [False, True])
def test_trajectory_logps_equal_the_samplers_own_step_log_probs(task_ckpt, hinted):
    """--logp trajectory with one step per forward reads each token's log-prob off the very canvas the sampler
    committed it in: recorded here by hooking the sampler's forwards (an independent path)."""
    pol, b, seen = _trajectory_batch(task_ckpt, hinted)
    cfg = small_cfg(task_ckpt, logp="trajectory", logp_group=1)
    inputs, attn = igpo.estimator_inputs(b, 0, cfg, pol.config.mask_token_id)
    with torch.no_grad():
        logp, _ = igpo.estimate_logps(pol, inputs, attn, b.comp, slice(0, 3))
    assert len(seen) == 8
    want = torch.full_like(logp, float("nan"))
    for step, (canvas, ls) in enumerate(seen):
        r, c = (b.order == step).nonzero(as_tuple=True)
        assert torch.equal(canvas[r, 6 + c], torch.full_like(c, pol.config.mask_token_id))  # still masked then
        want[r, c] = ls[r, 6 + c, b.comp[r, c]]
    hint = b.order < 0
    assert hint.any() == hinted
    if hinted:  # hints: scored in a fully masked completion, d1's context
        full = torch.cat([b.prompt, torch.full_like(b.comp, pol.config.mask_token_id)], 1)
        with torch.no_grad():
            ls = pol(full).float().log_softmax(-1)
        r, c = hint.nonzero(as_tuple=True)
        want[r, c] = ls[r, 6 + c, b.comp[r, c]]
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)


def test_trajectory_with_a_block_per_forward_is_block_teacher_forcing(task_ckpt):
    """logp_group = steps per block: each token is scored with every earlier block (and the hints) visible and its
    own and later blocks masked, computed here directly from the block layout."""
    pol, b, _ = _trajectory_batch(task_ckpt, hinted=True)
    mask_id = pol.config.mask_token_id
    cfg = small_cfg(task_ckpt, logp="trajectory", logp_group=4)  # 8 steps over 2 blocks of 8
    inputs, attn = igpo.estimator_inputs(b, 0, cfg, mask_id)
    with torch.no_grad():
        logp, _ = igpo.estimate_logps(pol, inputs, attn, b.comp, slice(0, 3))
        want = torch.empty_like(logp)
        for blk in range(2):
            canvas = torch.where(b.hint, b.comp, mask_id)
            canvas[:, :8 * blk] = b.comp[:, :8 * blk]
            ls = pol(torch.cat([b.prompt, canvas], 1)).float().log_softmax(-1)[:, 6:]
            own = ls.gather(-1, b.comp[..., None]).squeeze(-1)
            want[:, 8 * blk:8 * blk + 8] = own[:, 8 * blk:8 * blk + 8]
        ls = pol(torch.cat([b.prompt, torch.full_like(b.comp, mask_id)], 1)).float().log_softmax(-1)[:, 6:]
        want[b.hint] = ls.gather(-1, b.comp[..., None]).squeeze(-1)[b.hint]
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)


def test_trajectory_update_is_micro_batch_invariant_and_on_policy_at_first(task_ckpt):
    cfg = small_cfg(task_ckpt, logp="trajectory", logp_group=2, beta=0.01)
    pol, tok = M.load(task_ckpt)
    ref, _ = M.load(task_ckpt)
    items = data.task_level("task", "rl")[:cfg.prompts_per_step]
    b = igpo.make_batch(pol, ref, tok, items, data.task_messages, cfg, 0, 0, torch.device("cpu"), {})
    b.adv = torch.linspace(-1, 1, len(b.adv))
    g8 = _grads_after_update(cfg, b, pol, j=1)
    cfg.micro_batch = 3
    g3 = _grads_after_update(cfg, b, pol, j=1)
    for a, c in zip(g8, g3):
        torch.testing.assert_close(a, c, atol=1e-7, rtol=1e-5)
    s = igpo.update(pol, b, 0, cfg, world=1)
    assert s["clip_frac"][0] == 0 and s["kl"][0] == 0  # ratio 1 and policy = reference before any step


@pytest.mark.parametrize("ratio", ["token", "sequence_all"])
def test_group_loss_norm_equals_an_independent_transcription_of_the_official_per_group_mean(task_ckpt, ratio):
    """--loss_norm group (O: one group per device micro-batch, loss = sum / mask sum, averaged over devices and
    accumulation steps) on 2 groups with hint tokens, post-EOS tokens and clipped ratios, split into micro-batches
    that cut across the groups."""
    cfg = small_cfg(task_ckpt, beta=0.0, loss_norm="group", ratio=ratio, tau=0.5, micro_batch=3)
    pol, b, _ = _batch(task_ckpt, cfg)
    B, L = b.comp.shape
    eos = pol.config.eos_token_id
    b.comp[1, 6] = eos
    b.comp[5, 3] = eos  # tokens after these are out of the loss
    b.comp[2] = torch.where(b.comp[2] == eos, eos - 1, b.comp[2])  # row 2: no EOS at all (the random model's)
    b.comp[6, :9] = torch.where(b.comp[6, :9] == eos, eos - 1, b.comp[6, :9])
    b.comp[6, 9] = eos  # row 6's hints 10, 11 lie after its EOS: out of the loss, and not filter candidates
    b.lmask = igpo.loss_mask(b.comp, eos, False)
    b.hint[:] = False
    b.hint[2, 1:5] = True  # a hinted row in each group: of n candidates the filter keeps max(1, floor(n / 2))
    b.hint[6, 8:12] = True
    b.ent[0][6, 8:12] = torch.tensor([0.1, 0.2, 0.9, 0.8])  # candidates 8, 9 keep 9; all four would keep 10, 11
    assert b.lmask[2, 1:5].all() and b.lmask[6, 8:10].all() and not b.lmask[6, 10:].any()
    b.adv = torch.tensor([1.5, -0.5, -0.5, -0.5, 2.0, 0.0, -1.0, -1.0])
    g = torch.Generator().manual_seed(0)
    b.old = [o + 0.3 * torch.randn(o.shape, generator=g) for o in b.old]  # ratios away from 1: some clip
    got = _grads_after_update(cfg, b, pol)
    loss_got = igpo.update(pol, b, 0, cfg, world=1)["loss"][0]

    keep = (b.lmask & igpo.inpaint.entropy_filter(b.ent[0], b.hint & b.lmask, cfg.tau)).float()
    assert keep.sum() < b.lmask.sum()  # the batch really has dropped tokens
    pol.zero_grad()
    x = torch.cat([b.prompt, torch.full_like(b.comp, pol.config.mask_token_id)], 1)  # d1: completion all masked
    logits = pol(x, attention_mask=torch.cat([b.attn, torch.ones_like(b.comp)], 1))[:, -L:].float()
    logp = torch.log_softmax(logits, -1).gather(-1, b.comp[..., None])[..., 0]
    per_group = []
    for r in (slice(0, 4), slice(4, 8)):  # O's compute_loss on one device micro-batch = one group
        lp, old, m, a = logp[r], b.old[0][r], keep[r], b.adv[r][:, None]
        if ratio == "token":
            rho = torch.exp(lp - old)
        else:  # O's use_gspo: sum over all positions / size(1)
            rho = torch.exp(lp.sum(1) / L - old.sum(1) / L)[:, None].expand(-1, L)
        per_token = -torch.min(rho * a, torch.clamp(rho, 0.8, 1.2) * a)
        per_group.append((per_token * m).sum() / m.sum())
    want = torch.stack(per_group).mean()  # accumulation and DDP average the per-group losses
    want.backward()
    assert loss_got == pytest.approx(want.item(), rel=1e-5)
    for a, c in zip(got, [p.grad if p.grad is not None else torch.zeros_like(p) for p in pol.parameters()]):
        torch.testing.assert_close(a, c, atol=1e-7, rtol=1e-4)
    assert any(t.abs().sum() > 0 for t in got)


def test_reward_text_stops_at_the_first_eos_unless_post_eos(task_ckpt):
    """P: the reward reads the text up to the first EOS; --post_eos on (O) decodes all gen_length tokens."""
    tok = data.task_tokenizer()
    ids = tok("<reasoning>\n</reasoning>\n<answer>\n\\boxed{3}\n</answer>", add_special_tokens=False)["input_ids"]
    tail = tok("\\boxed{4}", add_special_tokens=False)["input_ids"]
    comp = torch.tensor([ids + [tok.eos_token_id] + tail])
    for post_eos, want in (("off", 0.0), ("on", 3.0)):  # lenient rule: the last box; gold 4 sits after the EOS
        cfg = small_cfg(task_ckpt, post_eos=post_eos, reward_rule="lenient")
        correct, total = igpo.rewards(tok, comp, ["4"], cfg)
        assert correct.tolist() == [want]


def test_max_prompt_keeps_the_last_prompt_tokens(task_ckpt):
    """--max_prompt N (O: max_prompt_length 600, left truncation): the rollouts see the last N prompt tokens."""
    pol, tok = M.load(task_ckpt)
    items = data.task_level("task", "rl")[:2]
    full, _ = M.encode_chat(tok, [data.task_messages(it["question"]) for it in items for _ in range(4)])
    b = igpo.roll_out(pol, tok, items, data.task_messages, small_cfg(task_ckpt, max_prompt=12), 0, 0,
                      torch.device("cpu"))
    assert full.shape[1] > 12 and torch.equal(b.prompt, full[:, -12:])
    b = igpo.roll_out(pol, tok, items, data.task_messages, small_cfg(task_ckpt, max_prompt=0), 0, 0,
                      torch.device("cpu"))
    assert torch.equal(b.prompt, full)


def _ratio_batch(task_ckpt, **kw):
    """A rollout batch whose row r has token ratio c_r (old log-probs shifted by -log c_r: before any step the
    current policy is the old one), the advantages below, every token in the loss and no hints."""
    cfg = small_cfg(task_ckpt, **kw)  # ratio token, loss_norm token, beta 0 unless overridden
    pol, b, _ = _batch(task_ckpt, cfg)
    b.lmask[:] = True
    b.hint[:] = False
    c = torch.tensor([1.5, 0.9, 0.5, 1.1, 1.25, 0.75, 0.75, 1.25])
    b.adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0, 0.5, -0.5, -2.0])
    b.old = [o - c.log()[:, None] for o in b.old]
    return cfg, pol, b


def test_update_clips_ratios_outside_one_plus_minus_eps_by_hand(task_ckpt):
    """`update` at ratios away from 1, every token kept: the loss is the row mean of -min(cA, clip(c, 1 ± ε) A),
    with the config's ε."""
    cfg, pol, b = _ratio_batch(task_ckpt)
    # ε 0.2: min(1.5, 1.2) = 1.2 (clipped), 0.9, min(-0.5, -0.8) = -0.8 (clipped), -1.1, min(2.5, 2.4) = 2.4
    # (clipped), min(0.375, 0.4) = 0.375, min(-0.375, -0.4) = -0.4 (clipped), min(-2.5, -2.4) = -2.5: sum 0.075,
    # loss -0.075 / 8 rows; 4 of 8 rows clipped (a ratio below 1 - ε with A > 0 or above 1 + ε with A < 0 is not)
    s = igpo.update(pol, b, 0, cfg, world=1)
    assert s["loss"][0] / s["loss"][1] == pytest.approx(-0.075 / 8, abs=1e-6)
    assert s["clip_frac"][0] / s["clip_frac"][1] == pytest.approx(0.5)
    # ε 0.3: 1.3, 0.9, -0.7, -1.1, 2.5, 0.375, -0.375, -2.5: sum 0.4, loss -0.05; rows 0 and 2 clipped
    cfg.eps = 0.3
    s = igpo.update(pol, b, 0, cfg, world=1)
    assert s["loss"][0] / s["loss"][1] == pytest.approx(-0.4 / 8, abs=1e-6)
    assert s["clip_frac"][0] / s["clip_frac"][1] == pytest.approx(0.25)


@pytest.mark.parametrize("loss_norm", ["token", "group"])
def test_update_divides_by_the_tokens_the_entropy_filter_keeps(task_ckpt, loss_norm):
    """Row 0 (c 1.5, A 1: 1.2 per token) holds 10 hint tokens; τ 0.2 keeps 2 of them, so it has 16 - 8 = 8 tokens
    in the loss, the other rows 16 each (surrogates as in the test above, ε 0.2)."""
    cfg, pol, b = _ratio_batch(task_ckpt, loss_norm=loss_norm)
    b.hint[0, :10] = True
    s = igpo.update(pol, b, 0, cfg, world=1)
    if loss_norm == "token":  # sum 8 x 1.2 + 16 x (0.9 - 0.8 - 1.1 + 2.4 + 0.375 - 0.4 - 2.5) = -8.4 over 120 tokens
        want = 8.4 / 120
    else:  # group 0: (8 x 1.2 + 16 x (0.9 - 0.8 - 1.1)) / 56 = -6.4 / 56; group 1: 16 x (-0.125) / 64 = -2 / 64
        want = (6.4 / 56 + 2 / 64) / 2
    assert s["loss"][0] / s["loss"][1] == pytest.approx(want, abs=1e-6)
    assert s["clip_frac"][0] / s["clip_frac"][1] == pytest.approx((8 + 3 * 16) / 120)  # row 0's kept 8 + rows 2, 4, 6


def test_sequence_ratio_averages_over_the_kept_tokens_only_by_hand():
    """GSPO (--ratio sequence): s_i = exp(mean of the log-ratios of row i's kept tokens); a dropped token is in
    neither the ratio nor the gradient (unlike sequence_all)."""
    logp, old = _lp([1.1, 0.9, 0.5, 1.1])
    adv, keep = torch.tensor([2.0, -1.0]), torch.tensor([[True, False], [True, True]])
    lp = logp.clone().requires_grad_(True)
    loss, st = igpo.grpo_loss(lp, old, None, adv, keep, torch.tensor(3.0), eps=0.2, beta=0.0, ratio="sequence")
    # s0 = 1.1 (its kept token alone; with the dropped 0.9 it would be 0.99): -min(2.2, 2.2) on 1 token;
    # s1 = √(0.5 · 1.1) = 0.7416 < 0.8, A = -1: -min(-0.7416, -0.8) = 0.8 on 2 tokens; (-2.2 + 1.6) / 3 = -0.2
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert st["clipped"] == 2
    loss.backward()
    assert lp.grad[0, 0] != 0 and lp.grad[0, 1] == 0


def test_k3_kl_direction_value_and_gradient_by_hand():
    """k3 = e^d - d - 1 with d = log π_ref - log π, the KL(π || π_ref) estimator: at d = ln 3 it is 2 - ln 3
    (0.901388); the reversed direction e^-d + d - 1 would give 1/3 + ln 3 - 1 (0.431946). Its gradient in log π is
    1 - e^d = -2: the KL pulls log π up towards the reference."""
    logp = torch.tensor([[LN(0.1), LN(0.5)]])
    ref = logp + torch.tensor([[LN(3), 0.0]])
    keep = torch.ones(1, 2, dtype=torch.bool)
    lp = logp.clone().requires_grad_(True)
    loss, st = igpo.grpo_loss(lp, logp, ref, torch.zeros(1), keep, torch.tensor(2.0), eps=0.2, beta=0.1)
    assert st["kl"] == pytest.approx(2 - LN(3), abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * (2 - LN(3)) / 2, abs=1e-7)  # A = 0: only the KL term
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([0.1 * (1 - 3) / 2, 0.0], abs=1e-6)


def test_rollouts_do_not_depend_on_the_rank_layout(task_ckpt):
    """Rollout seeds use global row indices: prompt 1's G rollouts are the same when it is the second prompt of a
    rank (first = 0) as when it is the first prompt of another rank (first = 1)."""
    cfg = small_cfg(task_ckpt, temperature=1.0)
    pol, tok = M.load(task_ckpt)
    items = data.task_level("task", "rl")[:2]
    both = igpo.roll_out(pol, tok, items, data.task_messages, cfg, 0, 0, torch.device("cpu"))
    second = igpo.roll_out(pol, tok, items[1:], data.task_messages, cfg, 0, 1, torch.device("cpu"))
    assert torch.equal(both.comp[cfg.G:], second.comp)
    assert len({tuple(r) for r in second.comp.tolist()}) > 1  # each rollout of the group has its own seed


def test_sound_rates_by_hand():
    """igpo logs sound_acc (on-policy rollouts right with every line right; replaced rows are not on-policy) and
    sound_replaced (of the replacements): 2 prompts x G 2, hand-made completions, the reward left out of soundness."""
    tok = data.task_tokenizer()
    q = "Tom has 5 coins. First he gets 1, second loses 3. How many coins after each step?"
    good = "<reasoning>\nfirst: 5+1=6\nsecond: 6-3=3\n</reasoning>\n<answer>\n\\boxed{63}\n</answer><|endoftext|>"
    bad = good.replace("6-3=3", "6-2=4").replace("{63}", "{64}")
    lucky = good.replace("6-3=3", "6-2=3")  # a wrong line, a right box
    texts = [good, lucky, bad, good]  # rows 0-1: prompt 0; rows 2-3: prompt 1 (row 3 an inpainted replacement)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    L = max(map(len, ids))
    comp = torch.tensor([r + [tok.eos_token_id] * (L - len(r)) for r in ids])
    items = [dict(id="task-x-0", question=q, answer="63"), dict(id="task-x-1", question=q, answer="63")]
    assert igpo.E.sound_rows(tok, items, comp, 2).tolist() == [True, False, False, True]
    assert igpo.E.sound_rows(tok, [dict(id="gsm8k-0", question=q, answer="63")], comp[:2], 2) is None
    cfg = igpo.Config(G=2)
    correct = torch.tensor([3.0, 3.0, 0.0, 3.0])
    b = igpo.Batch(idx=0, prompt=None, attn=None, comp=comp, order=None, correct=correct, reward=correct + 1,
                   correct_policy=torch.tensor([3.0, 3.0, 0.0, 0.0]), hint=torch.zeros_like(comp, dtype=torch.bool),
                   replaced=torch.tensor([False, False, False, True]))
    b.lmask, b.ent = torch.ones_like(comp, dtype=torch.bool), [torch.zeros(comp.shape)]
    st = igpo.summarize(igpo.batch_stats(b, cfg, tok, items), {}, "cpu")
    assert st["acc"] == 0.5 and st["sound_acc"] == 0.25  # row 0 only: row 1's box is right, its line is not
    assert st["sound_replaced"] == 1.0
