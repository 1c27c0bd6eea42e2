"""The one exception type for mistakes a user can make (bad recipe, bad file, missing model)."""


class TailorkdError(Exception):
    """A user-facing error. The message names the file, line or key at fault and what to do about it.

    The CLI prints it without a traceback and exits with status 2; everything else is a bug.
    """
