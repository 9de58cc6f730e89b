"""The embedded task (data.py): deterministic, correct traces, held-out sets, un-guessable answers, the soundness
check, a tokenizer on LLaDA's code path."""
import collections
import os
import re
import sys

import pytest

from transformers import AutoTokenizer

import data
import model
import reward
import sft

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import errors  # noqa: E402
import ladder  # noqa: E402
import levels  # noqa: E402


def chain(it):
    """The chain of an item, whatever the wording: the start value, then each line's operator and operand."""
    return (re.search(r"has (\d+)", it["question"])[1], *re.findall(r": \d([+-]\d)=", it["solution"]))


def test_deterministic_and_the_sft_mix_changes_only_sft(monkeypatch):
    a = data.task_splits()
    assert a == data._task_splits.__wrapped__(tuple(data.TASK_SFT_WEIGHTS))  # not an artefact of the cache
    monkeypatch.setattr(data, "TASK_SFT_WEIGHTS", (1,) * len(data.TASK_ORDINALS))
    b = data.task_splits()
    assert b["sft"] != a["sft"] and all(b[k] == a[k] for k in a if k != "sft")


def test_traces_and_answers_are_correct():
    lo, hi = data.TASK_VALUES
    for key, items in data.task_splits().items():
        for it in items[:400]:
            assert set(it) == {"id", "question", "answer", "solution"}
            lines = it["solution"].split("\n")
            v = int(re.search(r"has (\d+)", it["question"])[1])
            operands = [int(n) for n in re.findall(r"(?:gets|finds|loses|gives) (\d+)", it["question"])]
            results = ""
            for k, (line, n) in enumerate(zip(lines, operands, strict=True)):
                a, op, b, c = re.fullmatch(data.TASK_ORDINALS[k] + r": (\d)([+-])(\d)=(\d)", line).groups()
                assert int(a) == v and int(b) == n and int(c) == (v + n if op == "+" else v - n)
                assert lo <= int(c) <= hi
                v, results = int(c), results + c
            assert it["answer"] == results  # every step's result, in order
            if key != "sft":
                assert len(lines) == int(key.split("-")[1])  # a level is a chain length
    for it in data.task_level("task-4", "test")[:20]:  # the reward path reads the digit string back
        assert reward.is_equiv(reward.extract_answer(data.format_response(it)), it["answer"])
        assert not reward.is_equiv(it["answer"][:-1], it["answer"])


def test_every_held_out_set_is_disjoint_from_sft_and_from_each_other():
    """Held out by construction: no chain of a level's rl, val or test set is in SFT or in another held-out set."""
    s = data.task_splits()
    chains = {k: {chain(it) for it in v} for k, v in s.items()}
    held = [k for k in s if k != "sft"]
    assert len(held) == len(data.TASK_LEVELS) * len(data.TASK_HELD)
    for k in held:
        assert len(chains[k]) == len(s[k])  # distinct within the set
        assert not chains[k] & chains["sft"], k
        for k2 in held:
            assert k == k2 or not chains[k] & chains[k2], (k, k2)
    lengths = collections.Counter(len(c) - 1 for c in chains["sft"])
    assert set(lengths) == set(range(1, len(data.TASK_ORDINALS) + 1))  # SFT sees every length, long ones rarely
    assert lengths[7] < lengths[5] / 4


def test_answers_cannot_be_guessed():
    """The best constant answer is right on at most 2% of any level's problems (issue 26's bound)."""
    for n in data.TASK_LEVELS:
        for split in data.TASK_HELD:
            items = data.task_level(f"task-{n}", split)
            top = collections.Counter(it["answer"] for it in items).most_common(1)[0][1]
            assert top / len(items) <= 0.02, (n, split, top)


def test_levels_and_names():
    assert data.task_level("task", "rl") == data.task_level(f"task-{data.TASK_MAIN}", "rl")
    items, messages = data.rl_prompts("task-6", 16)
    assert items == data.task_level("task-6", "rl")[:16] and messages is data.task_messages
    for bad in ("task-3", "task-ext1", "tasks", "task-", "task-6b", "task-6b0", "task-3b4", "task-6b4x"):
        with pytest.raises(ValueError, match="task-<n>"):
            data.task_level(bad, "rl")


Q = "Tom has 5 coins. First he gets 1, second loses 3, third finds 2. How many coins after each step?"
RIGHT = "<reasoning>\nfirst: 5+1=6\nsecond: 6-3=3\nthird: 3+2=5\n</reasoning>\n<answer>\n\\boxed{635}\n</answer>"


