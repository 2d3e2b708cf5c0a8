"""Issue 14's target table in one run: twisted-statsd beside Etsy statsd, a ceiling and a recv-only receiver.

    python -m benchmarks.throughput [--quick] [--json PATH] [--rates 200k,400k,...]

(from the repository root.)  A full run takes about 11 minutes on this 2-core
machine (16 under heavy load); ``--quick`` is a smoke run of every part in 2-3 minutes (1.5 s
steps, three rates, no retries or bisection, no flush alignment, 20,000
contexts for 100,000 and 50,000 for a million): its rows say they measured
less than the target's size, and its figures are not for comparing.  The
table is printed and written with everything measured to a JSON file;
``python -m benchmarks.report FILE --markdown`` prints it again as Markdown.

Every receiver is a separate process, loaded over loopback by a separate load
generator process (:mod:`benchmarks.loadgen`) with the same pre-built
DogStatsD datagrams (:mod:`benchmarks.workload`: 1,000 and 100,000 contexts).
For each receiver the offered rate steps up; each step is a fresh receiver
process:

1. start it (twisted-statsd: ``twistd -n --pidfile= statsd --config <yaml>``,
   jsonl sink, ``dogstatsd_so_rcvbuf`` 8 MiB, ``flush_interval`` 1 s);
2. warm up: send every context once at a low rate, and wait until it is idle
   (a new context is slow the first time in every receiver; steps measure the
   steady state); these metrics are counted as sent, so a warm-up loss counts
   against the step;
3. wait, if need be, so that the step's window holds the receiver's periodic
   flush (for twisted-statsd, the flush that closes a 10 s bucket; for Etsy
   statsd, its 10 s flush) between 10 % and 60 % of the step, then send at
   the step's rate for ``--step-seconds``;
4. wait until its socket queue is empty and it is idle, read its CPU time
   (``/proc/<pid>/stat``), and stop it with SIGTERM; twisted-statsd's final
   flush writes everything, and its accepted-metric count is read back from its
   own telemetry (sum of value x 10 over ``twisted_statsd.metrics``), with the
   drop reasons from ``twisted_statsd.dropped``; Etsy statsd's from its own
   ``statsd.metrics_received`` counter (:mod:`benchmarks.etsy`), the ceiling's
   and recv-only's from the lines they counted.  The kernel's drop count for
   every UDP receiver comes from ``/proc/net/udp``.

A step passes when at most 0.1 % of the metrics offered were not accepted.
The ladder stops at the first failing step (after ``--retries``), or when the
offered rate was not reached (generator limit, or Unix socket back-pressure);
if even the first step failed, it halves the rate down to ``--floor``; then
``--refine`` bisection steps narrow the gap between the last passing and the
first failing rate.  recv-only runs at 1,000 contexts only: it does not
parse, so its rate stands in for every workload.  The Unix datagram and
stream runs (1,000 contexts; twisted-statsd with one process and with
``dogstatsd_workers: 2``, and recv-only) are one step at 10,000,000/s: a
Unix sender is slowed down by the receiver and loses nothing, so the rate it
achieves is the receiver's (the ladder steps down if that step loses); three
rounds, the receivers taking turns, and the best step counts.

Measured apart from the ladders, on the real server unless said otherwise:
RSS per live counter context (:meth:`Bench.measure_memory`, at the high
size), one process against two at the high size by how fast each drains a
full socket queue while no sender runs, with the RSS of the whole process
tree (:mod:`benchmarks.backlog`), a million live contexts
(:mod:`benchmarks.million`), and, with ``--stall``, the flush stall in this process
(:mod:`benchmarks.stall`); then the flush cost per context of each sink
(:mod:`benchmarks.flush_cost`, in this process) and the burst of new contexts
(:mod:`benchmarks.burst`, in a process of its own, as it runs the global
reactor).  See :mod:`benchmarks.report` for the rows,
bounds and verdicts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import flush_cost, million, procfs
from benchmarks.backlog import drain_medians
from benchmarks.etsy import VERSION as ETSY_VERSION
from benchmarks.etsy import EtsyStatsd, install
from benchmarks.loadgen import LoadGenerator
from benchmarks.receivers import REPO, Ceiling, ReceiverFailed, RecvOnly, TwistedStatsd, twisted_transports
from benchmarks.report import TWO_WORKERS, build_rows, format_table, summarize
from benchmarks.workload import mixed_spec

RATES = [200_000, 400_000, 800_000, 1_200_000, 1_600_000, 2_400_000]
QUICK_RATES = [200_000, 800_000, 2_400_000]
CPU_RATE = 200_000
LOSS_THRESHOLD = 0.001
SHORT_OF_OFFERED = 0.97  # a step that achieved less than this share of its rate fell short
RECEIVERS = ("twisted-statsd", "etsy-statsd", "ceiling", "recv-only")
UNIX_RECEIVERS = ("twisted-statsd", TWO_WORKERS, "recv-only")
UNIX_RATE = 10_000_000  # the one Unix step's offered rate: above any receiver's, so the receiver sets the pace
# Where in a step the receiver's periodic flush may fall, as shares of the step: late enough to be
# measured with intake going on, early enough for its work to be done mostly within the step.
ALIGN_EARLIEST, ALIGN_LATEST = 0.1, 0.6


class Bench:
    """Runs steps and ladders with one load generator and one scratch directory."""

    def __init__(self, args, generator: LoadGenerator, root: str, stats_js: str | None):
        self.args = args
        self.generator = generator
        self.root = root
        self.stats_js = stats_js

    def receiver(self, name: str, transport: str):
        workdir = tempfile.mkdtemp(dir=self.root, prefix="s")
        if name in ("twisted-statsd", TWO_WORKERS):
            workers = 2 if name == TWO_WORKERS else self.args.workers
            return TwistedStatsd(workdir, transport, self.args.rcvbuf, self.args.flush_interval, workers)
        if name == "etsy-statsd":
            return EtsyStatsd(self.stats_js, workdir, self.args.rcvbuf)
        if name == "recv-only":
            return RecvOnly(workdir, transport, self.args.rcvbuf)
        return Ceiling(workdir, transport, self.args.rcvbuf)

    def _warm_up(self, r, spec: dict, contexts: int) -> dict:
        rate = self.args.warmup_rate
        warm = self.generator.send(r.target, spec, rate, contexts / rate * 3 + 5, limit=contexts)
        r.settle()
        return warm

    @staticmethod
    def _align(r, seconds: float) -> float | None:
        """Wait, if need be, so that the receiver's next periodic flush falls within the step starting now.

        Returns the time of that flush (None: the receiver has no periodic flush).
        """
        flush_at = r.next_flush_after(time.time() + ALIGN_EARLIEST * seconds)
        if flush_at is not None:
            time.sleep(max(0.0, flush_at - ALIGN_LATEST * seconds - time.time()))
        return flush_at

    def step(self, name: str, transport: str, contexts: int, rate: float) -> dict:
        spec, seconds = mixed_spec(contexts), self.args.step_seconds
        receiver = self.receiver(name, transport)
        try:
            with receiver as r:
                warm = self._warm_up(r, spec, contexts)
                flush_at = self._align(r, seconds) if self.args.align else None
                drops_before, cpu_before = r.kernel_drops(), procfs.cpu_seconds(r.pid)
                sent = self.generator.send(r.target, spec, rate, seconds)
                quiet = r.settle()
                cpu = procfs.cpu_seconds(r.pid) - cpu_before
                drops_after, rss = r.kernel_drops(), procfs.status_bytes(r.pid, "VmRSS")
                r.before_stop()
                counted = r.stop()
        except ReceiverFailed as error:
            print(f"    {error}", file=sys.stderr)
            return {
                "rate": rate,
                "achieved_rate": 0.0,
                "loss": 1.0,
                "dropped": {},
                "kernel_drops": None,
                "passed": False,
                "short": False,
                "peak_rss": 0,
                "cpu_us_per_metric": None,
                "error": str(error),
            }
        finally:
            shutil.rmtree(receiver.workdir, ignore_errors=True)
        accepted = counted["accepted"] - warm["sent_metrics"]
        offered = sent["offered_metrics"]
        loss = (offered - accepted) / offered
        return {
            "rate": rate,
            "achieved_rate": sent["achieved_rate"],
            "offered": offered,
            "accepted": accepted,
            "loss": loss,
            "passed": quiet and loss <= LOSS_THRESHOLD,
            "short": sent["achieved_rate"] < SHORT_OF_OFFERED * rate,
            "settled": quiet,
            "dropped": counted["dropped"],
            "worker_metrics": counted.get("worker_metrics"),
            "kernel_drops": None if drops_after is None else drops_after - drops_before,
            "warmup_kernel_drops": drops_before,
            "lost_at_sender": sent["lost_at_sender"],
            "sender_cpu_share": sent["sender_cpu_share"],
            "cpu_seconds": cpu,
            "cpu_us_per_metric": cpu * 1e6 / accepted if accepted > 0 else None,
            "rss": rss,
            "peak_rss": counted["peak_rss"],
            "rcvbuf": r.rcvbuf,
            "flush_in_window": flush_at is not None,
        }

    def ladder(self, name: str, transport: str, contexts: int, rates: list[float]) -> list[dict]:
        """Step the rate up until a step fails; then down if the first failed; then bisect."""
        steps: list[dict] = []

        def run(rate: float) -> dict:
            step = self.step(name, transport, contexts, rate)
            steps.append(step)
            _progress(name, transport, contexts, step)
            return step

        for rate in rates:
            for _ in range(1 + self.args.retries):
                if (step := run(rate))["passed"]:
                    break
            if not step["passed"] or step["short"]:
                break
        rate = rates[0] / 2
        while not any(s["passed"] for s in steps) and rate >= self.args.floor:
            run(rate)
            rate /= 2
        low = max((s["rate"] for s in steps if s["passed"] and not s["short"]), default=None)
        high = min((s["rate"] for s in steps if not s["passed"] and (low is None or s["rate"] > low)), default=None)
        for _ in range(self.args.refine if low and high else 0):
            rate = round((low + high) / 2, -3)
            step = run(rate)
            low, high = (rate, high) if step["passed"] and not step["short"] else (low, rate)
        return steps

    def measure_memory(self, contexts: int) -> dict:
        """RSS growth of twisted-statsd from loading ``contexts`` new counter contexts, per context."""
        warm_spec, load_spec = mixed_spec(1000), {"kind": "counters", "contexts": contexts}
        receiver = self.receiver("twisted-statsd", "udp")
        try:
            with receiver as r:
                warm = self._warm_up(r, warm_spec, 20_000)
                # Load (new contexts take the slow path: at the warm-up rate) and read RSS within
                # one 10 s bucket, as a bucket flush would change what is live.
                load_seconds = contexts / self.args.warmup_rate + 1.5
                if load_seconds < 9 and 10 - time.time() % 10 < load_seconds:
                    time.sleep(10 - time.time() % 10 + self.args.flush_interval + 0.5)
                    r.settle()
                before = procfs.status_bytes(r.pid, "VmRSS")
                sent = self.generator.send(r.target, load_spec, self.args.warmup_rate, 60, limit=contexts)
                r.settle()
                after = procfs.status_bytes(r.pid, "VmRSS")
                r.before_stop()
                counted = r.stop()
        finally:
            shutil.rmtree(receiver.workdir, ignore_errors=True)
        loaded = counted["accepted"] - warm["sent_metrics"]
        return {
            "contexts": contexts,
            "loaded": loaded,
            "rss_before": before,
            "rss_after": after,
            "sent": sent["sent_metrics"],
            "bytes_per_context": (after - before) / contexts,
            "note": f"{loaded:,} of {contexts:,} loaded; RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB",
        }


def _progress(name: str, transport: str, contexts: int, step: dict) -> None:
    verdict = "pass" if step["passed"] else "FAIL"
    extra = f" short (sender cpu {step['sender_cpu_share']:.0%})" if step.get("short") else ""
    cpu = f", receiver cpu {step['cpu_us_per_metric']:.2f} us/metric" if step.get("cpu_us_per_metric") else ""
    print(
        f"  {name:<17} {transport:<10} {contexts:>7,} ctx @ {step['rate']:>9,.0f}/s: "
        f"achieved {step['achieved_rate']:>9,.0f}/s, loss {step['loss']:7.3%} {verdict}{extra}{cpu} "
        f"{step['dropped'] or ''}",
        file=sys.stderr,
        flush=True,
    )


def measure_stall(contexts: int) -> dict:
    """Run :mod:`benchmarks.stall` in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.stall", "--contexts", str(contexts), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.stall failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(f"benchmarks.stall failed: {result['error']}")
    return result


