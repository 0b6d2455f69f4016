"""The `tuner` command (and `python -m tuner`). Ctrl-C before the CLI has started, while its
imports load, ends like any other interrupt: one line, exit 1, no traceback; once the command has
ended, the exit hooks of Ray and MLflow run to their end."""

import signal
import sys


def main() -> None:
    try:
        from tuner.cli import app

        app(prog_name="tuner")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the process is ending


if __name__ == "__main__":
    main()
