"""Whom jobs run as: the worker's own user, or the one --run-as names.

A worker started as root can drop each job to an unprivileged user; it
refuses to run jobs as root unless --allow-root-jobs says that is meant, so
a message written by hand to the topic cannot run a command as root by
default. Only the lookups (pwd, grp) and the checks live here; the switch
itself happens in kcron.executor, in the job's child process.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd

from kcron.errors import ConfigError
from kcron.executor import Credentials
from kcron.log import fields
from kcron.settings import Settings

log = logging.getLogger("kcron.worker")


def resolve(user: str) -> Credentials:
    """``user`` (a name or a numeric uid) with its primary and supplementary groups."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise ConfigError(f"--run-as: no such user '{user}'") from None
    groups = sorted(
        {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    )
    return Credentials(
        user=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(groups),
        home=entry.pw_dir,
    )


def job_credentials(settings: Settings, euid: int) -> Credentials | None:
    """The user jobs switch to, None to run them as the worker; raises ConfigError
    for a setup that would run jobs as root unasked, or that cannot switch."""
    if settings.run_as is None:
        if euid == 0 and not settings.allow_root_jobs:
            raise ConfigError(
                "refusing to run jobs as root: give --run-as USER (KCRON_RUN_AS) to run "
                "them as an unprivileged user, or --allow-root-jobs "
                "(KCRON_ALLOW_ROOT_JOBS=true) if root is meant"
            )
        return None
    creds = resolve(settings.run_as)
    if creds.uid == 0 and not settings.allow_root_jobs:
        raise ConfigError(
            f"--run-as {settings.run_as} is root: add --allow-root-jobs if root is meant"
        )
    if euid == 0:
        return creds
    if creds.uid == euid:
        return None  # already that user: nothing to switch
    raise ConfigError(
        f"--run-as {settings.run_as}: the worker runs as uid {euid}, not root, and cannot "
        "switch to another user; start it as root or as that user"
    )


def log_job_user(creds: Credentials | None, euid: int) -> None:
    """One line at start saying whom jobs run as, loud when that is root."""
    if creds is not None:
        log.info(
            "jobs run as another user",
            extra=fields(
                run_as=creds.user,
                uid=creds.uid,
                gid=creds.gid,
                groups=",".join(map(str, creds.groups)),
            ),
        )
    elif euid == 0:
        log.warning(
            "jobs run as root (--allow-root-jobs): any writer to the topic can run commands "
            "as root; prefer --run-as USER",
            extra=fields(uid=0),
        )


def worker_credentials(settings: Settings) -> Credentials | None:
    """For `kcron consume`: check at start, log whom jobs run as."""
    euid = os.geteuid()
    creds = job_credentials(settings, euid)
    log_job_user(creds, euid)
    return creds
