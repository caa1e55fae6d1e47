"""hpcjob: run ML jobs on Slurm (Snellius first) as easily as on a laptop, and record every run."""

__version__ = "0.1.0"
