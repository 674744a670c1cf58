"""The one exception class of a user's mistake, which the CLI answers with its message alone.

A :class:`UserError` is something the person running a command can fix without reading code: an
unknown method or reward, a reward of another scale, a model folder not built yet, a hub model not
fetched, a bad config value. ``python -m nabla`` catches it once (``nabla.cli.main``) and prints
``error: <message>`` on stderr, no traceback, exit status 1; anything else is a programming error
and keeps its traceback. Its subclasses also derive from the built-in class that code catching them
expects (``ConfigError`` is a ValueError, ``MissingModelsError`` a FileNotFoundError).

This module imports nothing, so that every module can raise it.
"""


class UserError(Exception):
    """A mistake in what was asked (arguments, config, missing models): its message says what to do."""
