"""LLaDA, the masked diffusion LM, in plain PyTorch: config, forward pass, HF-format load/save, chat prompts, LoRA.

LLaDA-8B (Nie et al. 2025, arXiv 2502.09992) is a Llama-shaped Transformer without the causal mask: it reads a
sequence in which some tokens are the mask token and predicts every position at once. One block is
    h = x + attn_out(SDPA(RoPE(q_proj(n1)), RoPE(k_proj(n1)), v_proj(n1)))        n1 = RMSNorm(x)   (bidirectional)
    y = h + ff_out(silu(ff_proj(n2)) * up_proj(n2))                              n2 = RMSNorm(h)   (SwiGLU)
and logits = ff_out(RMSNorm(h_last)) with an untied head. Parameter names are the keys of the official checkpoint
(`model.transformer.blocks.{i}.q_proj.weight`, ...), so its sharded safetensors load with strict key checking.

Deviations from LLaDA's modeling_llada.py (numbered, all behaviour-preserving on its configs):
 1. Only the configuration LLaDA-8B uses is implemented (llama blocks, RMSNorm, RoPE, SwiGLU, no bias, no
    alibi); `load` rejects a config.json that asks for anything else, naming the field.
 2. `attention_mask` is a pure key-padding mask. No causal term is ever added (copies that added one made the model
    causal under left padding). Positions are absolute (0..L-1) even under left padding; RoPE is relative in q.k,
    so a left-padded row gives the logits of the unpadded row up to float rounding.
 3. No dropout (LLaDA-8B's are 0.0; `save` writes them, as LLaDA's code defaults to 0.1), no block groups.
 4. LoRA keeps each base weight under its LLaDA key and adds peft's lora_A/lora_B. The official peft target list
    names Llama modules; on LLaDA it matches only q_proj, k_proj, v_proj and up_proj, which is LORA_TARGETS.

Use:  python model.py              # demo: tiny random model + sampler on CPU
      m, tok = load("GSAI-ML/LLaDA-8B-Instruct", dtype=torch.bfloat16, device="cuda")   # when online
Shapes: B batch, L sequence length, D d_model, H heads, Hd head dim, V vocab.
"""
import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    d_model: int = 4096                 # hidden size D
    n_layers: int = 32                  # Transformer blocks
    n_heads: int = 32                   # query heads H
    n_kv_heads: int = 32                # key/value heads (GQA when < n_heads; LLaDA-8B: MHA)
    mlp_hidden_size: int = 12288        # SwiGLU inner size (ff_proj/up_proj rows)
    vocab_size: int = 126464            # tokenizer vocabulary
    embedding_size: int = 126464        # rows of wte / ff_out (>= vocab_size; LLaDA pads none)
    rope_theta: float = 500000.0        # RoPE base
    rms_norm_eps: float = 1e-5          # RMSNorm epsilon
    max_sequence_length: int = 4096     # context the model was trained for (not enforced: RoPE extrapolates)
    mask_token_id: int = 126336         # <|mdm_mask|>
    eos_token_id: int = 126081          # <|endoftext|>; LLaDA also pads with it
    pad_token_id: int = 126081          # padding id (= EOS in LLaDA)
    weight_tying: bool = False          # LLaDA-8B has an untied head (model.transformer.ff_out)
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, kept for a faithful round trip
    code: dict = field(default_factory=dict, repr=False)   # {file: text} of the *.py beside config.json (remote code)

    @classmethod
    def from_dict(cls, d):
        """Build from a config.json dict; a known field of the wrong type is an error naming it."""
        kw = {}
        for f in fields(cls):
            if f.name in ("extra", "code") or f.name not in d:
                continue
            v, want = d[f.name], f.type
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)  # JSON writes 500000.0 as 500000 sometimes
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise TypeError(f"config field {f.name!r} must be {want.__name__}, got {v!r}")
            kw[f.name] = v
        extra = {k: v for k, v in d.items() if k not in kw and k != "extra"}
        for k, want in LLADA_ARCH.items():  # deviation 1: refuse architectures this forward does not implement
            if k in extra and extra[k] != want:
                raise ValueError(f"config field {k!r}={extra[k]!r} is not supported (only {want!r})")
        return cls(**kw, extra=extra)

    def to_dict(self):
        return {**LLADA_ARCH, **self.extra, **{k: v for k, v in asdict(self).items() if k not in ("extra", "code")}}


# LLaDA-8B's fixed choices this forward implements, saved in every config.json for LLaDA's own modeling code.
LLADA_ARCH = dict(model_type="llada", architectures=["LLaDAModelLM"], block_type="llama", activation_type="silu",
                  layer_norm_type="rms", rope=True, alibi=False, include_bias=False, include_qkv_bias=False,
                  bias_for_layer_norm=False, layer_norm_with_affine=True, attention_layer_norm=False,
                  scale_logits=False, rope_full_precision=True, input_emb_norm=False, block_group_size=1,
                  attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0)
