"""``python -m gateway`` serves the gateway with ``GATEWAY_WORKERS`` uvicorn worker processes.

With several workers, Prometheus samples must be shared through files: the entry point points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory (unless set) *before* prometheus_client is
imported, so every worker writes there and ``/metrics`` on any worker shows the sum. A directory that
is set (the chart sets one, in its /tmp emptyDir) is cleared of the previous run's files first
(:func:`svckit.metricfiles.start_run`): a restarted container would otherwise sum them into its own.
"""

from svckit.collector import collect_rarely

collect_rarely()  # before the service's imports (svckit.collector)

import os
import sys
import tempfile

from svckit.metricfiles import start_run

if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # the chart names one (in its /tmp emptyDir, which outlives a container): the previous run's
    # files go before this run writes any, or they would be summed into its own
    if sharing := start_run(directory):
        print(
            f"PROMETHEUS_MULTIPROC_DIR {directory} holds metrics files of running processes {sharing}: "
            "the previous run's files are kept and summed in; give each gateway its own directory",
            file=sys.stderr,
            flush=True,
        )
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")

from svckit.appimport import importing_application
from svckit.cli import run_cli

# The application's own imports (all of it, for the check below): one line and exit 1 if they raise or
# hang (svckit.appimport), not a traceback, nor a silent wait for the startup probe's kill.
with importing_application("gateway"):
    from .app import check_configuration
    from .serving import GatewayHttpProtocol
    from .settings import GatewaySettings

# Refuse a bad route table or issuers file here, once, before uvicorn forks workers that would die on it.
check_configuration()

raise SystemExit(
    run_cli(
        name="gateway",
        settings_cls=GatewaySettings,
        app_factory="gateway.app:create_app",
        workers=lambda settings: settings.gateway_workers,
        http_protocol=GatewayHttpProtocol,
        # each worker's upstream pools, at their size (svckit.fdlimit: the open-file limit at start)
        open_files=lambda settings: settings.upstream_pool_size * len(settings.upstreams),
        # a connection streaming an SPA file holds the file open too (Starlette's FileResponse, for as
        # long as its client takes to read it)
        files_per_connection=2,
    )
)
