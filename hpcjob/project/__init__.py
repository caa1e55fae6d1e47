"""The user's own project on this machine: `hpcjob.toml` (or `[tool.hpcjob]` in pyproject.toml),
its config files and `--set` overrides, its batch scripts, and the code snapshot that travels
with a run. Nothing here touches the ledger or the scheduler."""
