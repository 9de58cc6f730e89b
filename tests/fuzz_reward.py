"""Seeded fuzz of reward.py: extract_answer, is_equiv, correctness_reward (both rules) and format_reward on
generated strings (deep braces, huge exponents, unicode, truncated LaTeX, 1 MB inputs).

    python tests/fuzz_reward.py FIRST N OUT_PREFIX      # strings FIRST..FIRST+N-1 of the seeded sequence
    python -m torch.distributed.run --nproc_per_node=2 tests/fuzz_reward.py FIRST N OUT_PREFIX  # a share per rank

Writes OUT_PREFIX.rank{R}.json: calls made, exceptions raised (repr of the input head), the slowest call in
seconds. The caller asserts; this script only records, so a hang shows up as the caller's timeout.
"""
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reward  # noqa: E402

LATEX = ["\\frac{1}{2}", "\\sqrt[3]{x+1}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\left(1,\\infty\\right)",
         "x^{2}+\\dfrac{3}{4}y", "\\{1,2\\}", "\\text{(A)}", "10^{10^{10}}", "\\boxed{\\frac{\\pi}{4}}",
         "\\int_0^1 x\\,dx", "e^{i\\pi}", "\\sum_{k=1}^{\\infty} k^{-2}", "3.14\\%", "\\mathbf{v}=(1,2)"]
GOLDS = ["3", "-7", "\\frac{1}{2}", "0.5", "(1, \\infty)", "\\sqrt{2}", "27.0", "\\text{(B)}", "x^2+1", "1,234",
         "\\{1,2\\}", "10^{100}", ""]


def fuzz_string(rng):
    """One adversarial string; the kind is drawn first so each kind is well represented."""
    kind = rng.randrange(7)
    if kind == 0:  # deep or unbalanced braces around a box
        d = rng.randint(1, 5000)
        return "\\boxed{" * rng.randint(0, 3) + "{" * d + rng.choice(LATEX) + "}" * rng.randint(0, d + 2)
    if kind == 1:  # huge exponents and numbers
        return rng.choice(["10^{" * rng.randint(1, 8) + "10" + "}" * rng.randint(0, 8),
                           f"9**9**9**{rng.randint(9, 99)}", f"1e{rng.randint(10, 10 ** 9)}",
                           f"2^{{{rng.randint(10 ** 5, 10 ** 9)}}}", str(rng.randint(0, 10)) * rng.randint(1, 5000),
                           f"\\boxed{{{rng.randint(1, 9)}^{{{rng.randint(1, 9)}^{{{rng.randint(10 ** 6, 10 ** 9)}}}}}}}"])
    if kind == 2:  # unicode: any code point, lone surrogates, zero-width, RTL, NUL
        return "".join(chr(rng.choice([rng.randint(0, 0x10FFFF), rng.randint(0xD800, 0xDFFF), 0x200B, 0x202E, 0,
                                       rng.randint(32, 126)])) for _ in range(rng.randint(0, 200)))
    if kind == 3:  # truncated LaTeX, boxed or not
        s = rng.choice(["\\boxed{", "", "<answer>\n\\boxed{"]) + "".join(rng.choices(LATEX, k=rng.randint(1, 4)))
        return s[:rng.randint(0, len(s))]
    if kind == 4:  # completion-shaped: tags, boxes and numbers in random order
        parts = ["<reasoning>\n", "</reasoning>", "<answer>\n", "</answer>", "\\boxed{", "}", "\\fbox ", "\\boxed 5",
                 str(rng.randint(-999, 999)), rng.choice(LATEX), "\n", " ", "$", "\\"]
        return "".join(rng.choices(parts, k=rng.randint(0, 40)))
    if kind == 5:  # random printable ASCII with LaTeX specials
        return "".join(rng.choices("0123456789+-*/^_{}()[]\\,.=<>abcxyz ", k=rng.randint(0, 300)))
    return "".join(rng.choices(LATEX + GOLDS, k=rng.randint(1, 3)))  # near-valid answers


def huge_strings(rng):
    """1 MB inputs: digits, an open box, balanced and unbalanced braces, random text."""
    mb = 1 << 20
    return ["7" * mb, "\\boxed{" + "1" * mb, "{" * mb, "\\boxed{" * (mb // 7), "{}" * (mb // 2),
            "".join(rng.choices("0123456789{}\\boxed ", k=mb)), "<answer>" + "x" * mb]


def main():
    first, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rng = random.Random(12345)
    inputs = [fuzz_string(rng) for _ in range(first + n)][first:] + huge_strings(rng) + [None, 3, 2.5, b"\\boxed{1}"]
    mine = inputs[rank::world]
    calls, errors, slowest = 0, [], 0.0
    for i, s in enumerate(mine):
        gold = GOLDS[i % len(GOLDS)]
        calls_i = [(reward.extract_answer, (s,)), (reward.format_reward, (s,)),
                   (reward.correctness_reward, (s, gold, 3.0, "official"))]
        if i % 20 == 0:  # a sympy round trip costs ~50 ms: every 20th string also takes the sympy-heavy paths
            raw = s[:2000] if isinstance(s, str) else s
            calls_i += [(reward.correctness_reward, (s, gold, 3.0, "lenient")), (reward.is_equiv, (raw, fuzz_string(rng)))]
        for fn, args in calls_i:
            t0 = time.monotonic()
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001  (what the test asserts never happens)
                errors.append(f"{fn.__name__}({repr(s)[:80]}): {e!r}")
            slowest = max(slowest, time.monotonic() - t0)
            calls += 1
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(dict(calls=calls, inputs=len(mine), errors=errors, slowest_s=slowest), f)


if __name__ == "__main__":
    main()