# AutoModel(trust_remote_code=True) needs auto_map + LLaDA's code files: `save` copies a checkpoint's, else the hub's.
LLADA_CODE_REPO = "GSAI-ML/LLaDA-8B-Instruct"
LLADA_AUTO_MAP = {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                  "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}

LLADA_8B = ModelConfig()  # GSAI-ML/LLaDA-8B-Instruct: 8.02B params, 6.98B without wte/ff_out


def tiny_config(**kw):
    """A named tiny config for tests and demos (random weights)."""
    base = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=160, vocab_size=128,
                embedding_size=128, max_sequence_length=512, mask_token_id=127, eos_token_id=1, pad_token_id=1)
    return ModelConfig(**{**base, **kw})


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # fp32 statistics as in LLaDA; cast back before the affine weight.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(seq_len, head_dim, theta, device):
    """cos, sin of shape (L, Hd) in fp32, rotate-half layout: frequencies repeated as [f, f]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(t, cos, sin):
    """t: (B, H, L, Hd); rotate-half RoPE computed in fp32, returned in t's dtype."""
    tf = t.float()
    t1, t2 = tf.chunk(2, dim=-1)
    return (tf * cos + torch.cat([-t2, t1], dim=-1) * sin).to(t.dtype)


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        hd = c.d_model // c.n_heads
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, hd
        self.attn_norm, self.ff_norm = RMSNorm(c.d_model, c.rms_norm_eps), RMSNorm(c.d_model, c.rms_norm_eps)
        self.q_proj = nn.Linear(c.d_model, c.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(c.n_heads * hd, c.d_model, bias=False)
        self.ff_proj = nn.Linear(c.d_model, c.mlp_hidden_size, bias=False)   # gate
        self.up_proj = nn.Linear(c.d_model, c.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(c.mlp_hidden_size, c.d_model, bias=False)

    def forward(self, x, cos, sin, attn_bias, cache=None, start=0):
        B, L, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)      # (B, H, L, Hd)
        k = self.k_proj(h).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache:  # sample.py's fast mode: x is the canvas's span start..start+L; keys/values elsewhere as recorded
            k, v = (torch.cat([c[:, :, :start], t, c[:, :, start + L:]], dim=2) for c, t in zip(cache, (k, v)))
        elif cache is not None:  # an empty list: record this layer's k, v of the whole canvas (attention_mask: keys)
            cache += [k, v]
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, is_causal=False)  # bidirectional
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, L, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDA(nn.Module):
    """Call with input_ids (B, L) and an optional key-padding attention_mask (B, L) (1 = real token); returns
    logits (B, L, V) in the parameter dtype; cache, start: the sampler's fast-mode KV cache (see Block.forward)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        assert c.d_model % c.n_heads == 0 and c.n_heads % c.n_kv_heads == 0, "heads must divide d_model / each other"
        self.model = nn.Module()  # the `model.` prefix of the checkpoint keys
        self.model.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.embedding_size, c.d_model),
            blocks=nn.ModuleList(Block(c) for _ in range(c.n_layers)),
            ln_f=RMSNorm(c.d_model, c.rms_norm_eps)))
        if not c.weight_tying:
            self.model.transformer["ff_out"] = nn.Linear(c.d_model, c.embedding_size, bias=False)
        self.gradient_checkpointing = False  # recompute each block in backward (needed for SFT/RL on 8B)
        self._rope = {}

    def init_weights(self, std=0.02, generator=None):
        """Random init for models trained from scratch (the embedded task); N(0, std), norms at 1."""
        for name, p in self.named_parameters():
            with torch.no_grad():
                p.fill_(1.0) if "norm" in name or "ln_f" in name else p.normal_(0.0, std, generator=generator)
        return self

    def forward(self, input_ids, attention_mask=None, cache=None, start=0):
        t, (B, L) = self.model.transformer, input_ids.shape
        key = (start + L, input_ids.device.type, input_ids.device.index)
        if key not in self._rope:
            self._rope[key] = rope_tables(start + L, self.config.d_model // self.config.n_heads,
                                          self.config.rope_theta, input_ids.device)
        cos, sin = (r[start:] for r in self._rope[key])  # the positions of input_ids in the canvas
        attn_bias = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L) keys
        x = t.wte(input_ids)
        for i, blk in enumerate(t.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, cos, sin, attn_bias, use_reentrant=False)
            else:
                x = blk(x, cos, sin, attn_bias, None if cache is None else cache[i], start)
        x = t.ln_f(x)
        logits = F.linear(x, t.wte.weight) if self.config.weight_tying else t.ff_out(x)
        return logits if self.config.embedding_size == self.config.vocab_size else logits[..., :self.config.vocab_size]


# ------------------------------------------------------------------------------------------------------ LoRA
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj")  # what the official peft target list matches (deviation 4)
LORA_ALL = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")  # every block projection


class LoRALinear(nn.Linear):
    """y = W x + (alpha / r) B A dropout(x). W is the base layer's own Parameter (no copy, same key); A is
    Kaiming-uniform and B zero, as in peft, so the model starts equal to the base. The adapter is kept in `dtype`
    (fp32: the optimizer updates it) and run in the input's dtype."""

    def __init__(self, base: nn.Linear, rank, alpha, dropout, dtype=torch.float32):
        with torch.device("meta"):  # the base weight is reused below; allocate nothing for it
            super().__init__(base.in_features, base.out_features, bias=False)
        self.weight, dev = base.weight, base.weight.device
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scale, self.drop = alpha / rank, nn.Dropout(dropout)
        self.enabled, self.merged = True, False  # enabled False: the base model; merged: W holds W + scale B A

    def forward(self, x):
        y = F.linear(x, self.weight)
        if not self.enabled or self.merged:
            return y
        return y + self.scale * self.lora_B(self.lora_A(self.drop(x).to(self.lora_A.weight.dtype))).to(y.dtype)


