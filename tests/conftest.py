"""Shared fixtures: a tiny random LLaDA and a tiny HF-format tokenizer built with `tokenizers`, so the real
load/encode/decode path is the one under test."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(1)  # deterministic and friendly to a 2-core CI box

import model  # noqa: E402

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLADA_TEMPLATE = ("{% for m in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
                  "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def build_tiny_tokenizer(vocab_size=128):
    """Character-level WordLevel tokenizer: specials first (EOS = 1), printable ASCII, reserved fillers, and the
    mask token last (= vocab_size - 1), matching model.tiny_config()."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in chars:
        vocab[c] = len(vocab)
    while len(vocab) < vocab_size - 1:
        vocab[f"<|reserved_{len(vocab)}|>"] = len(vocab)
    vocab["<|mdm_mask|>"] = vocab_size - 1
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS + ["<|mdm_mask|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", mask_token="<|mdm_mask|>", chat_template=LLADA_TEMPLATE)


def failure_log(text, n=3000):
    """What a failed subprocess printed, for an assert message: the first native-crash report (faulthandler's
    "Fatal Python error" and the Python stack under it; launch.setup_dist turns it on) and the last n characters.
    A crashed rank's stack comes before the other ranks' and torchrun's reports, so a plain tail would miss it."""
    at = text.find("Fatal Python error")
    crash = text[at:at + n] + "\n...\n" if 0 <= at < len(text) - n else ""
    return crash + text[-n:]


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return model.LLaDA(model.tiny_config()).init_weights(std=0.2).eval()


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()


def save_tiny_task_model(path, seed=0):
    """A tiny random LLaDA (d 32, 2 layers) with the embedded task's tokenizer, saved in the HF format at path."""
    import data
    tok = data.task_tokenizer()
    mc = model.ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=64, vocab_size=len(tok),
                           embedding_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model.save(model.LLaDA(mc).init_weights(std=0.1), tok, path)
    return str(path)
