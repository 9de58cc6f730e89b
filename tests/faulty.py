"""igpo.py with one rank failing in the middle of an optimizer step, for the distributed-fault tests.

    python -m torch.distributed.run --nproc_per_node=2 tests/faulty.py {raise,hang} STEP RANK [igpo flags...]

Rank RANK enters optimizer step STEP (1-based) and then raises, or hangs, before the step's first collective, while
the other ranks wait in it. Everything else is the real igpo.train.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import igpo  # noqa: E402
import launch  # noqa: E402


def main():
    fault, at, bad_rank, flags = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    real_update, calls = igpo.update, []

    def update(*args, **kw):
        calls.append(1)
        if len(calls) == at and int(os.environ.get("RANK", "0")) == bad_rank:
            print(f"rank {bad_rank}: injected {fault} at step {at}", flush=True)
            if fault == "raise":
                raise RuntimeError("injected fault")
            time.sleep(3600)
        return real_update(*args, **kw)
    igpo.update = update
    igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, flags, doc=igpo.__doc__))


if __name__ == "__main__":
    main()
