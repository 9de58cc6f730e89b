"""LoRA (model.add_lora & co): starts equal to the base, merges to W + (alpha/r) B A, the adapter off is the base
model, only adapters train, files round-trip, 1 process = 2 processes; and launch.fsdp's bf16 mixed precision."""
import json
import os
import subprocess
import sys

import pytest
import torch
from test_model import reference_forward

import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R, ALPHA = 4, 8.0


def lora_model(targets=model.LORA_ALL, dropout=0.0, seed=0):
    """The tiny base model and a copy with adapters whose B is random (B = 0 would hide every bug but init)."""
    torch.manual_seed(seed)
    base = model.LLaDA(model.tiny_config()).init_weights(std=0.2).eval()
    net = model.LLaDA(model.tiny_config()).eval()
    net.load_state_dict(base.state_dict())
    model.add_lora(net, rank=R, alpha=ALPHA, dropout=dropout, targets=targets)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return base, net


def by_hand_merged(net):
    """W + (alpha/r) sum_j B[:, j] A[j, :], as an explicit sum of rank-one outer products (no matmul)."""
    sd = {k: v.clone() for k, v in net.state_dict().items() if ".lora_" not in k}
    for k, v in net.state_dict().items():
        if k.endswith("lora_A.weight"):
            A, B = v, net.state_dict()[k.replace("lora_A", "lora_B")]
            w = k.replace(".lora_A.weight", ".weight")
            sd[w] = sd[w] + ALPHA / R * sum(B[:, j, None] * A[None, j, :] for j in range(R))
    return sd


def test_starts_equal_to_base_and_keeps_llada_keys():
    torch.manual_seed(0)
    base = model.LLaDA(model.tiny_config()).init_weights(std=0.2).eval()
    ids = torch.randint(0, 127, (2, 9))
    want = base(ids)
    keys = set(base.state_dict())
    model.add_lora(base, rank=R, alpha=ALPHA, dropout=0.05)
    assert (base(ids) == want).all()  # B = 0: not close, equal
    sd = base.state_dict()
    assert keys == {k for k in sd if ".lora_" not in k}
    assert {k.split(".")[-3] for k in sd if ".lora_" in k} == set(model.LORA_TARGETS)
    assert sd["model.transformer.blocks.1.q_proj.lora_A.weight"].shape == (R, 64)
    assert sd["model.transformer.blocks.1.up_proj.lora_B.weight"].shape == (160, R)


def test_rank_zero_is_full_finetuning(tiny_model):
    before = dict(tiny_model.named_parameters())
    model.add_lora(tiny_model, rank=0)
    assert tiny_model.lora is None and dict(tiny_model.named_parameters()) == before
    assert all(p.requires_grad for p in tiny_model.parameters())


def test_adapted_forward_is_the_forward_of_merged_weights():
    _, net = lora_model()
    ids = torch.randint(0, 127, (2, 7))
    want = reference_forward(by_hand_merged(net), net.config, ids)  # independent forward on W + (alpha/r) B A
    with torch.no_grad():
        torch.testing.assert_close(net(ids), want, atol=1e-5, rtol=1e-5)


def test_merge_and_merged_state_dict_equal_w_plus_scaled_ba():
    _, net = lora_model()
    want = by_hand_merged(net)
    got = model.merged_state_dict(net.state_dict(), net.lora)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-6)
    ids = torch.randint(0, 127, (2, 7))
    with torch.no_grad():
        unmerged = net(ids)
        model.merge_lora(net)
        for k, v in net.state_dict().items():
            if ".lora_" not in k:
                torch.testing.assert_close(v, want[k], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(net(ids), unmerged, atol=1e-5, rtol=1e-5)  # the branch is off once merged
        model.merge_lora(net, merged=False)
        torch.testing.assert_close(net(ids), unmerged, atol=1e-5, rtol=1e-5)
        with pytest.raises(AssertionError, match="unmerge"):
            model.merge_lora(net)
            with model.lora_disabled(net):
                pass


def test_adapter_off_gives_the_base_logits():
    base, net = lora_model(dropout=0.3)
    net.train()  # dropout acts on the adapter's input only, so off means exactly the base model even in train mode
    ids = torch.randint(0, 127, (3, 8))
    with torch.no_grad():
        want = base(ids)
        with model.lora_disabled(net):
            assert (net(ids) == want).all()
        assert not torch.allclose(net(ids), want)  # and the adapter is back on afterwards


def test_only_lora_parameters_get_gradients():
    _, net = lora_model(targets=("q_proj", "up_proj"))
    net.train()
    net(torch.randint(0, 127, (2, 8))).logsumexp(-1).sum().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in net.named_parameters() if p.requires_grad}
    assert with_grad == {n for n in net.state_dict() if ".lora_" in n}
    assert len(with_grad) == 2 * 2 * 2  # 2 blocks x 2 targets x (A, B)
    assert all(net.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)