@pytest.mark.parametrize("text, sound", [
    (RIGHT, True),
    (RIGHT.replace("6-3=3", "6-3=2"), False),                      # one wrong result
    (RIGHT.replace("second: 6-3=3", "second: 6-2=4"), False),      # a wrong operand
    (RIGHT.replace("third: 3+2=5", "third: 4+1=5"), False),        # right result from the wrong previous value
    (RIGHT.replace("third: 3+2=5", "third: 4+2=5"), False),        # only the previous value wrong
    (RIGHT.replace("second: 6-3=3", "second: 6-2=3"), False),      # only the operand wrong (the result is right)
    (RIGHT.replace("second: 6-3=3\n", ""), False),                 # a missing line
    (RIGHT.replace("third: 3+2=5\n", "third: 3+2=5\nfourth: 5-1=4\n"), False),  # an extra line
    (RIGHT.replace("third: 3+2=5\n", "").replace("\\boxed{635}", "third: 3+2=5 \\boxed{635}"), False),  # a line
    ("first: 5+1=6\nsecond: 6-3=3\nthird: 3+2=5", True),          # no tags: the lines are what counts
    (RIGHT.replace("\\boxed{635}", "\\boxed{999}"), True),          # the box is the reward's business, not soundness
])
def test_task_sound_on_hand_made_completions(text, sound):
    """data.task_sound reads only the reasoning block (lines written in the answer block do not count)."""
    assert data.task_sound(Q, text) is sound


@pytest.mark.parametrize("text, kind, box", [
    (RIGHT, "sound", "lines"),
    (RIGHT.replace("6-3=3", "6-3=2").replace("635", "625"), "arith", "lines"),    # one wrong result, boxed as written
    (RIGHT.replace("second: 6-3=3", "second: 6-2=4"), "read", "other"),          # a misread operand (box: the gold)
    (RIGHT.replace("second: 6-3=3", "second: 6+3=9"), "read", "other"),          # a misread sign
    (RIGHT.replace("third: 3+2=5", "third: 4+2=6").replace("635", "636"), "carry", "lines"),  # the wrong start value
    (RIGHT.replace("third: 3+2=5\n", ""), "short", "other"),                    # a missing last line
    (RIGHT.replace("second: 6-3=3\n", ""), "read", "other"),  # by position: a missing middle line misreads the next
    (RIGHT.replace("third: 3+2=5\n", "third: 3+2=5\nfourth: 5-1=4\n"), "long", "other"),  # an extra line
    (RIGHT.replace("\\boxed{635}", "\\boxed{63}"), "sound", "other"),          # a sound chain, a box that drops a line
    (RIGHT.replace("\\boxed{635}", "\\boxed{634}"), "sound", "last digit"),    # the box's last result miscopied
])
def test_errors_names_the_first_failure_of_a_chain(text, kind, box):
    """experiments/errors.py: the first failing line's kind, and what the box holds (the lines' results, those but
    its last digit, other); 'sound' exactly when data.task_sound says so."""
    got = errors.first_error(Q, text)
    assert (got[0], got[2]) == (kind, box)
    assert (kind == "sound") == data.task_sound(Q, text)


def test_ladder_bins_prompts_by_a_rule_on_their_operands():
    """experiments/ladder.py: operands read from the question; per bin of a rule, the pass rate, the all-wrong share,
    the share of all-wrong groups rescued and the sound share of replacements (hand-computed, G 4)."""
    assert ladder.operands(Q) == [1, 3, 2]
    recs = [dict(operands=[1, 1, 3], right=0, sound=0, replaced=2, sound_replaced=1),  # third 3: all wrong, rescued
            dict(operands=[2, 1, 3], right=0, sound=0, replaced=0, sound_replaced=0),  # third 3: all wrong, not
            dict(operands=[5, 1, 3], right=2, sound=2, replaced=0, sound_replaced=0),  # third 3
            dict(operands=[1, 2, 1], right=4, sound=4, replaced=0, sound_replaced=0)]  # third 1
    rows = {line.split(" | ")[0].strip("| "): line for line in ladder.table(recs, "third", 4).splitlines()[2:]}
    assert rows["3"] == "| 3 | 3 | 0.167 | 0.667 (2) | 0.500 | 0.500 (2) |"
    assert rows["1"] == "| 1 | 1 | 1.000 | 0.000 (0) | – | – |"
    big = ladder.table(recs, "big", 4).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in big] == [["| 0", "1"], ["| 1", "2"], ["| 2", "1"]]


