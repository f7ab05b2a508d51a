"""The one exception type for a user's mistake: the CLI prints it as a single line, no traceback."""


class BoxSupError(Exception):
    """A problem with the user's input (file, config key, value) that they can fix.

    The message names the file or key and the problem, in one line.
    """
