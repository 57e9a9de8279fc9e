"""Errors that users see: each says what is wrong and what would be right."""


class WmpoError(Exception):
    """Base class for errors caused by bad input (arguments, files, configs), not by bugs.

    The CLI prints these as one line instead of a traceback.
    """


class UnknownTaskError(WmpoError, ValueError):
    pass


class DatasetError(WmpoError):
    pass


class CheckpointError(WmpoError):
    pass


class ConfigError(WmpoError, ValueError):
    pass
