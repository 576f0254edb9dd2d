"""Training: the pure step (step.py), the program (loop.py: `train(cfg, workdir)`), in-run eval,
the TPU fit check (aot_compile.py, aot_report.py), sweeps, plots and the demo. See WORKSPACE.md.

Nothing is re-exported here so that `python -m dsvl_jax.train` answers --help before jax loads.
"""
