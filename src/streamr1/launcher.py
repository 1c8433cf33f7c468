"""The ``streamr1`` console script: answers what needs no deep-learning library at once, then runs the CLI.

Importing Lightning costs 14-60 s on a loaded 2-core machine (it imports torchmetrics, which imports torchvision,
``torch._dynamo`` and scipy). So, before importing it, this launcher answers:

* ``streamr1``, ``streamr1 -h`` / ``--help``: the subcommands (``streamr1 <subcommand> --help`` has every argument
  and needs Lightning, since the arguments are read off the classes' signatures);
* ``streamr1 --version``;
* an unknown subcommand, a missing ``--config`` file, and YAML syntax errors in ``--config`` files: the file, line
  and column, the offending line, and for a tab character, that YAML indents with spaces only.

Everything else goes to :func:`streamr1.cli.main` (LightningCLI), with two changes of presentation:

* An error found while the configuration is parsed or its classes are built is printed with the project's own
  message (or the innermost cause) first and a one-line hint last, instead of jsonargparse's 70-105 lines of usage,
  union listings and chained tracebacks. ``STREAMR1_DEBUG=1`` shows the original, full report. Errors raised while
  training keep Python's traceback (whose last line is the cause).
* Ctrl-C (SIGINT) exits with status 130 (128 + SIGINT, the shell convention) after Lightning's clean shutdown
  (``on_exception`` hooks, teardown, loggers finalised); Lightning itself exits with status 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

DEBUG_ENV = "STREAMR1_DEBUG"
EXIT_USAGE = 2  # argparse's status for a command-line error
EXIT_SIGINT = 130  # 128 + SIGINT

SUBCOMMANDS: dict[str, str] = {
    "fit": "train: DMD distillation of the causal student, with the callback stack of the config",
    "validate": "one validation epoch (samples and evaluator metrics)",
    "test": "one test epoch",
    "predict": "sample videos from the student (a checkpoint with --ckpt_path; write them with --video.output_dir)",
    "export": "write the student (EMA weights when present) as a diffusers folder",
    "calibrate": "estimate the reward's per-axis mean and std and save them as JSON",
    "evaluate": "sample a prompt set into a VBench-style folder and score it",
}
"""The subcommands of :class:`streamr1.cli.StreamR1CLI` (a test checks that the two lists agree)."""

HELP = """\
usage: streamr1 [-h] [--version] {{{names}}} ...

streamr1 {version}: reward-weighted DMD distillation of streaming video diffusion models (Stream-R1),
on PyTorch Lightning.

subcommands:
{rows}

Every subcommand documents all its arguments: streamr1 fit --help
Configs compose left to right: streamr1 fit --config configs/quickstart.yaml --config configs/rewards/toy.yaml \\
    --config callbacks/stream_r1.yaml
Set {debug}=1 for full error reports (tracebacks, jsonargparse's listing).
"""

_CONFIG_FLAGS = ("--config", "-c")


class UsageError(Exception):
    """A command-line mistake found before anything is imported: printed without a traceback, exit status 2."""


def version() -> str:
    from streamr1 import __version__

    return __version__


def _help_text() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items())
    return HELP.format(names=",".join(SUBCOMMANDS), version=version(), rows=rows, debug=DEBUG_ENV)


# ---------------------------------------------------------------------------------------------- --config YAML checks
def config_files(argv: Sequence[str]) -> list[str]:
    """The values of every ``--config``/``-c`` option in ``argv`` (``--config X``, ``--config=X``, ``-c X``)."""
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            out.append(argv[i + 1])
            next(it, None)
        elif arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
    return out


def _looks_like_a_path(value: str) -> bool:
    """``--config`` also takes an inline YAML/JSON string; a value naming a .yaml/.yml/.json file is a path."""
    return "\n" not in value and not value.lstrip().startswith(("{", "[")) and \
        value.lower().endswith((".yaml", ".yml", ".json"))


def check_yaml_file(path: str) -> None:
    """Raise :class:`UsageError` naming ``path``, the line and the column when ``path`` is not valid YAML syntax.

    Only the syntax is checked (``yaml.compose``: scanning, parsing, aliases), so what jsonargparse's loader accepts
    beyond plain YAML is not refused here. A tab character gets its own message: YAML indents with spaces only.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as err:
        raise UsageError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start}).\n"
                         "Save it as UTF-8 (a YAML file) and rerun.") from None
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        raise UsageError(_yaml_message(path, text, err)) from None


