"""`hpcjob setup-env`: the profile's venv built with its modules, verified and fingerprinted —
the edge that runs it on the login node or as a job (`setup`) and the user's words for its
results (`report`). The script itself and its output's parsing are hpcjob/envscript.py."""
