"""Operations on runs, one module a step: the invocation's `context`; `prepare` (validate and
render); `submit` (record, stage, hand over — exactly once, with `lock` and `recovery`);
`refresh` (one scheduler query, `harvest` of what ended, `requeue`); `watch` (wait, follow, logs,
cancel); `rerun`, `sweeps`, `fetch`; `login` (setup-env runs whose hpcjob is gone); `origin`
(provenance and the SBU estimate at submit); `rundir` (the run directory's files)."""
