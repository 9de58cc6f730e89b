"""model.py: parity with an independent forward written from LLaDA's equations, round trips, padding, errors."""
import json
import math
import os

import pytest
import torch

import model


def reference_forward(sd, c, ids, key_mask=None):
    """LLaDA's forward written out from its equations, position by position where that is clearer. Reads only the
    state dict (checkpoint keys) and the config; shares no code with model.py."""
    B, L = ids.shape
    H, KV, D = c.n_heads, c.n_kv_heads, c.d_model
    hd = D // H

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_norm_eps))

    def rope(t):  # t (B, L, n, hd); pairs (j, j + hd/2) rotate by angle pos * theta^(-2j/hd)
        out = torch.empty_like(t)
        for pos in range(L):
            for j in range(hd // 2):
                a = pos * c.rope_theta ** (-2.0 * j / hd)
                x1, x2 = t[:, pos, :, j], t[:, pos, :, j + hd // 2]
                out[:, pos, :, j] = x1 * math.cos(a) - x2 * math.sin(a)
                out[:, pos, :, j + hd // 2] = x2 * math.cos(a) + x1 * math.sin(a)
        return out

    x = sd["model.transformer.wte.weight"][ids]
    for i in range(c.n_layers):
        p = lambda n: sd[f"model.transformer.blocks.{i}.{n}.weight"]  # noqa: E731
        h = rms(x, p("attn_norm"))
        q = rope((h @ p("q_proj").T).view(B, L, H, hd))
        k = rope((h @ p("k_proj").T).view(B, L, KV, hd))
        v = (h @ p("v_proj").T).view(B, L, KV, hd)
        att = torch.zeros(B, L, H, hd)
        for head in range(H):
            kvh = head // (H // KV)  # query head -> its shared key/value head
            s = torch.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kvh]) / math.sqrt(hd)
            if key_mask is not None:
                s = s.masked_fill(~key_mask.bool()[:, None, :], float("-inf"))
            att[:, :, head] = torch.einsum("bqk,bkd->bqd", s.softmax(-1), v[:, :, kvh])
        x = x + att.reshape(B, L, D) @ p("attn_out").T
        h = rms(x, p("ff_norm"))
        gate = h @ p("ff_proj").T
        x = x + ((gate * torch.sigmoid(gate)) * (h @ p("up_proj").T)) @ p("ff_out").T
    return rms(x, sd["model.transformer.ln_f.weight"]) @ sd["model.transformer.ff_out.weight"].T


def test_forward_matches_independent_transcription(tiny_model):
    ids = torch.randint(0, 127, (2, 11))
    with torch.no_grad():
        got = tiny_model(ids)
        want = reference_forward(tiny_model.state_dict(), tiny_model.config, ids)
    assert got.shape == (2, 11, tiny_model.config.vocab_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0
    torch.testing.assert_close(tiny_model(ids, attention_mask=mask),
                               reference_forward(tiny_model.state_dict(), tiny_model.config, ids, mask), atol=1e-5, rtol=1e-5)


def test_parameter_names_are_llada_checkpoint_keys(tiny_model):
    keys = set(tiny_model.state_dict())
    for n in ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"]:
        assert f"model.transformer.blocks.1.{n}.weight" in keys
    assert {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"} <= keys
    assert len(keys) == 3 + 9 * tiny_model.config.n_layers  # no biases, no buffers


def test_llada_8b_parameter_count():
    total, non_emb = model.count_params(model.LLADA_8B)
    assert round(total / 1e9, 2) == 8.02 and round(non_emb / 1e9, 2) == 6.98
    c = model.LLADA_8B
    assert (c.n_layers, c.d_model, c.n_heads, c.mlp_hidden_size, c.vocab_size) == (32, 4096, 32, 12288, 126464)
    assert (c.rope_theta, c.rms_norm_eps, c.mask_token_id, c.eos_token_id, c.weight_tying) == (5e5, 1e-5, 126336, 126081, False)


def test_left_padding_gives_unpadded_logits_and_attention_is_not_causal(tiny_model):
    a, b = torch.randint(2, 90, (1, 9)), torch.randint(2, 90, (1, 5))
    batch = torch.cat([a, torch.cat([torch.full((1, 4), 1), b], dim=1)])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        out = tiny_model(batch, attention_mask=mask)
        torch.testing.assert_close(out[0], tiny_model(a)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 4:], tiny_model(b)[0], atol=1e-5, rtol=1e-5)
        changed = a.clone()
        changed[0, -1] = (a[0, -1] + 1) % 90
        assert not torch.allclose(tiny_model(changed)[0, 0], tiny_model(a)[0, 0])  # position 0 sees position 8


def test_save_load_round_trip_sharded_and_bf16(tiny_model, tiny_tokenizer, tmp_path):
    ids = torch.randint(0, 127, (2, 7))
    want = tiny_model(ids)
    model.save(tiny_model, tiny_tokenizer, tmp_path / "one")
    model.save(tiny_model, tiny_tokenizer, tmp_path / "sharded", max_shard_bytes=20_000)
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 2
    for d in ["one", "sharded"]:
        m, tok = model.load(str(tmp_path / d))
        torch.testing.assert_close(m(ids), want, atol=0, rtol=0)
        assert tok.mask_token_id == m.config.mask_token_id == 127 and tok.eos_token_id == 1
    cfg = json.load(open(tmp_path / "one" / "config.json"))
    assert cfg["model_type"] == "llada" and cfg["block_type"] == "llama" and cfg["mask_token_id"] == 127
    m16, _ = model.load(str(tmp_path / "one"), dtype=torch.bfloat16)
    assert next(m16.parameters()).dtype == torch.bfloat16
    assert (m16(ids).float() - want).norm() / want.norm() < 0.05  # bf16 weights: ~1% relative error
    # saving over an existing checkpoint replaces it whole and leaves no temp directory behind
    model.save(tiny_model, tiny_tokenizer, tmp_path / "one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "sharded"]


def test_load_errors_name_the_problem(tiny_model, tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file
    d = tmp_path / "ck"
    model.save(tiny_model, tiny_tokenizer, d)
    sd = load_file(d / "model.safetensors")
    bad = dict(sd)
    del bad["model.transformer.blocks.0.up_proj.weight"]
    bad["model.transformer.blocks.0.extra.weight"] = torch.zeros(1)
    save_file(bad, d / "model.safetensors")
    with pytest.raises(KeyError, match=r"missing \['model.transformer.blocks.0.up_proj.weight'\].*extra"):
        model.load(str(d))
    bad = dict(sd)
    bad["model.transformer.ln_f.weight"] = torch.zeros(3)
    save_file(bad, d / "model.safetensors")
    with pytest.raises(ValueError, match="ln_f.weight"):
        model.load(str(d))
    cfg = json.load(open(d / "config.json"))
    with pytest.raises(TypeError, match="n_heads"):
        model.ModelConfig.from_dict({**cfg, "n_heads": "4"})
    with pytest.raises(ValueError, match="block_type"):
        model.ModelConfig.from_dict({**cfg, "block_type": "sequential"})
    assert model.ModelConfig.from_dict({**cfg, "rope_theta": 10000}).rope_theta == 10000.0


def test_unknown_config_keys_round_trip():
    d = {**model.LLADA_8B.to_dict(), "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"}, "init_std": 0.02}
    c = model.ModelConfig.from_dict(d)
    assert c.extra["auto_map"] == d["auto_map"] and c.to_dict() == d


def test_encode_chat_left_pads_with_template(tiny_tokenizer):
    convs = [[{"role": "user", "content": "12+3"}], [{"role": "system", "content": "be brief"}, {"role": "user", "content": "7"}]]
    ids, attn = model.encode_chat(tiny_tokenizer, convs, prefill="<")
    assert ids.shape == attn.shape and ids.shape[0] == 2
    for i, c in enumerate(convs):
        n = int(attn[i].sum())
        assert (attn[i, -n:] == 1).all() and (attn[i, :-n] == 0).all() and (ids[i, :-n] == tiny_tokenizer.pad_token_id).all()
        text = tiny_tokenizer.decode(ids[i, -n:])
        assert text.startswith("<|startoftext|><|start_header_id|>" + c[0]["role"]) and text.count("<|startoftext|>") == 1
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<")


def test_gradient_checkpointing_same_grads(tiny_model):
    ids = torch.randint(0, 127, (2, 8))
    grads = []
    for ckpt in (False, True):
        tiny_model.zero_grad()
        tiny_model.gradient_checkpointing = ckpt
        tiny_model.train()
        tiny_model(ids).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)
