"""eval.py on a tiny random LLaDA and the tiny tokenizer of conftest: files, resume, --limit, avg@k."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data
import eval as ev  # noqa: E402
import model  # noqa: E402

needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "..", "shared", "data")),
                                reason="../shared/data not present")
FAST = ["--gen_length", "8", "--block_length", "4", "--steps", "4", "--batch_size", "2"]


@pytest.fixture
def ckpt(tmp_path, tiny_model, tiny_tokenizer):
    return model.save(tiny_model, tiny_tokenizer, str(tmp_path / "tiny"))


@pytest.fixture
def count_generated(monkeypatch):
    """Counts the sequences eval generates (so resume can be checked)."""
    n = [0]
    real = ev.S.generate

    def counting(m, ids, **kw):
        n[0] += ids.shape[0]
        return real(m, ids, **kw)
    monkeypatch.setattr(ev.S, "generate", counting)
    return n


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_evaluate_in_memory(tiny_model, tiny_tokenizer):
    items = [dict(id=f"q{i}", question=f"What is {i}+1?", answer=str(i + 1)) for i in range(3)]
    proto = ev.protocol("gsm8k", gen_length=8, block_length=4, steps=4)
    assert proto["temperature"] == 0.0 and proto["samples"] == 1 and proto["prefill"] == "<reasoning>"
    s = ev.evaluate(tiny_model, tiny_tokenizer, items, proto, batch_size=2)
    assert s["n_problems"] == 3 and s["n_samples"] == 3 and s["metric"] == "pass@1"
    assert 0.0 <= s["ci95"][0] <= s["accuracy"] <= s["ci95"][1] <= 1.0


def test_protocol_defaults():
    assert ev.protocol("gsm8k") == dict(gen_length=256, block_length=32, steps=128, temperature=0.0, samples=1,
                                        remasking="low_confidence", prefill="<reasoning>", threshold=None)
    amc = ev.protocol("amc23", gen_length=512)
    assert (amc["temperature"], amc["samples"], amc["steps"]) == (0.1, 16, 256)
    task = ev.protocol("task-6")  # the task decodes with a confidence threshold (data.TASK_SAMPLING); 0 turns it off
    assert task["threshold"] == data.TASK_SAMPLING["threshold"] and task["prefill"] == ""
    assert ev.protocol("task", threshold=0)["threshold"] is None and ev.protocol("task", threshold=0.5)["threshold"] == 0.5


@needs_data
def test_main_writes_resumes_and_limits(tmp_path, ckpt, count_generated):
    out = tmp_path / "out"
    args = ["--model", ckpt, "--bench", "gsm8k", "--out_dir", str(out)] + FAST
    res = ev.main(args + ["--limit", "3"])
    assert count_generated[0] == 3 and res["gsm8k"]["n_problems"] == 3
    rows = _rows(out / "gsm8k.jsonl")
    assert [r["id"] for r in rows] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert set(rows[0]) >= {"id", "prompt", "completion", "extracted", "gold", "correct"}
    assert rows[0]["gold"] == "18" and rows[0]["completion"].startswith("<reasoning>")
    summary = json.load(open(out / "gsm8k.summary.json"))
    assert summary["n_problems"] == 3 and summary["model"] == ckpt and summary["settings"]["gen_length"] == 8
    # a crashed run left one finished row of problem 3 and a torn line: both are handled
    fake = dict(rows[0], id="gsm8k-test-3", completion="<reasoning>x", correct=True)
    (out / "gsm8k.jsonl.rank1.part").write_text(json.dumps(fake) + "\n" + '{"id": "gsm8k-te')
    count_generated[0] = 0
    res = ev.main(args + ["--limit", "5"])
    assert count_generated[0] == 1  # only problem 4 is new
    assert [r["id"] for r in _rows(out / "gsm8k.jsonl")][:5] == [f"gsm8k-test-{i}" for i in (0, 1, 2, 3, 4)]
    assert not list(out.glob("*.part")) and res["gsm8k"]["n_problems"] == 5
    count_generated[0] = 0
    ev.main(args + ["--limit", "2"])  # everything done: nothing generated, summary over 2 problems
    assert count_generated[0] == 0 and json.load(open(out / "gsm8k.summary.json"))["n_problems"] == 2
    with pytest.raises(SystemExit, match="another --out_dir"):  # other settings never mix into these rows
        ev.main(args[:-8] + ["--gen_length", "16", "--block_length", "4", "--steps", "4", "--limit", "2"])


@needs_data
def test_avg_at_k(tmp_path, ckpt, count_generated):
    res = ev.main(["--model", ckpt, "--bench", "amc23", "--limit", "2", "--samples", "2", "--out_dir",
                   str(tmp_path)] + FAST)
    s = res["amc23"]
    assert s["metric"] == "avg@2" and s["n_samples"] == 4 and s["settings"]["temperature"] == 0.1
    assert count_generated[0] == 4
    rows = _rows(tmp_path / "amc23.jsonl")
    assert sorted((r["id"], r["sample"]) for r in rows) == [("amc23-0", 0), ("amc23-0", 1), ("amc23-1", 0),
                                                            ("amc23-1", 1)]


@needs_data
def test_torchrun_two_ranks_match_one_process(tmp_path, ckpt):
    """3 problems over 2 gloo ranks (unequal shards: 2 + 1) give the rows of a single process."""
    import subprocess
    args = ["--model", ckpt, "--bench", "gsm8k", "--limit", "3"] + FAST
    ev.main(args + ["--out_dir", str(tmp_path / "one")])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "eval.py")] + args + ["--out_dir", str(tmp_path / "two")]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=300, capture_output=True)
    one, two = _rows(tmp_path / "one" / "gsm8k.jsonl"), _rows(tmp_path / "two" / "gsm8k.jsonl")
    assert [(r["id"], r["completion"]) for r in one] == [(r["id"], r["completion"]) for r in two]
    assert json.load(open(tmp_path / "two" / "gsm8k.summary.json"))["world"] == 2


def test_wilson_interval_by_hand():
    """Wilson's score interval: centre (p + z²/2n) / (1 + z²/n), half-width z √(p(1-p)/n + z²/4n²) / (1 + z²/n),
    z = 1.96 (z² = 3.8416), worked out by hand below; a Wald interval p ± z √(p(1-p)/n) differs in all three."""
    # p 0.5, n 10: d = 1.38416, centre 0.5, half 1.96 √(0.025 + 0.009604) / d = 0.364601 / 1.38416 = 0.263410
    # (Wald: 0.5 ± 0.309903 = [0.190097, 0.809903])
    assert ev.wilson(0.5, 10) == pytest.approx([0.236590, 0.763410], abs=1e-6)
    # p 0.9, n 10: centre (0.9 + 0.19208) / 1.38416 = 0.788984, half 1.96 √(0.009 + 0.009604) / 1.38416 = 0.193141
    assert ev.wilson(0.9, 10) == pytest.approx([0.595844, 0.982124], abs=1e-6)
    # p 0, n 10: centre = half = 0.19208 / 1.38416 = 0.138770: [0, 0.277540] (Wald: [0, 0])
    assert ev.wilson(0.0, 10) == pytest.approx([0.0, 0.277540], abs=1e-6)
    assert ev.wilson(0.0, 0) == [0.0, 1.0]  # no problems: no information


def test_avg_at_k_is_the_mean_over_samples_with_an_interval_over_problems(tmp_path, tiny_model, tiny_tokenizer):
    """10 problems x 2 samples, sample 0 of every problem right and sample 1 wrong (rows already in the output file,
    so nothing is generated): each problem scores 1/2, avg@2 = 0.5 (any-correct would give 1.0), and the interval is
    Wilson's at p 0.5 over the n = 10 problems, [0.236590, 0.763410] (over the 20 samples it would be [0.299295,
    0.700705]: d = 1.19208, half 1.96 √(0.0125 + 0.002401) / d = 0.200705)."""
    items = [dict(id=f"p{i}", question=f"q{i}", answer="1") for i in range(10)]
    out = tmp_path / "amc.jsonl"
    with open(out, "w") as f:
        for it in items:
            for s in range(2):
                f.write(json.dumps(dict(id=it["id"], sample=s, completion="", extracted=None, gold="1",
                                        correct=s == 0, format=0.75 if s == 0 else 0.25, prompt="")) + "\n")
    proto = ev.protocol("amc23", gen_length=8, block_length=4, steps=4, samples=2)
    s = ev.evaluate(tiny_model, tiny_tokenizer, items, proto, out_path=str(out), batch_size=4)
    assert (s["metric"], s["n_problems"], s["n_samples"]) == ("avg@2", 10, 20)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["ci95"] == pytest.approx([0.236590, 0.763410], abs=1e-6)
    assert s["format_reward"] == pytest.approx(0.5)  # a mean over the 20 samples
