"""The one exception a stage raises for a mistake the user can fix, and its exit status."""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (a path, a flag); reported as one line, exit status 2."""
