"""Checkpoints that move freely: config.json holds LLaDA's zero dropouts, AutoModel(trust_remote_code=True) loads a
saved directory through the remote code it carries, and the tokenizer files load under transformers 4.46 too.

The remote code here is a minimal stand-in for LLaDA's configuration_llada.py / modeling_llada.py written by this
test (same class names, module names and 0.1 dropout defaults), not LLaDA's code. The cross-version tokenizer check
runs when OLD_TRANSFORMERS_PYTHON names a python with transformers 4.x (e.g. a venv with transformers==4.46.3).
"""
import json
import os
import subprocess

import pytest
import torch

import model

STAND_IN_CONFIG = '''
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288, n_kv_heads=None,
                 embedding_size=126464, attention_dropout=0.1, residual_dropout=0.1, embedding_dropout=0.1, **kw):
        self.d_model, self.n_layers, self.n_heads, self.mlp_hidden_size = d_model, n_layers, n_heads, mlp_hidden_size
        self.n_kv_heads, self.embedding_size = n_kv_heads or n_heads, embedding_size
        self.attention_dropout, self.residual_dropout = attention_dropout, residual_dropout
        self.embedding_dropout = embedding_dropout
        super().__init__(**kw)
'''

STAND_IN_MODELING = '''
import torch
import torch.nn as nn
from transformers import PreTrainedModel

from .configuration_llada import LLaDAConfig


class Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        c, hd = config, config.d_model // config.n_heads
        blocks = nn.ModuleList()
        for _ in range(c.n_layers):
            b = nn.Module()
            b.attn_norm, b.ff_norm = Norm(c.d_model), Norm(c.d_model)
            b.q_proj = nn.Linear(c.d_model, c.d_model, bias=False)
            b.k_proj = nn.Linear(c.d_model, c.n_kv_heads * hd, bias=False)
            b.v_proj = nn.Linear(c.d_model, c.n_kv_heads * hd, bias=False)
            b.attn_out = nn.Linear(c.d_model, c.d_model, bias=False)
            b.ff_proj = nn.Linear(c.d_model, c.mlp_hidden_size, bias=False)
            b.up_proj = nn.Linear(c.d_model, c.mlp_hidden_size, bias=False)
            b.ff_out = nn.Linear(c.mlp_hidden_size, c.d_model, bias=False)
            blocks.append(b)
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.embedding_size, c.d_model), blocks=blocks, ln_f=Norm(c.d_model),
            ff_out=nn.Linear(c.d_model, c.embedding_size, bias=False)))
        self.post_init()

    def _init_weights(self, module):
        pass
'''


def test_config_json_holds_lladas_zero_dropouts(tiny_model, tiny_tokenizer, tmp_path):
    model.save(tiny_model, tiny_tokenizer, tmp_path / "ck")
    cfg = json.load(open(tmp_path / "ck" / "config.json"))
    assert cfg["attention_dropout"] == cfg["residual_dropout"] == cfg["embedding_dropout"] == 0.0
    with pytest.raises(ValueError, match="residual_dropout"):  # this forward has no dropout: refuse, don't ignore
        model.ModelConfig.from_dict({**cfg, "residual_dropout": 0.1})


def test_without_carried_code_auto_map_points_at_lladas_repo(tiny_model, tiny_tokenizer, tmp_path):
    model.save(tiny_model, tiny_tokenizer, tmp_path / "ck")
    auto_map = json.load(open(tmp_path / "ck" / "config.json"))["auto_map"]
    assert auto_map["AutoModel"] == "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM"
    assert auto_map["AutoConfig"] == "GSAI-ML/LLaDA-8B-Instruct--configuration_llada.LLaDAConfig"
    assert not list((tmp_path / "ck").glob("*.py"))


def test_remote_code_is_carried_and_automodel_loads_our_directory(tiny_model, tiny_tokenizer, tmp_path):
    from transformers import AutoModel, AutoTokenizer
    src, out = tmp_path / "llada", tmp_path / "ours"
    model.save(tiny_model, tiny_tokenizer, src)  # stands for a hub snapshot of LLaDA: add its files and auto_map
    (src / "configuration_llada.py").write_text(STAND_IN_CONFIG)
    (src / "modeling_llada.py").write_text(STAND_IN_MODELING)
    cfg = json.load(open(src / "config.json"))
    cfg["auto_map"] = dict(model.LLADA_AUTO_MAP)
    json.dump(cfg, open(src / "config.json", "w"))
    m, tok = model.load(str(src))
    model.save(m, tok, out)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        assert (out / name).read_text() == (src / name).read_text()
    assert json.load(open(out / "config.json"))["auto_map"] == model.LLADA_AUTO_MAP
    hf = AutoModel.from_pretrained(str(out), trust_remote_code=True)
    assert type(hf).__name__ == "LLaDAModelLM"
    assert (hf.config.attention_dropout, hf.config.residual_dropout, hf.config.embedding_dropout) == (0.0, 0.0, 0.0)
    got = hf.state_dict()
    assert set(got) == set(tiny_model.state_dict())
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(got[k], v), k
    assert AutoTokenizer.from_pretrained(str(out))("12+3")["input_ids"] == tiny_tokenizer("12+3")["input_ids"]


def test_tokenizer_files_name_a_class_transformers_4_knows(tiny_model, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer
    model.save(tiny_model, tiny_tokenizer, tmp_path / "ck")
    tc = json.load(open(tmp_path / "ck" / "tokenizer_config.json"))
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 5 writes TokenizersBackend
    assert tc["chat_template"] == tiny_tokenizer.chat_template  # 4.46 reads it here, not from chat_template.jinja
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ck"))
    msgs = [{"role": "user", "content": "7+8"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tiny_tokenizer.apply_chat_template(msgs, tokenize=False)


OLD = os.environ.get("OLD_TRANSFORMERS_PYTHON")


@pytest.mark.skipif(not OLD, reason="set OLD_TRANSFORMERS_PYTHON to a python with transformers 4.x")
def test_tokenizer_loads_under_old_transformers(tiny_model, tiny_tokenizer, tmp_path):
    import data
    msgs = [{"role": "user", "content": "Tom has 3 coins. How many coins now?"}]
    for name, tok in (("tiny", tiny_tokenizer), ("task", data.task_tokenizer())):
        model.save(tiny_model, tok, tmp_path / name)
        script = ("import sys, json, transformers; from transformers import AutoTokenizer; "
                  "t = AutoTokenizer.from_pretrained(sys.argv[1]); m = json.loads(sys.argv[2]); "
                  "print(json.dumps([transformers.__version__, t.apply_chat_template(m, tokenize=False, "
                  "add_generation_prompt=True), t(m[0]['content'])['input_ids'], t.mask_token_id]))")
        r = subprocess.run([OLD, "-c", script, str(tmp_path / name), json.dumps(msgs)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        version, text, ids, mask_id = json.loads(r.stdout.strip().splitlines()[-1])
        assert version.startswith("4.")
        assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert ids == tok(msgs[0]["content"])["input_ids"] and mask_id == tok.mask_token_id
