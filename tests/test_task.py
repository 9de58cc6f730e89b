"""The embedded task (data.py): deterministic, correct traces, disjoint splits, a tokenizer on LLaDA's code path."""
import re

import pytest

from transformers import AutoTokenizer

import data
import model
import reward
import sft


def test_deterministic_from_seed():
    a, b = data.task_splits(), data.task_splits()
    assert a == b
    other = data.task_splits({**data.TASK_SPLITS, "sft": (*data.TASK_SPLITS["sft"][:3], 99)})
    assert other["sft"] != a["sft"] and other["test"] == a["test"]


def test_traces_are_correct():
    for split, items in data.task_splits().items():
        lo, hi = data.TASK_SPLITS[split][:2]
        for it in items:
            assert set(it) == {"id", "question", "answer", "solution"}
            lines = it["solution"].split("\n")
            assert lo <= len(lines) <= hi
            start = int(re.search(r"has (\d+)", it["question"]).group(1))
            operands = [int(n) for n in re.findall(r"(?:gets|finds|loses|gives) (\d+)", it["question"])]
            v = start
            for k, (line, n) in enumerate(zip(lines, operands, strict=True)):
                a, op, b, c = re.fullmatch(data.TASK_ORDINALS[k] + r": (\d)([+-])(\d)=(\d)", line).groups()
                assert int(a) == v and int(b) == n and int(c) == (v + n if op == "+" else v - n)
                v = int(c)
            assert it["answer"] == str(v)
            assert reward.is_equiv(reward.extract_answer(data.format_response(it)), it["answer"])


def test_splits_do_not_overlap_and_rl_is_harder():
    s = data.task_splits()
    chains = {k: {tuple(re.findall(r"\d+|[+-]", it["solution"])) for it in v} for k, v in s.items()}
    for a, b in [("sft", "rl"), ("sft", "test"), ("sft", "val"), ("rl", "test"), ("rl", "val"), ("test", "val")]:
        assert not chains[a] & chains[b], (a, b)
    steps = {k: sum(it["solution"].count("\n") + 1 for it in v) / len(v) for k, v in s.items()}
    assert steps["rl"] > steps["sft"]


def test_tokenizer_round_trip_and_llada_template(tmp_path):
    tok = data.task_tokenizer()
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    it = data.task_splits()["rl"][0]
    msgs = data.task_messages(it["question"])
    prompt = tok2.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n" + it["question"] +
                      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    text = prompt + data.format_response(it) + "<|eot_id|><|endoftext|>"
    ids = tok2(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok2.decode(ids) == text and tok2.unk_token_id not in ids
    for name in ("bos", "eos", "pad", "mask"):
        assert getattr(tok2, f"{name}_token_id") == getattr(tok, f"{name}_token_id") is not None
    assert tok2.pad_token_id == tok2.eos_token_id
    batch, attn = model.encode_chat(tok2, [msgs, data.task_messages("Tom has 1 pens. He gets 2. How many pens now?")])
    assert batch.shape == attn.shape and attn[0].all() and not attn[1].all()


def test_task_preset_fits_the_sampling_window():
    tok = data.task_tokenizer()
    cfg = sft.parse_config([])  # the no-flag preset: the embedded task
    assert cfg.data == "task" and cfg.resp_len == data.TASK_SAMPLING["gen_length"]  # SFT rows = the RL canvas
    splits = data.task_splits()
    assert max(data.TASK_SPLITS[k][1] for k in ("rl", "test")) >= data.TASK_SPLITS["sft"][1]
    for items in (splits["rl"], splits["test"]):  # the longest chains; SFT's are shorter
        pairs = sft.tokenize_pairs(items, tok, cfg, log=lambda *a: None)
        assert len(pairs) == len(items)  # nothing over max_len: every response (+ EOT) fits the window


def test_task_max_value_bounds_every_value_and_rl_prompts_limit(monkeypatch):
    monkeypatch.setattr(data, "TASK_MAX_VALUE", 5)  # read at call time (experiments/sft_start.py's max5 configs)
    splits = data.task_splits()
    for items in splits.values():
        for it in items[:300]:
            assert max(int(n) for n in re.findall(r"\d", it["solution"])) <= 5
    items, messages = data.rl_prompts("task", 16)
    assert items == splits["rl"][:16] and messages is data.task_messages
    assert data.rl_prompts("task")[0] == splits["rl"]


def test_task_levels_mix_out_of_range_problems_by_a_rule_on_the_problem():
    """task-ext<s>: a share s of the RL prompts and of the level's test set go beyond SFT's values (a rule on the
    problem, not on a model's failures); test chains stay outside the level's RL prompts; task-ext0 trains on
    task's RL split; a test seed draws a fresh test set of the same distribution."""
    import re
    top = lambda it: max(int(d) for d in re.findall(r"\d", it["solution"]))
    assert data.task_level("task-ext0", "rl") == data.task_splits()["rl"]
    for share in (0.25, 1):
        rl, test = data.task_level(f"task-ext{share}", "rl"), data.task_level(f"task-ext{share}", "test")
        assert len(rl) == len(data.task_splits()["rl"]) and len(test) == data.TASK_LEVEL_TEST
        for items in (rl, test):
            beyond = [top(it) > data.TASK_MAX_VALUE for it in items]
            assert sum(beyond) == round(share * len(items))
            assert all(top(it) <= data.TASK_EXT_MAX for it in items)
            assert all(it["answer"] == it["solution"].split("=")[-1] for it in items)  # the chain's last value
        assert not {it["solution"] for it in rl} & {it["solution"] for it in test}
        fresh = data.task_level(f"task-ext{share}", "test", test_seed=7)
        assert [it["question"] for it in fresh] != [it["question"] for it in test]
    for bad in ("task-ext2", "task-extx", "tasks"):
        with pytest.raises(ValueError, match="task-ext"):
            data.task_share(bad)
