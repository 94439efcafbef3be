"""The exception tree. Every error a user can cause or fix is one of these; its message is one
line that says what is wrong and what to do. Only `cli` turns them into output and exit codes.

    LoadgenError
    ├── UsageError          bad profile, flag or target (exit 2)
    │   ├── ProfileError    names file, key, value and the fix
    │   └── TargetError     a target that cannot be parsed or resolved
    ├── PermissionProblem   no root / CAP_NET_RAW, or a namespace operation refused
    ├── SocketProblem       a socket option or send/receive failed in a way the user can act on
    ├── WorkerFailed        a worker process died or reported a fatal error
    └── LabError            the namespace lab could not be built or torn down
"""

from __future__ import annotations


class LoadgenError(Exception):
    """Base of every error loadgen reports to a user."""

    exit_code = 1


class UsageError(LoadgenError):
    exit_code = 2


class ProfileError(UsageError):
    pass


class TargetError(UsageError):
    pass


class PermissionProblem(LoadgenError):
    pass


class SocketProblem(LoadgenError):
    pass


class WorkerFailed(LoadgenError):
    pass


class LabError(LoadgenError):
    pass
