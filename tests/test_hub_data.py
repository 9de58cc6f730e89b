"""data.py's hub loaders (MetaMathQA, GSM8K, MATH) on local fixtures of the real schemas, written here.

`datasets.load_dataset(hub_id, config, split=...)` is redirected to `datasets.load_dataset("json", data_files=...)`
on the fixture of that (hub id, config, split), so the datasets code path runs offline and the test also checks
which hub ids, configs and splits data.py asks for. Expected items are written out by hand.
"""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402

# MetaMathQA rows: query, response, type, original_question (meta-math/MetaMathQA, MetaMathQA-395K.json)
WENG = ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?")
METAMATH = [
    dict(query=WENG, response="Weng earns $12 per hour.\nShe worked 50/60 = 5/6 of an hour.\nSo she earned "
         "$12 * 5/6 = $10.\n#### 10\nThe answer is: 10", type="GSM_AnsAug", original_question=WENG),
    dict(query="If Weng earns $12 an hour, what does she earn in 50 minutes?", response="$10.\nThe answer is: 10",
         type="GSM_Rephrased", original_question=WENG),
    dict(query="How far apart are $1+2i$ and $-1+i$?", response="The distance is $\\sqrt{(-2)^2+(-1)^2}$, so the "
         "points are $\\boxed{\\sqrt{5}}$ units apart.\nThe answer is: \\sqrt{5}", type="MATH_AnsAug",
         original_question="How far apart are $1+2i$ and $-1+i$?"),
    dict(query=WENG, response="Another rewrite.\n#### 11\nThe answer is: 11", type="GSM_AnsAug",
         original_question=WENG),
    dict(query="If the answer is 5, what is X in |X - 1|?", response="X = 6.\nThe answer is: 6", type="MATH_FOBAR",
         original_question="q"),
    dict(query="Tom has 3 pens and buys 2. How many pens?", response="He has 3 + 2 = 5 pens.", type="GSM_AnsAug",
         original_question="q"),
    dict(query="What is $x$ if $x + 1 = 3$?", response="x = 2.\nThe answer is: 2", type="MATH_SV",
         original_question="q"),
]
GSM8K = [  # openai/gsm8k, config main: question, answer (worked solution ending in "#### <answer>")
    dict(question="Janet has 3 eggs and buys 1,000 more. How many eggs?",
         answer="She has 3 + 1000 = <<3+1000=1003>>1003 eggs.\n#### 1,003"),
    dict(question="A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
         answer="It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total is 2+1=<<2+1=3>>3 bolts\n#### 3"),
]


def math_row(subject, i):  # EleutherAI/hendrycks_math, one config per subject: problem, level, type, solution
    return dict(problem=f"{subject} problem {i}", level="Level 2", type=subject.replace("_", " ").title(),
                solution=f"Work for {subject} {i}. So the result is $\\boxed{{{i + 1}}}$.")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """files: {(hub id, config, split): fixture path}; returns (files, calls)."""
    import datasets
    real, files, calls = datasets.load_dataset, {}, []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return real("json", data_files=str(files[(path, name, split)]), split="train",
                    cache_dir=str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return files, calls


def test_metamath_from_the_hub_keeps_ansaug_once_with_the_answer_after_the_marker(hub, tmp_path):
    files, calls = hub
    files[("meta-math/MetaMathQA", None, "train")] = write_jsonl(tmp_path / "metamath.jsonl", METAMATH)
    with pytest.warns(UserWarning, match="skipped 1 row"):  # the GSM_AnsAug row without "The answer is:"
        items = data.load_split("metamath", "train")
    assert calls == [("meta-math/MetaMathQA", None, "train")]
    assert items == [
        dict(id="metamath-train-0", question=WENG, answer="10",
             solution="Weng earns $12 per hour.\nShe worked 50/60 = 5/6 of an hour.\nSo she earned $12 * 5/6 = $10."),
        dict(id="metamath-train-2", question="How far apart are $1+2i$ and $-1+i$?", answer="\\sqrt{5}",
             solution="The distance is $\\sqrt{(-2)^2+(-1)^2}$, so the points are $\\boxed{\\sqrt{5}}$ units apart."),
    ]


def test_metamath_from_the_published_json_array_and_jsonl(tmp_path):
    (tmp_path / "MetaMathQA-395K.json").write_text(json.dumps(METAMATH))
    write_jsonl(tmp_path / "mm.jsonl", METAMATH)
    with pytest.warns(UserWarning):
        a = data.load_split("metamath", "train", source=str(tmp_path / "MetaMathQA-395K.json"))
    with pytest.warns(UserWarning):
        b = data.load_split("metamath", "train", source=str(tmp_path / "mm.jsonl"))
    assert a == b and [it["answer"] for it in a] == ["10", "\\sqrt{5}"]


def test_gsm8k_from_the_hub(hub, tmp_path):
    files, calls = hub
    files[("openai/gsm8k", "main", "test")] = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    items = data.load_split("gsm8k", "test", source="openai/gsm8k")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert items == [
        dict(id="gsm8k-test-0", question=GSM8K[0]["question"], answer="1003", solution="She has 3 + 1000 = 1003 eggs."),
        dict(id="gsm8k-test-1", question=GSM8K[1]["question"], answer="3",
             solution="It takes 2/2=1 bolt of white fiber\nSo the total is 2+1=3 bolts"),
    ]


def test_math_from_the_hub_reads_every_subject(hub, tmp_path):
    files, calls = hub
    for s in data.MATH_SUBJECTS:
        rows = [math_row(s, 0), math_row(s, 1)] if s == "geometry" else [math_row(s, 0)]
        files[("EleutherAI/hendrycks_math", s, "train")] = write_jsonl(tmp_path / f"{s}.jsonl", rows)
    items = data.load_split("math", "train", source="EleutherAI/hendrycks_math")
    assert calls == [("EleutherAI/hendrycks_math", s, "train") for s in data.MATH_SUBJECTS]
    assert len(items) == 8 and [it["id"] for it in items] == [f"math-train-{i}" for i in range(8)]
    geometry = [it for it in items if it["question"].startswith("geometry")]
    assert [it["answer"] for it in geometry] == ["1", "2"]
    assert geometry[1]["solution"] == "Work for geometry 1. So the result is $\\boxed{2}$."
