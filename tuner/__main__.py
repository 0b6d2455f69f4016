"""`python -m tuner` runs the CLI."""

from tuner.cli import app

app(prog_name="tuner")