def _cpu_step(bench: Bench, name: str, steps: list[dict]) -> dict:
    """The 200,000/s step of a ladder (its first passing attempt), or a step run now."""
    at_rate = [s for s in steps if s["rate"] == CPU_RATE]
    passing = [s for s in at_rate if s["passed"]]
    if passing or at_rate:
        return (passing or at_rate)[0]
    step = bench.step(name, "udp", 1000, CPU_RATE)
    _progress(name, "udp", 1000, step)
    return step


def _environment(args) -> dict:
    def run(*command):
        try:
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return None

    import twisted

    read = _read
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": run("git", "rev-parse", "HEAD"),
        "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "node": run("node", "--version"),
        "etsy_statsd": ETSY_VERSION,
        "cpus": os.cpu_count(),
        "loadavg_start": read("/proc/loadavg"),
        "rmem_max": int(read("/proc/sys/net/core/rmem_max")),
        "unix_max_dgram_qlen": int(read("/proc/sys/net/unix/max_dgram_qlen")),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _rate_list(text: str) -> list[float]:
    scale = {"k": 1e3, "m": 1e6}
    return [float(v[:-1]) * scale[v[-1].lower()] if v[-1].lower() in scale else float(v) for v in text.split(",")]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of every part in about 3 minutes: short steps, fewer rates, no retries, no flush "
        "alignment, smaller workloads (20,000 for 100,000 contexts, 50,000 for a million); not for figures",
    )
    parser.add_argument("--rates", type=_rate_list, help="offered metrics/s per step, e.g. 100k,200k,1.2M")
    parser.add_argument("--step-seconds", type=float, help="seconds of load per step (default 5, quick 1.5)")
    parser.add_argument("--retries", type=int, help="re-runs of a failing step (default 1, quick 0)")
    parser.add_argument(
        "--refine", type=int, help="bisection steps between the last pass and the first failure (default 2, quick 0)"
    )
    parser.add_argument(
        "--floor",
        type=lambda text: _rate_list(text)[0],
        default=25_000.0,
        help="when the first step fails, halve the rate down to this (default 25k)",
    )
    parser.add_argument(
        "--contexts", help="the two UDP workload sizes (contexts), low and high (default 1000,100000; quick 1000,20000)"
    )
    parser.add_argument(
        "--receivers", default=",".join(RECEIVERS), help="comma-separated subset of " + ", ".join(RECEIVERS)
    )
    parser.add_argument("--no-unix", dest="unix", action="store_false", help="skip the Unix socket ladders")
    parser.add_argument(
        "--unix-rounds", type=int, help="interleaved rounds of the Unix steps; the best counts (default 3, quick 1)"
    )
    parser.add_argument(
        "--no-align",
        dest="align",
        action="store_false",
        help="do not put the receiver's periodic flush inside each step",
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip RSS per context")
    parser.add_argument(
        "--stall", action="store_true", help="also the in-process flush stall at the high size (benchmarks.stall)"
    )
    parser.add_argument(
        "--million",
        type=int,
        help="contexts of the million-context run (default 1,000,000, quick 50,000; 0: skip it)",
    )
    parser.add_argument("--backlog-rounds", type=int, help="queue-drain rounds per process count (default 9, quick 3)")
    parser.add_argument(
        "--no-backlog",
        dest="backlog",
        action="store_false",
        help="skip the 1 vs 2 intake processes queue drain (benchmarks.backlog)",
    )
    parser.add_argument("--warmup-rate", type=float, default=25_000.0, help="metrics/s of the warm-up pass")
    parser.add_argument("--rcvbuf", type=int, default=8 << 20, help="SO_RCVBUF asked for by every receiver")
    parser.add_argument("--flush-interval", type=float, default=1.0, help="twisted-statsd flush_interval")
    parser.add_argument(
        "--workers", type=int, default=1, help="twisted-statsd dogstatsd_workers (UDP intake processes)"
    )
    parser.add_argument("--etsy-dir", help=f"reuse this directory for `npm install statsd@{ETSY_VERSION}`")
    parser.add_argument("--json", help="where to write the results (default benchmarks/results/throughput-<date>.json)")
    args = parser.parse_args(argv)
    args.rates = args.rates or (QUICK_RATES if args.quick else RATES)
    args.step_seconds = args.step_seconds or (1.5 if args.quick else 5.0)
    args.retries = args.retries if args.retries is not None else (0 if args.quick else 1)
    args.refine = args.refine if args.refine is not None else (0 if args.quick else 2)
    args.contexts = [int(c) for c in (args.contexts or ("1000,20000" if args.quick else "1000,100000")).split(",")]
    args.million = args.million if args.million is not None else (50_000 if args.quick else 1_000_000)
    args.backlog_rounds = args.backlog_rounds or (3 if args.quick else 9)
    args.unix_rounds = args.unix_rounds or (1 if args.quick else 3)
    if args.quick:
        args.align = False
    args.receivers = args.receivers.split(",")
    if CPU_RATE not in args.rates:
        args.rates = sorted(args.rates + [CPU_RATE])
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    began = time.time()
    environment = _environment(args)
    root = tempfile.mkdtemp(prefix="tsb")
    try:
        stats_js = None
        if "etsy-statsd" in args.receivers:
            etsy_dir = args.etsy_dir or os.path.join(root, "etsy")
            os.makedirs(etsy_dir, exist_ok=True)
            print(f"installing statsd@{ETSY_VERSION} into {etsy_dir}", file=sys.stderr)
            stats_js = install(etsy_dir)
        with LoadGenerator() as generator:
            results = run_all(Bench(args, generator, root, stats_js), args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    environment["loadavg_end"] = _read("/proc/loadavg")
    rows = build_rows(results)
    print(
        f"\ntwisted-statsd throughput, {environment['date']}, commit {(environment['commit'] or '?')[:12]}"
        f"{' (dirty)' if environment['dirty'] else ''}; {args.step_seconds:g} s steps"
        f"{', QUICK' if args.quick else ''}; load {environment['loadavg_start'].split()[0]} -> "
        f"{environment['loadavg_end'].split()[0]} on {environment['cpus']} CPUs; took {time.time() - began:.0f} s"
    )
    print(format_table(rows))
    path = args.json or os.path.join(
        REPO, "benchmarks", "results", f"throughput-{datetime.datetime.now():%Y-%m-%d-%H%M%S}.json"
    )
    _make_results_directory(os.path.dirname(os.path.abspath(path)))
    runs = [
        {"receiver": k[0], "transport": k[1], "contexts": k[2], **(v or {"available": False})}
        for k, v in results.pop("runs").items()
    ]
    with open(path, "w") as f:
        json.dump({"environment": environment, "rows": rows, "runs": runs, **results}, f, indent=1)
    print(f"\nwrote {path} (python -m benchmarks.report {path} --markdown: the table for the README)")


def _make_results_directory(directory: str) -> None:
    """Create it; the default one ignores its own contents, so results are never committed by accident."""
    os.makedirs(directory, exist_ok=True)
    if directory == os.path.join(REPO, "benchmarks", "results"):
        ignore = os.path.join(directory, ".gitignore")
        if not os.path.exists(ignore):
            with open(ignore, "w") as f:
                f.write("*\n")


def run_all(bench: Bench, args) -> dict:
    """Every measurement of the table; see :func:`benchmarks.report.build_rows` for what each key holds."""
    low, high = min(args.contexts), max(args.contexts)
    # recv-only does not parse: one workload size stands in for every one.
    plan = [
        (name, "udp", contexts)
        for contexts in args.contexts
        for name in args.receivers
        if name != "recv-only" or contexts == low
    ]
    if args.unix:
        # Rounds interleaved, one process and two taking turns, so a noisy minute does not decide the ratio.
        plan += [
            (name, transport, low)
            for _ in range(args.unix_rounds)
            for transport in ("unixgram", "unixstream")
            for name in UNIX_RECEIVERS
            if name in args.receivers or (name == TWO_WORKERS and "twisted-statsd" in args.receivers)
        ]
    available = twisted_transports()
    runs: dict = {}
    for name, transport, contexts in plan:
        if name in ("twisted-statsd", TWO_WORKERS) and not available[transport]:
            runs[(name, transport, contexts)] = None
            continue
        bench.generator.describe(mixed_spec(contexts), transport)
        # A Unix sender is slowed down by the receiver and loses nothing: one step at the top rate
        # gives the receiver's rate (the ladder steps down if it fails).
        rates = args.rates if transport == "udp" else [UNIX_RATE]
        steps = (runs.get((name, transport, contexts)) or {"steps": []})["steps"]
        steps += bench.ladder(name, transport, contexts, rates)
        runs[(name, transport, contexts)] = {"steps": steps, "summary": summarize(steps, rates, transport)}
    cpu = {
        name: _cpu_step(bench, name, runs[(name, "udp", low)]["steps"])
        for name in args.receivers
        if (name, "udp", low) in runs
    }
    errors: dict[str, str] = {}

    def attempt(name: str, wanted, measure):
        """One separate measurement; a failure is reported and leaves its rows "not measured", not the run."""
        if not wanted:
            return None
        try:
            return measure()
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
            print(f"  {name} failed: {errors[name]}", file=sys.stderr, flush=True)
            return None

    memory = attempt("memory", args.memory, lambda: bench.measure_memory(high))
    stall = attempt("stall", args.stall, lambda: measure_stall(high))
    backlog = attempt(
        "backlog", args.backlog, lambda: drain_medians((1, 2), args.backlog_rounds, 3000, bench.root, high)
    )
    million_run = attempt("million", args.million, lambda: million.measure(bench.root, args.million, args.rcvbuf))
    if million_run:
        print(
            f"  {million_run['live_contexts']:,} live contexts, peak RSS {million_run['peak_rss'] / 2**20:.0f} MiB, "
            f"longest stall {million_run['max_stall_seconds'] * 1000:.0f} ms",
            file=sys.stderr,
            flush=True,
        )
    flush_costs = attempt("flush_cost", True, lambda: flush_cost.measure(high, runs=3))
    burst = attempt("burst", True, lambda: measure_burst(high))
    return {
        "runs": runs,
        "cpu": cpu,
        "memory": memory,
        "stall": stall,
        "backlog": backlog,
        "backlog_contexts": high,
        "contexts": [low, high],
        "million": million_run,
        "flush_cost": flush_costs and {sink: {"us_per_context": us} for sink, us in flush_costs.items()},
        "burst": burst,
        "errors": errors,
    }


def measure_burst(contexts: int) -> dict:
    """``benchmarks.burst`` in a process of its own (it runs the global reactor), in report.py's terms.

    Learning is judged by CPU per line (wall time on a shared machine counts
    the waits for a core); the stall is the wall-clock one a sender sees.
    """
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.burst", "--contexts", str(contexts), "--runs", "3", "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    stall, busy = result["max_stall_ms"], result["max_busy_cpu_ms"]
    return {
        "contexts": result["contexts"],
        "us_per_line": result["learn_cpu_us_per_line"],
        "wall_us_per_line": result["learn_us_per_line"],
        "max_stall_seconds": None if stall is None else stall / 1000,
        "max_busy_cpu_seconds": None if busy is None else busy / 1000,
        "kernel_drops": result["kernel_drops"],
    }


if __name__ == "__main__":
    main()
