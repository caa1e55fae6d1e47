"""The run ledger: a SQLite record of every run — its states, attempts, metrics, facts and
artifacts — with its schema (`schema`), its value types (`records`), every SQL statement hpcjob
runs (`store`) and the file's own care: backup and check (`tools`)."""
