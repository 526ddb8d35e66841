"""The one exception type for mistakes a user can fix (bad paths, options, files)."""


class UsageError(ValueError):
    """A user error: the message names the problem and the fix. The CLI prints it and exits 2."""
