"""The processes of a multi-worker service (``svckit.server.Supervisor``) as tests find them.

The supervisor's workers are forked by multiprocessing's fork server (``svckit.server.START_METHOD``),
a child of the supervisor: they are the fork server's children, the supervisor's grandchildren. The
supervisor's other child is multiprocessing's resource tracker.
"""

from __future__ import annotations

import psutil
from svckit.collector import FORK_SERVER  # a fork server's command line, and so each of its workers'


def fork_servers(supervisor: int) -> list[psutil.Process]:
    """The supervisor's fork server (a list: none before its first worker starts, or once gone)."""
    found: list[psutil.Process] = []
    try:
        children = psutil.Process(supervisor).children()
    except psutil.Error:
        return found
    for child in children:
        try:
            if FORK_SERVER in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not reaped yet
            pass
    return found


def worker_pids(supervisor: int) -> set[int]:
    """The pids of the supervisor's live workers: its fork server's children, zombies left out."""
    pids = set()
    for server in fork_servers(supervisor):
        try:
            children = server.children()
        except psutil.Error:
            continue
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
            except psutil.Error:
                pass
    return pids


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (the supervisor, its fork server, its workers, its resource
    tracker): what a container holds."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return [pid]
