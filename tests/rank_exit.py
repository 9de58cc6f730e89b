"""One torchrun worker that runs a command and records its exit code, for the pre-emption tests.

    python -m torch.distributed.run --nproc_per_node=2 tests/rank_exit.py CODES_FILE python igpo.py [flags...]

Appends "RANK EXIT_CODE" to CODES_FILE when the command ends. A test can then see every rank's own exit status even
when torchrun itself got SIGTERM (as under SLURM's pre-emption, which signals every process of the job): torchrun then
ends with its own SignalException and reports none. The wrapper survives SIGTERM (a no-op handler, which the command
does not inherit: it gets SIGTERM with its default disposition, or its own handler), so the code it records is the
command's.
"""
import os
import signal
import subprocess
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    code = subprocess.call(sys.argv[2:])
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.environ.get('RANK', '0')} {code}\n")
    sys.exit(code)
