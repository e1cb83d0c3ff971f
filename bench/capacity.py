"""How many conversations at once this machine holds with voice-to-voice p95 under 1.5 s.

Starts the whole stack (tests/stack.py, as `make run` does) on free ports unless --host is
given. Then for N = --start, --start + 1, ...: runs Locust headless (loadtests/locustfile.py,
`ConversationUser` only) with N users for --time seconds. All N start within a second; each
speaks a question (espeak-ng) at real-time pace in 100 ms frames, silence between turns like a
live microphone, waits for the reply and for it to finish playing, thinks 1–3 s, and speaks
again: about 8 turns per user in 90 s. Turns under way when the time is up are allowed to
finish (Locust's --stop-timeout), so a slow turn is counted rather than cut off.

Per N it records: completed turns; failures (lost turns, `error` events, failed connects);
voice-to-voice p50 and p95 (end of speech → first reply audio byte, at the client, exact: from
Locust's --samples-file, not its rounded percentiles); each stack process's CPU (mean over the
run, in % of one core) and peak RSS (psutil over supervisord's children, matched by their
command lines; a service's own child processes count as its own); and the load generator's CPU,
which shares the machine. It stops at the first N whose p95 is ≥ --limit-ms or that had any
failure: the capacity is the N before it. --runs R repeats every N R times on the same stack
and reports medians (failures: the total over the runs).

    python bench/capacity.py                               # N = 1, 2, 3, ... 90 s each
    python bench/capacity.py --runs 3                      # medians of 3 runs per N
    python bench/capacity.py --max-users 1 --time 30       # a smoke run
    python bench/capacity.py --host http://host:7860       # a running gateway (no process figures)
    python bench/capacity.py --env PARLEY_LLM_INSTANCES=2  # settings for the started stack

Prints a line per run, a markdown table (docs/benchmarks.md, "Capacity under load") and a JSON line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.conversation_latency import percentile  # noqa: E402
from loadtests.clips import clip  # noqa: E402
from tests.speech import QUESTIONS  # noqa: E402
from tests.stack import start_stack  # noqa: E402

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
# supervisord's programs (deploy/supervisord.conf), by what their command lines contain.
PROGRAMS = {
    "parley_gateway": "gateway",
    "parley_vad": "vad",
    "parley_asr": "asr",
    "parley_llm": "llm",
    "parley_tts": "tts",
    "nats-server": "nats",
}
COLUMNS = ("gateway", "vad", "asr", "llm", "tts", "nats")


@dataclass
class Usage:
    cpu_percent: float  # mean over the run, in % of one core
    rss_peak_mib: float


@dataclass
class Run:
    users: int
    turns: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    v2v_p50_ms: float | None = None
    v2v_p95_ms: float | None = None
    usage: dict[str, Usage] = field(default_factory=dict)
    generator_cpu_percent: float = 0.0
    wall_s: float = 0.0
    locust_exit: int = 0


def stack_processes(root_pid: int) -> dict[str, psutil.Process]:
    """The stack's programs by name: the first process of each (its own children are counted with it)."""
    names: dict[int, str] = {}
    processes: dict[int, psutil.Process] = {}
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        for marker, name in PROGRAMS.items():
            if marker in command:
                names[process.pid], processes[process.pid] = name, process
                break
    # A program's own helper processes may name it too; the program is the one whose parent is not it.
    return {name: processes[pid] for pid, name in names.items() if names.get(processes[pid].ppid()) != name}


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for member in _tree(process):
        try:
            times = member.cpu_times()
            total += float(times.user + times.system)
        except psutil.Error:  # exited meanwhile: its time is lost, a small undercount
            pass
    return total


def rss_bytes(process: psutil.Process) -> int:
    total = 0
    for member in _tree(process):
        with contextlib.suppress(psutil.Error):  # exited meanwhile
            total += int(member.memory_info().rss)
    return total


