"""Run ``fromage-mini`` in this process, as ``subprocess.run([python, "-m", "fromage_mini.cli", ...])`` would.

A fresh interpreter pays seconds of torch/transformers import per call; most CLI tests only check an
exit code, a message or the files written, which :func:`run_cli` gives without that cost. What a real
process would print to stderr is captured too: ``warnings`` (shown as an interpreter's default filters
would, not recorded by pytest), ``logging`` records of WARNING and above (as Python's last-resort
handler prints them) and tqdm bars. An uncaught exception becomes exit code 1 with its traceback on
stderr, as in a real process. The environment, working directory, ``sys.argv``/``sys.stdin``, signal
handlers, torch's thread count, grad mode, default dtype and the random generators are put back after.

Keep a real subprocess for what only a process shows: crashes and SIGKILL, import-time noise, stdin
sessions, the installed entry point.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import traceback
import warnings

import numpy as np
import torch

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` as a fresh interpreter has it: to the current ``sys.stderr``."""
    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


def _default_warning_filters():
    """The filters of a plain ``python`` (release build, no -W, no PYTHONWARNINGS)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def _stderr_handlers(*streams):
    """Logging handlers that write to one of ``streams`` (a library's own handler, bound at its import)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(getattr(type(h), "stream", None), property)
            and any(h.stream is s for s in streams)]  # (a property: it looks up sys.stderr itself)


def run_cli(*args, env: dict[str, str | None] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """``fromage_mini.cli.main(list(args))`` here; returns a CompletedProcess with returncode, stdout, stderr.

    ``env`` adds (``None``: removes) environment variables for the call only. ``input`` is stdin (empty
    by default: a reader gets end of file). ``SystemExit(code)`` gives ``code``; any other exception
    gives 1 and a "Traceback ..." on stderr. KeyboardInterrupt is not caught (Ctrl-C stops pytest).
    """
    from fromage_mini.cli import main

    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_argv, saved_stdin = dict(os.environ), os.getcwd(), sys.argv[:], sys.stdin
    saved_stderr = sys.stderr
    rebound = []
    main_thread = threading.current_thread() is threading.main_thread()
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS} if main_thread else {}
    saved_torch = (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_default_dtype(),
                   torch.get_rng_state())
    saved_random, saved_np = random.getstate(), np.random.get_state()
    root = logging.getLogger()
    last_resort = logging.StreamHandler(err)  # what logging.lastResort would print in a real process
    last_resort.setLevel(logging.WARNING)
    returncode = 0
    try:
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        sys.argv = ["fromage-mini", *args]
        sys.stdin = io.StringIO(input or "")
        root.addHandler(last_resort)
        rebound = [(h, h.stream) for h in _stderr_handlers(saved_stderr, sys.__stderr__)]
        for h, _ in rebound:
            h.setStream(err)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            _default_warning_filters()
            warnings.showwarning = _show_warning
            try:
                returncode = main(args)
            except SystemExit as e:  # argparse errors, --help, an explicit sys.exit
                if e.code is None:
                    returncode = 0
                elif isinstance(e.code, int):
                    returncode = e.code
                else:
                    print(e.code, file=sys.stderr)
                    returncode = 1
            except KeyboardInterrupt:
                raise
            except BaseException:  # what the interpreter does with an uncaught exception
                traceback.print_exc(file=sys.stderr)
                returncode = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        root.removeHandler(last_resort)
        for h, stream in rebound:
            h.setStream(stream)
        for h in _stderr_handlers(out, err):  # made during the call, bound to our buffers: back to the real ones
            h.setStream(saved_stderr if h.stream is err else sys.stdout)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv, sys.stdin = saved_argv, saved_stdin
        for s, handler in saved_signals.items():
            if handler is not None:
                signal.signal(s, handler)
        threads, grad, dtype, rng = saved_torch
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng)
        random.setstate(saved_random)
        np.random.set_state(saved_np)
    return subprocess.CompletedProcess(["fromage-mini", *args], int(returncode or 0), out.getvalue(), err.getvalue())


def run_cli_process(*args, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """The same call through a fresh ``python -m fromage_mini.cli`` process (the real entry point, with its
    imports); ``env`` replaces the whole environment when given."""
    return subprocess.run([sys.executable, "-m", "fromage_mini.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
