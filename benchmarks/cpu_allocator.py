"""CPU runs: what glibc's allocator settings cost. The same command twice in one run, with glibc's defaults and with
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` raised to 4 GiB (the settings ``make demo`` uses).

With the defaults, every tensor above the (dynamic) mmap threshold, such as a batch's activations, is a fresh ``mmap``
that the kernel zero-fills page by page and ``munmap`` gives back at once, so a CPU evaluation spends 42-46% of its CPU
time in the kernel (measured here). The raised thresholds keep that memory in the heap for reuse, at the price of a
higher resident peak. Both runs must print the same thing (the settings change speed, not results); the script prints
each run's user, system and wall seconds and peak resident memory, then ``allocator speed ratio R x`` (CPU seconds of
the default run over those of the tuned one) and the wall ratio.

    python benchmarks/cpu_allocator.py SET.safetensors              # gendistill eval SET --epochs 10 --runs 1
    python benchmarks/cpu_allocator.py SET.safetensors --epochs 30
    python benchmarks/cpu_allocator.py -- python recipes/latent_dm.py --steps 5 --eval-runs 0 --output /tmp/x
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TUNED = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def run(cmd: list[str], tuned: bool) -> dict:
    """Run cmd to completion (one torch thread unless OMP_NUM_THREADS is set); its CPU seconds, wall seconds,
    peak resident MiB and output."""
    env = {k: v for k, v in os.environ.items() if k not in TUNED}
    env.setdefault("OMP_NUM_THREADS", "1")
    if tuned:
        env.update(TUNED)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN keeps the max of all)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {code}: {stderr.strip()[-500:]}")
    return {"user": usage.ru_utime, "sys": usage.ru_stime, "wall": wall, "stdout": stdout,
            "peak_mib": usage.ru_maxrss / 1024}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("set", nargs="?", help="a set file: the command is `gendistill eval SET --epochs E --runs 1`; "
                   "or give any command after --")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="cpu_allocator-")  # the evaluation's result, the same path both runs
    if args.set and not cmd:
        out = os.path.join(tmp.name, "eval.json")
        cmd = [sys.executable, "-m", "gendistill.cli", "eval", args.set, "--epochs", str(args.epochs), "--runs", "1",
               "--out", out]
    else:
        out = None
    if not cmd:
        p.error("give a set file, or a command after --")
    results = {}
    for name, tuned in (("default", False), ("tuned", True)):
        r = results[name] = run(cmd, tuned)
        if out:  # the evaluation's accuracies stand for its output (the printed record has its seconds)
            with open(out) as f:
                r["stdout"] = json.dumps(json.load(f)["archs"])
        print(f"{name:7s} user {r['user']:8.2f} s  sys {r['sys']:8.2f} s  wall {r['wall']:8.2f} s  "
              f"peak {r['peak_mib']:7.0f} MiB", flush=True)
    if results["default"]["stdout"] != results["tuned"]["stdout"]:
        print("warning: the two runs gave different results (a nondeterministic command?)")
    tmp.cleanup()
    cpu = {k: r["user"] + r["sys"] for k, r in results.items()}
    print(f"allocator speed ratio {cpu['default'] / max(cpu['tuned'], 1e-9):.2f} x (cpu), "
          f"{results['default']['wall'] / max(results['tuned']['wall'], 1e-9):.2f} x (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