class Meter(threading.Thread):
    """CPU of each program from its CPU time before and after (exact); RSS sampled every second (peak)."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.peaks = dict.fromkeys(processes, 0)
        self._finished = threading.Event()
        self._cpu0 = {name: cpu_seconds(p) for name, p in processes.items()}
        self._since = time.monotonic()

    def run(self) -> None:
        while not self._finished.wait(1.0):
            self._sample()

    def _sample(self) -> None:
        for name, process in self.processes.items():
            self.peaks[name] = max(self.peaks[name], rss_bytes(process))

    def finish(self) -> dict[str, Usage]:
        self._finished.set()
        self.join()
        self._sample()
        elapsed = time.monotonic() - self._since
        return {
            name: Usage(
                cpu_percent=round(100 * (cpu_seconds(p) - self._cpu0[name]) / elapsed, 1),
                rss_peak_mib=round(self.peaks[name] / 2**20, 1),
            )
            for name, p in self.processes.items()
        }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_locust(
    host: str, users: int, time_s: int, turn_timeout_s: float, processes: dict[str, psutil.Process], workdir: Path
) -> Run:
    """One Locust run of `users` ConversationUsers; its figures, from its samples file."""
    samples = workdir / f"samples-{users}.jsonl"
    samples.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{time_s}s",
        "--stop-timeout",
        str(int(turn_timeout_s) + 10),
        "--turn-timeout",
        str(turn_timeout_s),
        "--samples-file",
        str(samples),
        "--csv",
        str(workdir / f"locust-{users}"),
        "--only-summary",
        "ConversationUser",
    ]
    meter = Meter(processes)
    meter.start()
    generator0 = children_cpu_seconds()
    started = time.monotonic()
    log = workdir / f"locust-{users}.log"
    with log.open("w") as out:
        exit_code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
    wall_s = time.monotonic() - started
    result = Run(users, usage=meter.finish(), wall_s=round(wall_s, 1), locust_exit=exit_code)
    # The Locust process has been waited for: its CPU time (and its children's) is in RUSAGE_CHILDREN now.
    result.generator_cpu_percent = round(100 * (children_cpu_seconds() - generator0) / wall_s, 1)
    if exit_code not in (0, 1):  # 1: some requests failed, which the samples say; anything else: Locust failed
        raise RuntimeError(f"locust exited with {exit_code}:\n{log.read_text()[-4000:]}")
    rows = [json.loads(line) for line in samples.read_text().splitlines()] if samples.exists() else []
    v2v = [float(r["ms"]) for r in rows if r["name"] == "voice_to_voice" and r["ok"]]
    failed = [r for r in rows if not r["ok"]]
    result.turns = sum(1 for r in rows if r["name"] == "turn" and r["ok"])
    result.failures = len(failed)
    result.reasons = dict(collections.Counter(f"{r['name']}: {r['error'][:160]}" for r in failed))
    if v2v:
        result.v2v_p50_ms = round(statistics.median(v2v))
        result.v2v_p95_ms = round(percentile(v2v, 0.95))
    return result


def median_run(runs: list[Run]) -> Run:
    """Medians over repeated runs of one N; failures and their reasons are totals."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present)) if present else None

    reasons: collections.Counter[str] = collections.Counter()
    for run in runs:
        reasons.update(run.reasons)
    names = runs[0].usage.keys()
    return Run(
        users=runs[0].users,
        turns=round(statistics.median(r.turns for r in runs)),
        failures=sum(r.failures for r in runs),
        reasons=dict(reasons),
        v2v_p50_ms=med([r.v2v_p50_ms for r in runs]),
        v2v_p95_ms=med([r.v2v_p95_ms for r in runs]),
        usage={
            name: Usage(
                cpu_percent=round(statistics.median(r.usage[name].cpu_percent for r in runs), 1),
                rss_peak_mib=round(statistics.median(r.usage[name].rss_peak_mib for r in runs), 1),
            )
            for name in names
        },
        generator_cpu_percent=round(statistics.median(r.generator_cpu_percent for r in runs), 1),
        wall_s=round(statistics.median(r.wall_s for r in runs), 1),
    )


def passes(run: Run, limit_ms: float) -> bool:
    return run.failures == 0 and run.v2v_p95_ms is not None and run.v2v_p95_ms < limit_ms


