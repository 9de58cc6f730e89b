"""sft.py: the loss against a hand computation and its expectation, overfitting, distributed parity, resume."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import data
import model
import sample
import sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK = 95  # model.tiny_config().mask_token_id


class FixedLogits(torch.nn.Module):
    """A model whose outputs are known: the same logits (B, L, V) whatever the input; records its inputs."""
    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, []

    def forward(self, x, attention_mask=None):
        self.seen.append(x.clone())
        return self.logits


def test_loss_matches_hand_computation(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    plen, t = torch.tensor([2, 3]), torch.tensor([0.5, 0.25])
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 1]], dtype=torch.bool)  # (0, 0) is prompt: ignored
    got = sft.sft_loss(tiny_model, ids, plen, mask_id=MASK, t=t, mask=mask)
    got_batch = sft.sft_loss(tiny_model, ids, plen, mask_id=MASK, t=t, mask=mask, norm="batch")
    noisy = torch.tensor([[5, 6, MASK, MASK, 9, 10], [11, 12, 13, MASK, 15, MASK]])
    with torch.no_grad():
        lp = F.log_softmax(tiny_model(noisy).double(), dim=-1)
    p0, p1 = 0.999 * 0.5 + 0.001, 0.999 * 0.25 + 0.001
    nll0 = -(lp[0, 2, 7] + lp[0, 3, 8]).item() / p0   # response lengths 4 and 3
    nll1 = -(lp[1, 3, 14] + lp[1, 5, 16]).item() / p1
    assert got.item() == pytest.approx((nll0 / 4 + nll1 / 3) / 2, rel=1e-5)
    assert got_batch.item() == pytest.approx((nll0 + nll1) / 7, rel=1e-5)
    half = sft.sft_loss(tiny_model, ids[:1], plen[:1], mask_id=MASK, t=t[:1], mask=mask[:1], denom=2.0)
    assert half.item() == pytest.approx(nll0 / 4 / 2, rel=1e-5)  # micro-batches sum to the batch loss


def test_prompt_never_masked():
    B, L, V = 6, 12, 20
    ids = torch.randint(0, V - 1, (B, L))
    plen = torch.tensor([1, 3, 5, 7, 9, 11])
    fake = FixedLogits(torch.zeros(B, L, V))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        sft.sft_loss(fake, ids, plen, mask_id=V - 1, generator=g)
    is_prompt = torch.arange(L)[None] < plen[:, None]
    seen = torch.stack(fake.seen)                                  # (200, B, L)
    assert (seen[:, is_prompt] == ids[is_prompt]).all()
    assert (seen[:, ~is_prompt] == V - 1).any()                    # the response does get masked


def test_expected_loss_is_the_nll():
    """E_t,mask[loss] = per-sample mean NLL of the response: the 1/p weight makes the masked CE unbiased."""
    B, L, V, N = 3, 10, 7, 4000
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, L, V, generator=g)
    ids = torch.randint(0, V - 1, (B, L), generator=g)
    plen = torch.tensor([2, 4, 6])
    nll = -F.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    is_resp = torch.arange(L)[None] >= plen[:, None]
    want = ((nll * is_resp).sum(1) / is_resp.sum(1)).mean()
    fake = FixedLogits(logits)
    draws = torch.stack([sft.sft_loss(fake, ids, plen, mask_id=V - 1, generator=g) for _ in range(N)])
    fake.seen.clear()
    assert abs(draws.mean() - want) < 4 * draws.std() / N ** 0.5


def _task_cfg(tmp_path, **kw):
    base = dict(max_samples=32, steps=4, global_batch=8, micro_batch=2, log_every=1, warmup=2,
                out_dir=str(tmp_path / "ckpt"))
    return [f"--{k}={v}" for k, v in {**base, **kw}.items()]


def _params(path):
    return load_file(os.path.join(path, "model.safetensors"))


def test_overfit_eight_examples():
    torch.manual_seed(0)
    tok = data.task_tokenizer()
    items = [it for it in data.task_splits()["sft"] if it["solution"].count("\n") < 4][:8]  # chains of 1-4 steps
    cfg = sft.parse_config(["--max_len=56", "--resp_len=56"])  # a 4-step response is <= 50 tokens
    pairs = sft.tokenize_pairs(items, tok, cfg, log=lambda *a: None)
    mc = model.ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=192, vocab_size=len(tok),
                           embedding_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, rope_theta=10000.0)
    m = model.LLaDA(mc).init_weights()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for step in range(800):
        ids, attn, plen, t, mask = sft.collate(pairs, range(8), step, cfg, tok.eos_token_id)
        loss = sft.sft_loss(m, ids, plen, attention_mask=attn, t=t, mask=mask, mask_id=tok.mask_token_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.05
    m.eval()
    prompts, attn = model.encode_chat(tok, [data.task_messages(it["question"]) for it in items])
    out = sample.generate(m, prompts, attention_mask=attn, gen_length=56, block_length=56, steps=56)
    for it, row in zip(items, out[:, prompts.shape[1]:]):
        assert tok.decode(row, skip_special_tokens=True) == data.format_response(it)


def test_resume_equals_uninterrupted(tmp_path):
    sft.train(sft.parse_config(_task_cfg(tmp_path / "full")))
    sft.train(sft.parse_config(_task_cfg(tmp_path / "cut", stop_at=2)))
    assert json.load(open(tmp_path / "cut" / "ckpt" / "trainer_state.json"))["step"] == 2
    sft.train(sft.parse_config(_task_cfg(tmp_path / "cut", resume=True)))
    full, cut = _params(tmp_path / "full" / "ckpt"), _params(tmp_path / "cut" / "ckpt")
    for k in full:
        torch.testing.assert_close(cut[k], full[k], rtol=0, atol=0)


def test_two_processes_match_one(tmp_path):
    """torchrun with 2 gloo ranks (FSDP2, accumulation 2) vs 1 process (accumulation 4), same global batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd, out, layout in ((torchrun, "two", "world 2 x micro_batch 2 x accumulation 2"),
                             ([sys.executable], "one", "world 1 x micro_batch 2 x accumulation 4")):
        r = subprocess.run(cmd + ["sft.py"] + _task_cfg(tmp_path / out, steps=2, lr=5e-4), cwd=ROOT, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0 and layout in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    one, two = _params(tmp_path / "one" / "ckpt"), _params(tmp_path / "two" / "ckpt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6)
    assert not torch.equal(one["model.transformer.wte.weight"], _init_wte())  # it did train


def _init_wte():
    m, _ = sft.build_model(sft.parse_config([]))
    return m.model.transformer.wte.weight.detach()


def test_rewrite_mechanics(tmp_path, monkeypatch):
    """A tiny random transformers causal LM as the rewriter: cap, answer-preservation drop, output file."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from conftest import build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    lm_dir, src, out = tmp_path / "lm", tmp_path / "traces.jsonl", tmp_path / "concise.jsonl"
    tok.save_pretrained(lm_dir)
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(lm_dir)
    items = [dict(id=f"q{i}", question=f"What is {i}+1?", answer=str(i + 1), solution=f"We add: {i}+1={i + 1}.")
             for i in range(3)]
    src.write_text("".join(json.dumps(it) + "\n" for it in items))
    args = [f"--data={src}", f"--rewrite_model={lm_dir}", f"--rewrite_out={out}", "--rewrite_cap=20"]
    sft.rewrite(sft.parse_config(args))  # the real generate() of a random model: runs, writes a file
    assert out.exists()
    scripted = {0: "0+1=1, \\boxed{1}", 1: "1+1=7, \\boxed{7}", 2: "1+1+1+1+1+1+1+1+1+1+1=3, \\boxed{3}"}

    def generate(self, input_ids, max_new_tokens, **kw):  # keep / changed answer / over the cap
        i = int(re.search(r"What is (\d)\+1", tok.decode(input_ids[0])).group(1))
        new = tok(scripted[i], add_special_tokens=False)["input_ids"][:max_new_tokens] + [tok.eos_token_id]
        return torch.cat([input_ids, torch.tensor([new])], dim=1)
    monkeypatch.setattr(LlamaForCausalLM, "generate", generate)
    kept = sft.rewrite(sft.parse_config(args))
    assert [k["id"] for k in kept] == ["q0"] and kept[0]["solution"] == scripted[0]
    assert [json.loads(line) for line in out.read_text().splitlines()] == kept


def test_the_task_start_is_four_stages_each_from_the_last_ones_weights(monkeypatch, tmp_path):
    """The committed start = preset "task" from scratch, then "task-2", "task-3" and "task-4", each a warm restart
    from the last stage's output (docs/task.md); igpo.py builds a missing start this way. Only the schedule, the
    paths and (stages 3 and 4) the mix of chain lengths change; stage 4 is stage 3 again from stage 3's weights."""
    ran = []
    monkeypatch.setattr(sft, "train", ran.append)
    sft.train_task_start(str(tmp_path / "start"))
    one, two, three, four = ran
    assert one.model == "scratch" and one.steps == 4000 and one.lr == 2e-3 and one.data == "task"
    assert two.model == one.out_dir and (two.steps, two.lr) == (2500, 1e-3)
    assert three.model == two.out_dir and four.model == three.out_dir and four.out_dir == str(tmp_path / "start")
    assert len({one.out_dir, two.out_dir, three.out_dir, four.out_dir}) == 4
    assert (three.steps, three.lr, three.data) == (1500, 5e-4, "task:1,1,1,1,1,1,0.5")
    for stage, changed in ((two, {"model", "out_dir", "steps", "lr"}), (three, {"model", "out_dir", "steps", "lr",
                                                                                 "data"})):
        assert {k for k, v in vars(one).items() if getattr(stage, k) != v} == changed  # the rest is stage 1's
    assert {k for k, v in vars(three).items() if getattr(four, k) != v} == {"model", "out_dir"}


def test_task_data_spec_sets_the_sft_mix_only(monkeypatch):
    """--data task:w1,..,w7 draws SFT's chain lengths 1..7 at those weights: the items the mix gives when set as
    data.TASK_SFT_WEIGHTS (how probes set it); only SFT changes; a malformed mix is a usage error naming --data."""
    mix = (1, 0, 0, 0, 0, 0, 3)  # lengths 1 and 7 only, 7 three times as often
    items = sft.load_items("task:" + ",".join(map(str, mix)))
    lengths = [it["solution"].count("\n") + 1 for it in items]
    assert set(lengths) == {1, 7} and 0.7 < lengths.count(7) / len(lengths) < 0.8
    monkeypatch.setattr(data, "TASK_SFT_WEIGHTS", mix)
    assert items == data.task_splits()["sft"] and sft.load_items("task") == items
    monkeypatch.undo()
    assert sft.load_items("task") != items and data.task_splits(mix)["test-5"] == data.task_splits()["test-5"]
    with pytest.raises(SystemExit, match="--data task:1,x"):
        sft.train(sft.parse_config(["--data", "task:1,x", "--model", "scratch"]))


@pytest.mark.parametrize("recipe, preset", [("stage3-even6", "task-3"), ("stage4-even6", "task-4")])
def test_the_probe_recipes_that_made_the_start_are_its_presets(monkeypatch, recipe, preset):
    """experiments/sft_start.py's stage3-even6 and stage4-even6 (the probes that made the committed bytes: the mix set
    as data.TASK_SFT_WEIGHTS) train what `sft.py --preset task-3` / `task-4` train: the same items, every other
    field."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import sft_start
    _, weights, flags = sft_start.RECIPES[recipe]
    want = sft.parse_config(["--preset", preset, "--out_dir", "x"])
    items = sft.load_items(want.data)
    monkeypatch.setattr(data, "TASK_SFT_WEIGHTS", weights)
    probe = sft.parse_config(["--out_dir", "x", *flags])
    assert sft.load_items(probe.data) == items
    assert {k for k, v in vars(probe).items() if getattr(want, k) != v} == {"data"}  # "task" + the constant
