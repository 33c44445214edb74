"""Exit codes of the contract, and the mapping from errors to them."""

from __future__ import annotations

from replicad.connectors.errors import AuthRefused, ConnectorError, RemoteUnreachable
from replicad.daemon.config import ConfigError
from replicad.store import ReplicaBusy, ReplicaRefused, SourceError
from replicad.store.operate import OperatorError
from replicad.store.readonly import ReplicaUnreadable

OK = 0
FAILURE = 1
USAGE = 2
AUTH = 3
UNREACHABLE = 4
# The work was done, but some records were rejected or quarantined (status says which).
PARTIAL = 5


def exit_code(error: BaseException) -> int:
    """The contract's exit code for an error that ended a command."""
    if isinstance(
        error, ConfigError | ReplicaBusy | ReplicaRefused | OperatorError | ReplicaUnreadable
    ):
        return USAGE
    if isinstance(error, AuthRefused):
        return AUTH
    if isinstance(error, RemoteUnreachable):
        return UNREACHABLE
    return FAILURE


def expected(error: BaseException) -> bool:
    """Whether an error is a known failure mode (its message alone says enough)."""
    return isinstance(
        error,
        ConnectorError
        | ConfigError
        | ReplicaBusy
        | ReplicaRefused
        | OperatorError
        | SourceError
        | ReplicaUnreadable,
    )


def unwrap(error: BaseException) -> BaseException:
    """The one real error inside (nested) task-group exception groups."""
    while isinstance(error, BaseExceptionGroup):
        inner = [e for e in error.exceptions if not isinstance(e, KeyboardInterrupt)]
        error = (inner or list(error.exceptions))[0]
    return error
