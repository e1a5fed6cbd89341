"""The one exception the CLI turns into a one-line message and exit code 2."""


class BnsweepError(Exception):
    """Bad input or a missing resource. The message names the bad value and how to fix it."""
