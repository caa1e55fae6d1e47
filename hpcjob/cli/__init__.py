"""The command line, one module a command group, each registering on the one app: the root (the
app, global options, the error boundary), `submit` (submit, render, rerun, resubmit), `runs`
(status, runs, show, logs, wait, cancel), `results` (compare, plot, fetch, sweep), `cluster`
(partitions, connect, setup-env), `account` (budget), `admin` (config, ledger), `project` (init:
your own project's hpcjob.toml); `options` and `session` shared by them; `output` the one sink
everything prints through; `fastpath` the start-up savings.
"""

from hpcjob.cli import account, admin, cluster, project, results, runs, submit
from hpcjob.cli.root import app, main

__all__ = ["account", "admin", "app", "cluster", "main", "project", "results", "runs", "submit"]