def test_save_writes_merged_weights_and_adapter_files(tiny_tokenizer, tmp_path):
    base, net = lora_model()
    ids = torch.randint(0, 127, (2, 7))
    with torch.no_grad():
        want = net(ids)
    model.save(net, tiny_tokenizer, tmp_path / "ck")
    merged, _ = model.load(str(tmp_path / "ck"))  # LLaDA keys only: strict loading would fail on a lora_ key
    torch.testing.assert_close(merged(ids), want, atol=1e-5, rtol=1e-5)
    cfg = json.load(open(tmp_path / "ck" / "adapter" / "adapter_config.json"))
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == ("LORA", R, ALPHA, 0.0)
    assert cfg["target_modules"] == list(model.LORA_ALL)
    fresh = model.LLaDA(model.tiny_config()).eval()
    fresh.load_state_dict(base.state_dict())
    model.load_adapter(fresh, str(tmp_path / "ck" / "adapter"))
    with torch.no_grad():
        assert (fresh(ids) == want).all()  # base + the adapter files = the trained model, bit for bit
    wrong = model.LLaDA(model.tiny_config(n_layers=3))
    with pytest.raises(KeyError, match="missing"):
        model.load_adapter(wrong, str(tmp_path / "ck" / "adapter"))


def run_step(out, *flags, nproc=1):
    cmd = [sys.executable, "tests/dist_step.py", str(out), *flags]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def test_two_processes_give_the_same_lora_update_as_one(tmp_path):
    one = run_step(tmp_path / "one.pt", "--lora_rank", "4")
    two = run_step(tmp_path / "two.pt", "--lora_rank", "4", nproc=2)
    assert two["world"] == 2 and set(one["grads"]) == set(two["grads"])
    assert all(".lora_" in k for k in one["grads"])
    for k, v in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], v, atol=1e-6, rtol=1e-5)
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, atol=1e-6, rtol=1e-5)
        if ".lora_" not in k:
            assert (two["state"][k] == v).all()  # the frozen base does not move


def test_fsdp_mixed_precision_compile_and_checkpointing(tmp_path):
    """bf16 all-gather and compute, fp32 shards (master weights) and fp32 reduce, fp32 RoPE tables, through
    torch.compile (eager backend: the wiring, not inductor) and activation checkpointing, on 2 gloo processes."""
    ref = run_step(tmp_path / "fp32.pt", "--optim", "sgd")
    bf = run_step(tmp_path / "bf16.pt", "--optim", "sgd", "--param_dtype", "bfloat16", "--compile", "eager",
                  "--grad_ckpt", "1", nproc=2)
    seen = bf["seen"]
    assert seen["block_in"] == [torch.bfloat16, torch.float32, torch.float32]  # x in bf16; cos, sin stay fp32
    assert seen["q_out"] == seen["logits"] == torch.bfloat16
    assert set(seen["shard"].values()) == {torch.float32} and set(seen["grad"].values()) == {torch.float32}
    assert ref["seen"]["q_out"] == torch.float32
    num = sum(((bf["grads"][k] - g) ** 2).sum() for k, g in ref["grads"].items())
    den = sum((g ** 2).sum() for g in ref["grads"].values())
    assert 1e-6 < (num / den).sqrt() < 0.1  # bf16 rounding is there (so bf16 ran), and small


def test_igpo_with_lora_trains_only_the_adapter_and_uses_the_base_as_reference(tmp_path, monkeypatch):
    """igpo.py --lora_rank 4: the reference log-probs are the base model's (adapter off, no second copy), only the
    adapters move, and the merged checkpoint equals base + (alpha/r) B A of the saved adapter."""
    import data
    import igpo
    import launch
    from conftest import save_tiny_task_model
    save_tiny_task_model(tmp_path / "base")
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, [
        "--model", str(tmp_path / "base"), "--steps", "2", "--mu", "2", "--prompts_per_step", "2", "--G", "4",
        "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "4", "--micro_batch", "8", "--chunk", "2,3",
        "--reserve", "2", "--eval_limit", "0", "--warmup", "1", "--lr", "1e-2", "--lora_rank", "4", "--beta", "0.01",
        "--out_dir", str(tmp_path / "run")])
    pol, ref, tok, _ = igpo.build(cfg, torch.device("cpu"))
    assert ref is None and {n for n, p in pol.named_parameters() if p.requires_grad} == {
        n for n in dict(pol.named_parameters()) if ".lora_" in n}
    base, _ = model.load(tmp_path / "base")
    b = igpo.make_batch(pol, ref, tok, data.task_level("task", "rl")[:2], data.task_messages, cfg, 0, 0,
                        torch.device("cpu"), {})
    with torch.no_grad():
        for p in pol.parameters():
            if ".lora_B" in next(n for n, q in pol.named_parameters() if q is p):
                p.normal_()  # an adapter that changes the policy: the reference must still be the base
    inputs, attn = igpo.estimator_inputs(b, 0, cfg, pol.config.mask_token_id)
    with torch.no_grad():
        want = igpo.estimate_logps(base, inputs, attn, b.comp, slice(0, 8))[0]
        got = igpo.reference_logps(pol, None, inputs, attn, b.comp, 8)
        moved = igpo.estimate_logps(pol, inputs, attn, b.comp, slice(0, 8))[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(moved, want)
    def alternating(tok, completions, *a, **k):  # a reward signal a random model cannot earn by itself
        correct = torch.tensor([3.0 * (i % 2) for i in range(len(completions))])
        return correct, correct
    monkeypatch.setattr(igpo, "rewards", alternating)
    igpo.train(cfg)
    merged, _ = model.load(tmp_path / "run" / "step-2")
    adapter = model.load_adapter(model.load(tmp_path / "base")[0], tmp_path / "run" / "step-2" / "adapter")
    model.merge_lora(adapter)
    sd = {k: v for k, v in adapter.state_dict().items() if ".lora_" not in k}
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, sd[k], atol=1e-6, rtol=0)
    assert any(not torch.equal(v, base.state_dict()[k]) for k, v in merged.state_dict().items())
