"""Where one IGPO step's time goes on the embedded task (igpo.py's "task" preset): each phase's share of the wall
time (rollout, inpainting, rewards, old/ref log-probs, update), and the step's wall divided by the sum of the
forward and backward passes it needs, each timed alone on the same shapes (1.00 = nothing but the model runs).

    python bench/rl_step.py [--early_exit] [-- igpo flags, e.g. --model checkpoints/task-sft]
One rollout batch (igpo.make_batch) and its mu updates, as igpo.train runs them on one process. Phases are read by
wrapping igpo's functions (PHASES) with a clock; a call inside another is charged to the inner one only, and the
table names it by its call path. Every model call is recorded (shape, grad, seconds) by forward hooks.
--early_exit turns on sample.generate's early exit for the step's rollouts (exact for the text up to EOS).
"""
import argparse
import collections
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import igpo  # noqa: E402
import launch  # noqa: E402
import sample  # noqa: E402

PHASES = ["roll_out", "sample_rows", "rewards", "rescue", "inpaint_groups", "old_logps", "estimate_logps", "update"]


class Clock:
    """Exclusive time per call path ("update/token_logps"): a nested call's time is taken off its caller."""
    def __init__(self):
        self.stack, self.total = [], collections.Counter()

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*a, **kw):
            path = f"{self.stack[-1][0]}/{fn.__name__}" if self.stack else fn.__name__
            self.stack.append([path, 0.0])
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                _, inner = self.stack.pop()
                self.total[path] += dt - inner
                if self.stack:
                    self.stack[-1][1] += dt
        return timed


def record_calls(net, calls):
    """Forward hooks: one [net, rows, length, grad, seconds inside the forward] per model call."""
    def pre(module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        calls.append([module, ids.shape[0], ids.shape[1], torch.is_grad_enabled(), -time.perf_counter()])

    def post(module, args, kwargs, out):
        calls[-1][-1] += time.perf_counter()
    return [net.register_forward_pre_hook(pre, with_kwargs=True),
            net.register_forward_hook(post, with_kwargs=True)]


def time_alone(net, rows, length, grad, reps=2):
    """Best-of-reps seconds of one forward (and backward when the step ran it with grad) on random tokens."""
    ids = torch.randint(3, net.config.vocab_size, (rows, length))
    attn = torch.ones_like(ids)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        with torch.set_grad_enabled(grad):
            out = net(ids, attention_mask=attn)
            if grad:
                out.float().logsumexp(-1).mean().backward()
        best = min(best, time.perf_counter() - t)
    net.zero_grad(set_to_none=True)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--early_exit", action="store_true", help="rollouts with sample.generate(early_exit=True)")
    p.add_argument("--batch_idx", type=int, default=0, help="which rollout batch of the run")
    a, rest = p.parse_known_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, argv=rest)
    if a.early_exit:
        sample.generate = functools.partial(sample.generate, early_exit=True)
    torch.manual_seed(cfg.seed)
    policy, ref, tok, _ = igpo.build(cfg, torch.device("cpu"))
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    items, messages = igpo.data.rl_prompts(cfg.data, cfg.max_prompts)
    mine, first = igpo.batch_items(items, a.batch_idx, cfg, 0, 1)
    clock, calls = Clock(), []
    for name in PHASES:
        if hasattr(igpo, name):  # the phase names of igpo.py as of this script; a renamed one is simply not split
            setattr(igpo, name, clock.wrap(getattr(igpo, name)))
    hooks = [h for net in (policy, ref) if net is not None for h in record_calls(net, calls)]
    t0 = time.perf_counter()
    policy.eval()
    b = igpo.make_batch(policy, ref, tok, mine, messages, cfg, a.batch_idx, first, torch.device("cpu"), {})
    policy.train()
    t_opt = time.perf_counter()
    for j in range(cfg.mu):
        igpo.update(policy, b, j, cfg, 1)
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    wall = time.perf_counter() - t0
    clock.total["optimizer (clip, AdamW)"] = time.perf_counter() - t_opt - clock.total["update"] - sum(
        v for k, v in clock.total.items() if k.startswith("update/"))
    for h in hooks:
        h.remove()
    wrong = int(igpo.all_wrong(b.correct_policy, cfg.G).sum())
    print(f"{len(mine)} prompts x G={cfg.G}, gen {cfg.gen_length}, mu {cfg.mu}, logp {cfg.logp}, early exit "
          f"{a.early_exit}; all-wrong groups {wrong}, rows replaced {int(b.replaced.sum())}; "
          f"threads {torch.get_num_threads()}")
    print(f"{'phase (exclusive time)':36s} {'s':>8s} {'share':>6s}")
    for path, t in sorted(clock.total.items(), key=lambda kv: -kv[1]):
        print(f"{path:36s} {t:8.2f} {t / wall:6.1%}")
    other = wall - sum(clock.total.values())
    print(f"{'(rest of make_batch)':36s} {other:8.2f} {other / wall:6.1%}")
    shapes = collections.Counter((id(n), r, L, g) for n, r, L, g, _ in calls)
    nets = {id(n): n for n, *_ in calls}
    alone = sum(c * time_alone(nets[i], r, L, g) for (i, r, L, g), c in shapes.items())
    inside = sum(t for *_, t in calls)
    n_grad = sum(g for *_, g, _ in calls)
    print(f"step wall {wall:.2f} s; {len(calls)} model calls ({n_grad} with backward), timed alone {alone:.2f} s; "
          f"wall / required passes = {wall / alone:.3f}")
    print(f"forward time inside the step's own calls {inside:.2f} s (backwards not included): wall / that = "
          f"{wall / inside:.3f} (same run, same load: robust on a shared machine)")


if __name__ == "__main__":
    main()