def test_prompt_records_on_the_start_and_their_sums(monkeypatch):
    """experiments/levels.py on the committed start (task-6b4, one rollout batch of 16 RL prompts, hinted rescue):
    one record per prompt; counts bounded by G; all-wrong means no right rollout; the rescue touches only all-wrong
    groups, at most floor(lam G) rows each; levels.measure without a rescue sees the same on-policy rollouts;
    ladder.records adds the operands."""
    m, tok = model.load(os.path.join(levels.ROOT, "checkpoints", "task-sft"))
    recs = list(levels.prompt_records(m, tok, "task-6b4", 16, 0, "hints"))
    rl = {it["id"]: it for it in data.task_level("task-6b4", "rl")}
    assert len({r["item"]["id"] for r in recs}) == 16 and all(r["item"]["id"] in rl for r in recs)
    for r in recs:
        assert 0 <= r["right_sound"] <= min(r["right"], r["sound"]) and max(r["right"], r["sound"]) <= r["G"] == 8
        assert r["all_wrong"] == (r["right"] == 0)  # igpo.all_wrong: no correctness reward, so no right rollout
        assert r["replaced"] <= 4 and r["sound_replaced"] <= r["replaced"] and (r["replaced"] == 0 or r["all_wrong"])
    assert any(r["replaced"] for r in recs), "no group rescued: the rescue path is not exercised"
    off = levels.measure(m, tok, "task-6b4", 16, 0, "off")
    assert off == dict(rollouts=128, right=sum(r["right"] for r in recs), sound=sum(r["sound"] for r in recs),
                       right_sound=sum(r["right_sound"] for r in recs), sound_replaced=[0, 0],
                       all_wrong=sum(r["right"] == 0 for r in recs))
    monkeypatch.setattr(levels, "prompt_records", lambda *a: iter([dict(recs[0])]))
    got = ladder.records(m, tok, "task-6b4", 16, 0)
    assert got == [dict(id=recs[0]["item"]["id"], operands=ladder.operands(recs[0]["item"]["question"]),
                        **{k: v for k, v in recs[0].items() if k != "item"})]
    assert sum(n >= 3 for n in got[0]["operands"]) >= 4 and len(got[0]["operands"]) == 6  # the level's rule


def test_reference_solutions_are_sound():
    for n in data.TASK_LEVELS:
        for it in data.task_level(f"task-{n}", "val")[:100]:
            assert data.task_sound(it["question"], data.format_response(it))
            assert not data.task_sound(it["question"], data.format_response(dict(it, solution=it["solution"][:-1] +
                                                                                 "0")))


def test_tokenizer_round_trip_and_llada_template(tmp_path):
    tok = data.task_tokenizer()
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    it = data.task_level("task-7", "rl")[0]
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
    longest = data.task_level(f"task-{max(data.TASK_LEVELS)}", "test")
    pairs = sft.tokenize_pairs(longest, tok, cfg, log=lambda *a: None)
    assert len(pairs) == len(longest)  # nothing over max_len: every response (+ EOT) fits the window
    assert max(len(p) for p, _ in pairs) + cfg.resp_len <= data.TASK_MODEL["max_sequence_length"]


def test_a_level_of_big_steps_is_held_out_and_follows_its_rule():
    """task-<n>b<k>: n-step chains with at least k numbers >= 3 (read from the question), fresh sets of the standard
    sizes, distinct, apart from each other, from every set of task_splits() and from SFT; not guessable either."""
    s = data.task_splits()
    taken = {chain(it) for items in s.values() for it in items}
    sets = {split: data.task_level("task-6b4", split) for split in data.TASK_HELD}
    for split, items in sets.items():
        chains = {chain(it) for it in items}
        assert len(items) == data.TASK_HELD[split][0] == len(chains) and not chains & taken
        assert all(len(c) == 7 for c in chains)
        assert all(sum(int(x) >= 3 for x in re.findall(r"(?:gets|finds|loses|gives) (\d)", it["question"])) >= 4
                   for it in items)
        assert collections.Counter(it["answer"] for it in items).most_common(1)[0][1] <= 0.02 * len(items)
    assert not {chain(it) for it in sets["rl"]} & {chain(it) for it in sets["test"]}
    assert not {chain(it) for it in sets["val"]} & {chain(it) for it in sets["test"] + sets["rl"]}
    big = [sum(int(x) >= 3 for x in re.findall(r"\d", c[0] + "".join(c[1:]))[1:]) for c in map(chain, s["test-6"])]
    assert sum(b >= 4 for b in big) < len(big) / 2  # the rule selects: most 6-step chains have fewer big steps


def test_a_fresh_draw_is_held_out_too():
    """draw k > 0 (claim.py --test_seed k): a new set of the split's size and length, outside every set and SFT;
    a level whose unused chains cannot fill it is an error, not an endless loop (4 steps: SFT uses nearly all)."""
    s = data.task_splits()
    fresh = data.task_level("task-6", "test", draw=3)
    taken = {chain(it) for items in s.values() for it in items}
    assert len(fresh) == len(s["test-6"]) and len({chain(it) for it in fresh}) == len(fresh)
    assert all(len(chain(it)) == 7 for it in fresh) and not {chain(it) for it in fresh} & taken
    assert fresh == data.task_level("task-6", "test", draw=3) != data.task_level("task-6", "test", draw=4)
    with pytest.raises(ValueError, match="fresh test"):
        data.task_level("task-4", "test", draw=1)