def add_lora(model, rank=128, alpha=64.0, dropout=0.05, targets=LORA_TARGETS, dtype=torch.float32):
    """Put an adapter on the `targets` projections of every block and freeze everything else; rank 0 = full
    fine-tuning (nothing changes). Call before launch.fsdp. model.lora keeps the settings (None at rank 0)."""
    model.lora = dict(rank=rank, alpha=alpha, dropout=dropout, targets=list(targets)) if rank else None
    if not rank:
        return model
    assert set(targets) <= set(LORA_ALL), f"LoRA targets {targets} must be among LLaDA's projections {LORA_ALL}"
    model.requires_grad_(False)
    for block in model.model.transformer.blocks:
        for name in targets:
            setattr(block, name, LoRALinear(getattr(block, name), rank, alpha, dropout, dtype))
    return model


@contextlib.contextmanager
def lora_disabled(model):
    """The base model for the duration: the reference policy of a LoRA run, with no second copy in memory. Use it
    under torch.no_grad(): a checkpointed block would be recomputed in backward with the adapter back on."""
    mods = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert not any(m.merged for m in mods), "unmerge the adapters before disabling them"
    assert not (torch.is_grad_enabled() and model.gradient_checkpointing), "use lora_disabled under torch.no_grad()"
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.enabled = True


@torch.no_grad()
def merge_lora(model, merged=True):
    """W += scale B A in place for every adapter (merged=False: take it out again); FSDP: see merged_state_dict."""
    for m in [m for m in model.modules() if isinstance(m, LoRALinear)]:
        if m.merged != merged:
            delta = m.scale * (m.lora_B.weight.float() @ m.lora_A.weight.float())
            m.weight += (delta if merged else -delta).to(m.weight.dtype)
            m.merged = merged
    return model


def merged_state_dict(sd, lora):
    """A state dict with LoRA keys -> LLaDA's keys only, each adapted W + (alpha/r) B A computed in fp32 and stored in
    W's dtype. lora = model.lora; sd may come from launch.full_state_dict of an FSDP model."""
    out = {k: v for k, v in sd.items() if ".lora_" not in k}
    for k in sd:
        if k.endswith(".lora_A.weight"):
            w = k.removesuffix(".lora_A.weight") + ".weight"
            delta = sd[k.replace("lora_A", "lora_B")].float() @ sd[k].float()
            out[w] = (sd[w].float() + lora["alpha"] / lora["rank"] * delta).to(sd[w].dtype)
    return out


