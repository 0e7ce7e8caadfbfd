"""The harness the tests that feed hostile input share: run a call, or the CLI, under a memory cap.

A regression there must fail a test, not take the machine down: `in_child` runs a function in a forked child
with RLIMIT_AS at what the child maps plus `cap` and an alarm; `cli` runs `python -m templatekit` in a fresh
interpreter that caps its own address space and reports its own peak resident memory (VmHWM at exit).
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _paths import REPO_ROOT

from templatekit.errors import TemplateKitError

MiB = 1 << 20
CHILD_CAP = 512 * MiB  # address space an API call may add in its child
CLI_CAP = 1 << 30  # address space of a whole CLI run (a normal one maps about 0.5 GiB)
SECONDS = 60


# ------------------------------------------------------------------------------------------------ harness


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


@dataclass
class Outcome:
    """What a call did in its child: "returned" (with `value`), "error" (a TemplateKitError) or "crash"."""

    kind: str
    type: str = ""
    message: str = ""
    source: str | None = None
    line: int | None = None
    column: int | None = None
    value: object = None
    peak: int = 0  # bytes of resident memory added over what the child had at fork
    seconds: float = 0.0


def in_child(function: Callable[[], object], *, cap: int = CHILD_CAP, timeout: float = SECONDS) -> Outcome:
    """Run `function()` in a forked child under RLIMIT_AS (what the child maps plus `cap`) and an alarm."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + cap, resource.RLIM_INFINITY))
            signal.alarm(int(timeout))
            start, started = _status("VmRSS"), time.monotonic()
            try:
                outcome = Outcome("returned", value=function())
            except TemplateKitError as exc:
                where = {k: getattr(exc, k, None) for k in ("source", "line", "column")}
                outcome = Outcome("error", type(exc).__name__, str(exc), **where)
            except BaseException as exc:  # noqa: BLE001 - the crash this harness is for
                outcome = Outcome("crash", type(exc).__name__, "".join(traceback.format_exception(exc))[-3000:])
            outcome.peak, outcome.seconds = _status("VmHWM") - start, time.monotonic() - started
            payload = pickle.dumps(outcome)
        except BaseException as exc:  # noqa: BLE001 - even a MemoryError while reporting is reported
            payload = pickle.dumps(Outcome("crash", type(exc).__name__, "while reporting"))
        os.write(write_fd, payload)
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        signal_name = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else "no signal"
        return Outcome("crash", "ChildDied", f"the child died ({signal_name}) without a result")
    return pickle.loads(b"".join(chunks))


@dataclass
class Run:
    code: int
    out: str
    err: str
    peak: int  # peak resident set size of the CLI process, bytes

    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


# The CLI runs in a fresh interpreter that caps its own address space and, at exit, writes its peak resident
# memory (VmHWM). `wait4`'s ru_maxrss is no measure here: a child forked from this test process counts this
# process's resident memory at the fork (Linux carries the high-water mark across exec).
_CLI_WRAPPER = """
import atexit, resource, runpy, sys
cap, peak_file = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
def record():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(record)
sys.argv = ["templatekit", *sys.argv[3:]]
runpy.run_module("templatekit", run_name="__main__", alter_sys=True)
"""


def cli(*argv: object, cwd: Path | None = None, timeout: float = SECONDS, cap: int = CLI_CAP) -> Run:
    """`python -m templatekit ARGV` under RLIMIT_AS = `cap` and a wall-clock limit; its exit code, output and
    peak RSS (VmHWM at exit; a run that never reached exit reads as unbounded)."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"tk_bad_{os.getpid()}_{threading.get_ident()}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    peak_file = Path(f"{out_path}.peak")
    peak_file.unlink(missing_ok=True)
    with open(f"{out_path}.out", "w+b") as out, open(f"{out_path}.err", "w+b") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", _CLI_WRAPPER, str(cap), str(peak_file), *map(str, argv)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd or REPO_ROOT,
            env=env,
        )
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.seek(0)
        err.seek(0)
        peak = int(peak_file.read_text()) * 1024 if peak_file.exists() else 1 << 62
        run = Run(process.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"), peak)
    for suffix in (".out", ".err", ".peak"):
        Path(f"{out_path}{suffix}").unlink(missing_ok=True)
    return run


def cli_in_child(
    *argv: object,
    cap: int = CLI_CAP,
    timeout: float = SECONDS,
    env: dict[str, str] | None = None,
    file_size: int | None = None,
    cwd: Path | None = None,
) -> Run:
    """`templatekit.cli.main(ARGV)` in a forked child under RLIMIT_AS (what it maps plus `cap`) and an alarm: the
    CLI's own code path, without a fresh interpreter's two seconds of start-up (for tests that run it many
    times). `peak` is the resident memory the run added over what the child had at fork. `env` is added to the
    child's environment, `file_size` sets its RLIMIT_FSIZE (the file-size limit, `ulimit -f`), `cwd` its folder.
    A child killed by a signal has the negative signal number as `code`."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"tk_cli_{os.getpid()}_{threading.get_ident()}"
    paths = {name: Path(f"{out_path}.{name}") for name in ("out", "err", "peak")}
    paths["peak"].unlink(missing_ok=True)
    # What a CLI process does once, before its first template's child process (imports, environments, probes),
    # done here once, so that each forked run starts where a CLI process is after its first template.
    from templatekit.cli.options import _warm_up

    _warm_up()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.environ.update({"NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})})
            if file_size is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, resource.RLIM_INFINITY))
            if cwd is not None:
                os.chdir(cwd)
            sys.stdout = open(paths["out"], "w", encoding="utf-8")  # noqa: SIM115 - flushed at exit below
            sys.stderr = open(paths["err"], "w", encoding="utf-8")  # noqa: SIM115
            resource.setrlimit(resource.RLIMIT_AS, (_status("VmSize") + cap, resource.RLIM_INFINITY))
            signal.alarm(int(timeout))
            start = _status("VmRSS")
            from templatekit.cli import main

            code = main([str(arg) for arg in argv])
            paths["peak"].write_text(str(_status("VmHWM") - start))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - a crash shows as a traceback on stderr
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    peak = int(paths["peak"].read_text()) if paths["peak"].exists() else 1 << 62
    texts = [paths[name].read_text(errors="replace") if paths[name].exists() else "" for name in ("out", "err")]
    for path in paths.values():
        path.unlink(missing_ok=True)
    return Run(code, texts[0], texts[1], peak)