def _yaml_message(path: str, text: str, err: Any) -> str:
    mark = err.problem_mark or err.context_mark
    lines = text.splitlines()
    line, col = (mark.line, mark.column) if mark is not None else (0, 0)
    src = lines[line] if line < len(lines) else ""
    tab_col = src.find("\t")
    problem = (err.problem or "").strip()
    is_tab = "\\t" in problem or "tab" in problem or (0 <= tab_col <= col) or (col < len(src) and src[col] == "\t")
    if is_tab and tab_col >= 0:
        col = tab_col
    where = f"{path}, line {line + 1}, column {col + 1}"
    shown = src.replace("\t", "<TAB>")
    pointer = " " * len(src[:col].replace("\t", "<TAB>")) + "^"
    if is_tab:
        return (f"YAML error in {where}: a tab character; YAML indents with spaces only.\n"
                f"  {shown}\n  {pointer}\n"
                f"Replace the tab(s) in {path} with spaces (e.g. `expand -t 2`), keeping the indentation of the keys.")
    context = f" ({err.context.strip()})" if err.context else ""
    return (f"YAML error in {where}: {problem or 'invalid syntax'}{context}.\n"
            f"  {shown}\n  {pointer}\n"
            f"Fix the YAML syntax of {path} at line {line + 1} and rerun.")


def precheck(argv: Sequence[str]) -> None:
    """Everything this launcher can refuse without importing Lightning; raises :class:`UsageError`."""
    for value in config_files(argv):
        if os.path.isfile(value):
            if not value.lower().endswith(".json"):  # JSON allows what YAML refuses (tabs): jsonargparse judges it
                check_yaml_file(value)
        elif os.path.isdir(value):
            raise UsageError(f"--config {value} is a folder; it takes a YAML file (e.g. configs/quickstart.yaml).")
        elif _looks_like_a_path(value):
            raise UsageError(f"--config file not found: {value} (from {os.getcwd()}).\n"
                             "Check the path; the recipes are in configs/, the callback stacks in callbacks/.")


# ---------------------------------------------------------------------------------------------- config errors
_GENERIC = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value|Expected a <|"
    r"Import path \S+ does not implement protocol|Not a valid subclass|Problem with given class_path|"
    r"Parser key |Validation failed|Type <class|Key \S+ is required)"
)


def _leaf_messages(text: str) -> list[str]:
    """The innermost messages of a jsonargparse report: its nested ``- item`` lines and ``key:`` blocks, without
    jsonargparse's own framing lines (``Does not validate against ...``, ``Given value ...``)."""
    leaves = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("- "):
            line = line[2:].strip()
        if not line or _GENERIC.match(line) or line.endswith(":") and not line.startswith(("module ", "No module")):
            continue
        leaves.append(line)
    return leaves


def _exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return seen