def save_adapter(sd, lora, path, base=None):
    """Adapter-only files in peft's layout (adapter_config.json, adapter_model.safetensors with keys prefixed
    base_model.model.) from a state dict holding the lora_A/lora_B tensors."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    ab = {"base_model.model." + k: v.detach().contiguous().cpu() for k, v in sd.items() if ".lora_" in k}
    save_file(ab, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(dict(peft_type="LORA", r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                       target_modules=lora["targets"], bias="none", base_model_name_or_path=base), f, indent=2)


def load_adapter(model, path):
    """Add the adapter saved at `path` (save_adapter's files) to a base model and load it, keys checked strictly."""
    from safetensors.torch import load_file
    c = json.load(open(os.path.join(path, "adapter_config.json")))
    add_lora(model, c["r"], c["lora_alpha"], c["lora_dropout"], tuple(c["target_modules"]))
    sd = load_file(os.path.join(path, "adapter_model.safetensors"))
    sd = {k.removeprefix("base_model.model."): v for k, v in sd.items()}
    check_state_dict(model, {**{k: v for k, v in model.state_dict().items() if ".lora_" not in k}, **sd})
    model.load_state_dict(sd, strict=False)
    return model


def _read_state_dict(path):
    from safetensors.torch import load_file
    index = os.path.join(path, "model.safetensors.index.json")
    files = sorted({*json.load(open(index))["weight_map"].values()}) if os.path.exists(index) else ["model.safetensors"]
    return {k: v for f in files for k, v in load_file(os.path.join(path, f)).items()}


def check_state_dict(model, sd):
    """Strict key and shape check that names the offending keys."""
    want = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise KeyError(f"checkpoint keys differ: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                       f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    for k, shape in want.items():
        if tuple(sd[k].shape) != tuple(shape):
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(sd[k].shape)}, model {tuple(shape)}")


def load(path, dtype=torch.float32, device="cpu"):
    """(model, tokenizer) from a local HF-format directory, or from a hub id when online."""
    from transformers import AutoTokenizer
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download
        path = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.py"])
    with open(os.path.join(path, "config.json")) as f:
        config = ModelConfig.from_dict(json.load(f))
    config.code = {f: open(os.path.join(path, f)).read() for f in sorted(os.listdir(path)) if f.endswith(".py")}
    with torch.device("meta"):
        model = LLaDA(config)
    sd = _read_state_dict(path)
    check_state_dict(model, sd)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, strict=True, assign=True)
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns that "llada" is no HF model type
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never prompts: no remote code
    hf_logging.set_verbosity(verbosity)
    return model.eval(), tokenizer


def save(model, tokenizer, path, max_shard_bytes=5 * 2**30, extra_files=None, state_dict=None):
    """Write config.json, safetensors (sharded above max_shard_bytes, with an index), the tokenizer and any remote-code
    files into a temp directory, then rename it over `path`: a crash never leaves a half-written checkpoint. A LoRA
    model is saved merged (LLaDA keys), plus its adapter alone in path/adapter. state_dict: the full state dict of a
    sharded model (launch.full_state_dict; rank 0 saves). extra_files: {name: JSON-able obj} (run config, metrics)."""
    from safetensors.torch import save_file
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path), dir=parent)
    sd = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    if getattr(model, "lora", None):
        save_adapter(sd, model.lora, os.path.join(tmp, "adapter"))
        sd = merged_state_dict(sd, model.lora)
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards, cur, size = shards + [cur], {}, 0
        cur[k], size = v, size + nbytes
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in sd.values())
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = str(sd["model.transformer.wte.weight"].dtype).removeprefix("torch.")
    cfg["auto_map"] = cfg.get("auto_map", LLADA_AUTO_MAP) if model.config.code else \
        {k: f"{LLADA_CODE_REPO}--{v}" for k, v in LLADA_AUTO_MAP.items()}  # transformers' code-in-another-repo form
    for name, text in model.config.code.items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, tmp)
    for name, obj in {"config.json": cfg, **(extra_files or {})}.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=2)
    old = path + ".old"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _save_tokenizer(tokenizer, path):
    """save_pretrained, readable by transformers 4.46+ too: v5 names the class TokenizersBackend (unknown to v4)
    and keeps the chat template only in chat_template.jinja (v4.46 reads it from tokenizer_config.json)."""
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        tc = json.load(f)
    if tc.get("tokenizer_class") == "TokenizersBackend":
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tokenizer.chat_template is not None:
        tc["chat_template"] = tokenizer.chat_template
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)


def encode_chat(tokenizer, conversations, prefill="", device=None):
    """Chat-template prompts with the generation prompt, add_special_tokens=False (the template holds BOS), left-padded
    with pad (= EOS in LLaDA); conversations: [[{"role", "content"}, ...], ...]; prefill: text after the assistant
    header (d1's eval: "<reasoning>"). Returns input_ids (B, P) and attention_mask (B, P) (1 = real token)."""
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) + prefill
             for c in conversations]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):], attn[i, P - len(r):] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), attn.to(device)


def count_params(config):
    """(total, non-embedding) parameter counts, built on the meta device (no memory)."""
    with torch.device("meta"):
        m = LLaDA(config)
    total = sum(p.numel() for p in m.parameters())
    emb = sum(p.numel() for n, p in m.named_parameters() if n.endswith(("wte.weight", "transformer.ff_out.weight")))
    return total, total - emb


if __name__ == "__main__":
    import sample
    torch.manual_seed(0)
    m = LLaDA(tiny_config()).init_weights().eval()
    prompt = torch.randint(2, 90, (2, 6))
    out = sample.generate(m, prompt, gen_length=16, block_length=8, steps=8)
    print("LLaDA-8B params (total, non-embedding):", count_params(LLADA_8B))
    print("tiny random model, greedy LLaDA sampling:\n", out)
