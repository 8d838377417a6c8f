"""The one exception type for problems a user can fix (bad recipe, bad path, missing GPU)."""


class KitError(Exception):
    """A user-facing problem. The message says what to change; the CLI prints it and exits 2.

    Several problems can be reported at once: each line of the message is one problem.
    """
