"""The `privmodel` command.

Start-up stays light (no torch, flwr or scikit-learn at import): each command module imports what it
needs inside its functions. Every failure a user can fix is one line on stderr and exit code 2;
an unexpected failure is one line naming the exception type and place (never its message, which
could carry raw values) and exit code 1, unless PRIVMODEL_DEBUG=1 asks for the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer

from anonymize.errors import InputError
from privmodel.cli import anonymize, audit, budget, demo, federate, keys, report, synth, train

app = typer.Typer(
    name="privmodel",
    help="Privacy-preserving customer modeling: anonymize, train with differential privacy, "
    "federate across partners, and prove it with a signed audit ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Each command module exposes register(app); add new modules to this tuple.
for _module in (demo, synth, anonymize, train, federate, report, audit, keys, budget):
    _module.register(app)


def _fail(message: str, code: int) -> int:
    click.echo(f"error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        result = app(args=argv, standalone_mode=False)
    except InputError as exc:
        return _exit(_fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2))
    except click.exceptions.Abort:
        return _exit(_fail("aborted", 130))
    except click.UsageError as exc:  # a bad option value or a missing argument: one line, exit 2
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        return _exit(_fail(where + " ".join(exc.format_message().split()), 2))
    except click.ClickException as exc:
        return _exit(_fail(" ".join(exc.format_message().split()), exc.exit_code or 2))
    except KeyboardInterrupt:
        return _exit(_fail("interrupted", 130))
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no raw values
        if os.environ.get("PRIVMODEL_DEBUG") == "1":
            traceback.print_exc()
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {os.path.basename(frame.filename)}:{frame.lineno}" if frame else ""
        return _exit(_fail(f"internal error ({type(exc).__name__}{where}); set PRIVMODEL_DEBUG=1 for details", 1))
    return _exit(result if isinstance(result, int) else 0)


def _exit(code: int) -> int:
    sys.exit(code)


if __name__ == "__main__":
    main()
