"""Launchers: `local` runs the trainer as several CPU processes on this
machine; launch/ holds the TPU pod and SLURM scripts."""
