"""User-facing errors: the CLI prints them as one line and exits 2, without a traceback."""


class ForgetuneError(Exception):
    """Bad input or state the user can fix; the message says where and what to do."""