def table(results: list[Run], limit_ms: float) -> str:
    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value:.0f}"

    columns = [name for name in COLUMNS if any(name in r.usage for r in results)]
    header = ["conversations", "turns", "failures", "voice-to-voice p50 (ms)", "p95 (ms)", "holds?"]
    header += [f"{name} CPU % / RSS MiB" for name in columns] + ["load generator CPU %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [str(r.users), str(r.turns), str(r.failures), ms(r.v2v_p50_ms), ms(r.v2v_p95_ms)]
        cells.append("yes" if passes(r, limit_ms) else "**no**")
        cells += [
            f"{r.usage[name].cpu_percent:.0f} / {r.usage[name].rss_peak_mib:.0f}" if name in r.usage else "–"
            for name in columns
        ]
        cells.append(f"{r.generator_cpu_percent:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    reasons = [f"- {r.users} at once: {count} × {reason}" for r in results for reason, count in r.reasons.items()]
    return "\n".join(lines + (["", "Failures:", *reasons] if reasons else []))


def measure(
    host: str, root_pid: int | None, args: argparse.Namespace, workdir: Path
) -> tuple[list[Run], list[list[Run]]]:
    processes = stack_processes(root_pid) if root_pid is not None else {}
    if root_pid is not None and len(processes) < len(PROGRAMS):
        print(f"note: found only {sorted(processes)} of the stack's programs", flush=True)
    summaries: list[Run] = []
    every: list[list[Run]] = []
    for users in range(args.start, args.max_users + 1):
        runs = []
        for index in range(args.runs):
            run = run_locust(host, users, args.time, args.turn_timeout, processes, workdir)
            runs.append(run)
            print(
                f"{users} conversation(s), run {index + 1}: {run.turns} turns, {run.failures} failures, "
                f"voice-to-voice p50 {run.v2v_p50_ms} / p95 {run.v2v_p95_ms} ms, "
                f"load generator {run.generator_cpu_percent:.0f} % CPU",
                flush=True,
            )
        every.append(runs)
        summary = median_run(runs)
        summaries.append(summary)
        if not passes(summary, args.limit_ms):
            break
    return summaries, every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="a running gateway (http://host:7860); default: start the stack here")
    parser.add_argument("--start", type=int, default=1, help="the first number of conversations")
    parser.add_argument("--max-users", type=int, default=16, help="stop here even if it still holds")
    parser.add_argument("--time", type=int, default=90, help="seconds of load per run")
    parser.add_argument("--runs", type=int, default=1, help="runs per number of conversations (medians)")
    parser.add_argument("--limit-ms", type=float, default=1500.0, help="the voice-to-voice p95 to stay under")
    parser.add_argument("--turn-timeout", type=float, default=60.0, help="a turn with no reply by then is lost")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the started stack")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)

    # The clips are made before the load starts, so espeak-ng never runs inside a measured run.
    for question in QUESTIONS:
        clip(question, args.host or "", os.environ.get("PARLEY_API_KEY", ""))
    with tempfile.TemporaryDirectory(prefix="parley-capacity-") as tmp:
        workdir = Path(tmp)
        if args.host:
            summaries, every = measure(args.host, None, args, workdir)
        else:
            (workdir / "state").mkdir()
            stack = start_stack(workdir / "state", extra_env)
            try:
                summaries, every = measure(stack.url, stack.process.pid, args, workdir)
            finally:
                stack.stop()
    held = [s.users for s in summaries if passes(s, args.limit_ms)]
    capacity = held[-1] if held and held == list(range(args.start, held[-1] + 1)) else 0
    print()
    print(table(summaries, args.limit_ms))
    print()
    limit_s = args.limit_ms / 1000
    reached = "" if summaries and not passes(summaries[-1], args.limit_ms) else " (or more: --max-users reached)"
    print(
        f"capacity: {capacity} conversation(s) at once with voice-to-voice p95 < {limit_s:g} s and no failure{reached}"
    )
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "env": extra_env,
        "time_s": args.time,
        "runs": args.runs,
        "limit_ms": args.limit_ms,
        "capacity": capacity,
        "results": [asdict(s) for s in summaries],
        "every_run": [[asdict(r) for r in runs] for runs in every],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
