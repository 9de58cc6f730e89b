"""data.py (real benchmarks): counts, gold/trace extraction, malformed rows, prompt, sharding."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402

needs_data = pytest.mark.skipif(not data.DATA_DIR.is_dir(), reason="../shared/data not present")


@needs_data
@pytest.mark.parametrize("name,count", [("gsm8k", 1319), ("math500", 500), ("amc23", 40), ("aime24", 30)])
def test_counts_and_keys(name, count):
    items = data.load_split(name, "test")
    assert len(items) == count
    assert len({it["id"] for it in items}) == count
    for it in items:
        assert isinstance(it["question"], str) and it["question"]
        assert isinstance(it["answer"], str) and it["answer"]
        assert it["solution"] is None or isinstance(it["solution"], str)


@needs_data
def test_gsm8k_fields():
    it = data.load_split("gsm8k", "test")[0]
    assert it["answer"] == "18" and "<<" not in it["solution"] and "####" not in it["solution"]
    assert it["solution"].endswith("$18 every day at the farmer’s market.")
    assert all("," not in x["answer"] for x in data.load_split("gsm8k", "test"))


@needs_data
def test_math_train_answers_are_last_boxed():
    with pytest.warns(UserWarning, match="skipped 2"):  # two rows hold an empty \boxed{}
        items = data.load_split("math", "train")
    assert len(items) == 11998
    assert items[0]["answer"] == "0" and items[0]["id"] == "math-train-0"


@needs_data
def test_amc_gold_is_the_float_as_given():
    assert data.load_split("amc23", "test")[0]["answer"] == "27.0"


def test_malformed_jsonl_names_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a\n#### 1,234"})
    p = tmp_path / "bad.jsonl"
    p.write_text(good + "\n" + good + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        data.load_split("gsm8k", "test", source=str(p))
    p.write_text(good + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field\(s\) \['answer'\]"):
        data.load_split("gsm8k", "test", source=str(p))
    p.write_text(json.dumps({"question": "q", "answer": "no hash line"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: .*####"):
        data.load_split("gsm8k", "test", source=str(p))
    p.write_text("\n" + good + "\n")  # blank lines are skipped, gold commas stripped
    assert data.load_split("gsm8k", "test", source=str(p))[0]["answer"] == "1234"


def test_build_messages_uses_the_official_instruction():
    msgs = data.build_messages("What is 2+2?")
    assert msgs == [{"role": "user", "content": data.SYSTEM_PROMPT + "\n\nWhat is 2+2?"}]
    assert "<answer>\n\\boxed{<Your answer>}\n</answer>" in data.SYSTEM_PROMPT
    assert data.build_messages("q", system_prompt=None) == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize("world", [1, 3, 8])
@pytest.mark.parametrize("n", [1319, 5, 0])
def test_shard_covers_every_item_once(world, n):
    items = [f"id{i}" for i in range(n)]
    shards = [data.shard(items, r, world) for r in range(world)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == sorted(items) and len(flat) == n
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
