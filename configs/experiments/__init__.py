"""Resolution-generalization experiments at small scale: shared settings in `common`,
one file per run; `python -m benchmarks.resolution_generalization` trains them all."""
