class BuildError(RuntimeError):
    """A build that cannot go on; the message says why and what to do about it."""
