"""The Scheduler seam: how a staged job script becomes a running job, and how it is watched —
the protocol (`base`), Slurm through a Shell (`slurm`), the embedded scheduler on this machine
(`local`, with the #SBATCH header it reads in `header`), and the one that a profile names
(`factory`)."""
