"""The one exception type for mistakes a user can fix (bad names, values, missing data)."""


class HarnessError(Exception):
    """A user-facing error: its message is one sentence saying what is wrong and how to fix it.

    The CLI prints it on one line and exits non-zero, without a traceback.
    """
