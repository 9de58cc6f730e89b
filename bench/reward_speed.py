"""Time per 1,000 reward calls on real gold pairs (../shared/data), and the cost of a killed worker.

Mixes: (a) correct completions, GSM8K + MATH500 (mostly the string/number fast paths, as in training where
the model writes the gold's form); (b) MATH500 wrong pairs (gold vs another problem's gold: mostly sympy);
(c) the realistic RL mix, 50% of each. Run: python bench/reward_speed.py
"""
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import reward  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def rows(rel):
    return [json.loads(line) for line in open(DATA / rel, encoding="utf-8")]


def per_1000(pairs):
    t = time.perf_counter()
    for completion, gold in pairs:
        reward.correctness_reward(completion, gold)
        reward.format_reward(completion)
    return (time.perf_counter() - t) / len(pairs) * 1000


def main():
    random.seed(0)
    gsm = [r["answer"].split("####")[-1].strip().replace(",", "") for r in rows("gsm8k/test.jsonl")]
    m5 = rows("math500/test.jsonl")
    right = [(f"\\boxed{{{g}}}", g) for g in gsm[:500]] + [(r["solution"], r["answer"]) for r in m5]
    wrong = [(f"\\boxed{{{m5[i - 1]['answer']}}}", m5[i]["answer"]) for i in range(len(m5))]
    t = time.perf_counter()
    reward.warmup()
    print(f"warmup (2 workers import sympy + math-verify): {time.perf_counter() - t:.2f} s, once per process")
    print(f"(a) correct answers:      {per_1000(right):7.3f} s / 1000 calls")
    print(f"(b) wrong MATH500 answers: {per_1000(wrong):7.3f} s / 1000 calls")
    mix = random.sample(right, 500) + random.sample(wrong, 500)
    random.shuffle(mix)
    print(f"(c) 50/50 mix:            {per_1000(mix):7.3f} s / 1000 calls")
    t = time.perf_counter()
    reward.is_equiv("10^{10^{10}}", "5")  # hangs sympy: the worker is killed at the deadline
    t1 = time.perf_counter()
    reward.is_equiv("\\frac{1}{2}", "0.5 + x - x")  # served by the warm standby
    t2 = time.perf_counter()
    print(f"hung call: {t1 - t:.3f} s (deadline {0.9 * reward.TIMEOUT_S:.2f} s); next call on the standby: "
          f"{t2 - t1:.3f} s")


if __name__ == "__main__":
    main()