def _raised_in_project(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by streamr1's own code (its innermost frame is in the package, not this launcher)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    here = os.path.dirname(os.path.abspath(__file__))
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return filename.startswith(here + os.sep) and filename != os.path.abspath(__file__)


def _class_path_hint(message: str) -> str | None:
    """``did you mean ...`` for ``module 'a.b' has no attribute 'Name'`` (a misspelled class path)."""
    m = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", message)
    if m is None:
        return None
    import difflib
    import importlib

    try:
        module = importlib.import_module(m.group(1))
    except Exception:  # noqa: BLE001 - a hint only
        return None
    close = difflib.get_close_matches(m.group(2), [n for n in dir(module) if not n.startswith("_")], n=1)
    return f"did you mean class_path: {m.group(1)}.{close[0]}?" if close else None


def summarize_config_error(message: str, exc: BaseException | None = None,
                           argv: Sequence[str] | None = None) -> str:
    """A report that starts with the root cause of a configuration error and ends with the hint for more.

    Args:
        message: jsonargparse's message (the text after ``error:``, or ``str`` of the raised exception).
        exc: the raised exception, when there is one: a message of streamr1's own code in its chain comes first.
        argv: the command line (for the hint on the last line; default ``sys.argv[1:]``).
    """
    cause, details = None, []
    if exc is not None:
        for link in reversed(_exception_chain(exc)):
            if _raised_in_project(link) and str(link).strip():
                cause, *details = str(link).strip().splitlines()  # the project's message, all of it
                break
    leaves = _leaf_messages(message)
    if cause is None and leaves:
        cause = leaves[0]
    if cause is None:
        cause = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    keys = re.findall(r'Parser key "([^"]+)"', message)
    class_paths = re.findall(r"class_path '([\w.]+)'", message)
    first = cause
    if class_paths and cause in leaves and ("has no attribute" in cause or "No module named" in cause):
        where = f"{keys[-1]}: " if keys else ""
        first = f"{where}cannot import class_path '{class_paths[-1]}': {cause}"
    elif keys and keys[-1] not in cause:
        first = f"{keys[-1]}: {cause}"
    lines = [f"streamr1: error: {first}", *(f"  {d}" for d in details)]
    hint = _class_path_hint(cause)
    if hint:
        lines.append(f"  {hint}")
    others = [leaf for leaf in leaves if leaf != cause and not cause.startswith(leaf)]
    if others:
        lines.append("  also: " + " | ".join(others[:3]))
    args = " ".join(sys.argv[1:] if argv is None else argv) or "..."
    lines.append(f"(the full report: {DEBUG_ENV}=1 streamr1 {args})")
    return "\n".join(lines)


class ConfigError(Exception):
    """jsonargparse refused the command line or a config file (what its ``error()`` would have printed)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.message, self.cause = message, cause


@contextlib.contextmanager
def _errors_raise() -> Iterator[None]:
    """Within the block, jsonargparse's ``parser.error`` raises :class:`ConfigError` instead of printing the usage
    and exiting, so that the launcher can print the root cause first; the original is restored after the block."""
    import jsonargparse

    original = jsonargparse.ArgumentParser.error

    def error(self: Any, message: str, ex: Exception | None = None) -> NoReturn:
        if not getattr(self, "exit_on_error", True):
            original(self, message, ex)
        raise ConfigError(message, ex)

    jsonargparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        jsonargparse.ArgumentParser.error = original  # type: ignore[method-assign]


def _built_from_config(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while jsonargparse built the config's objects (not while training)."""
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}jsonargparse{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


# ---------------------------------------------------------------------------------------------- SIGINT
class _Interrupts:
    seen = False


def _on_sigint(signum: int, frame: Any) -> None:
    _Interrupts.seen = True
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- entry point
def _fail(message: str, status: int) -> int:
    sys.stderr.write(message.rstrip("\n") + "\n")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``streamr1`` console script; returns the exit status."""
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if not argv:
        return _fail(_help_text(), EXIT_USAGE)
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(_help_text())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"streamr1 {version()}")
        return 0
    first_positional = next((a for a in argv if not a.startswith("-")), None)
    if not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=1)
        return _fail(f"streamr1: error: unknown subcommand {argv[0]!r}"
                     + (f"; did you mean {close[0]!r}?" if close else "")
                     + f"\nThe subcommands: {', '.join(SUBCOMMANDS)} (streamr1 --help).", EXIT_USAGE)
    if first_positional is None:
        return _fail(f"streamr1: error: no subcommand: streamr1 {{{','.join(SUBCOMMANDS)}}} ... (streamr1 --help).",
                     EXIT_USAGE)
    try:
        precheck(argv)
    except UsageError as err:
        return _fail(f"streamr1: error: {err}", EXIT_USAGE)

    previous = signal.signal(signal.SIGINT, _on_sigint) if _is_main_thread() else None
    try:
        from streamr1 import cli

        with contextlib.nullcontext() if debug else _errors_raise():
            cli.main(None if from_sys_argv else argv)  # None: LightningCLI reads sys.argv itself (no warning)
        return 0
    except ConfigError as err:
        return _fail(summarize_config_error(err.message, err.cause, argv), EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("streamr1: interrupted (SIGINT)", EXIT_SIGINT)
    except SystemExit as exit_:
        if _Interrupts.seen and exit_.code not in (0, None):  # Lightning's graceful shutdown ends with sys.exit(1)
            return _fail("streamr1: interrupted (SIGINT); shut down cleanly", EXIT_SIGINT)
        raise
    except Exception as exc:
        if debug or not _built_from_config(exc):
            raise
        return _fail(summarize_config_error(str(exc), exc, argv), 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run() -> NoReturn:  # pragma: no cover - the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
