"""Run layer: recipes, the pipeline over a manifest, the run state beside the store
(``state`` owns ``<name>.run/``), sharding over cluster tasks, SLURM arrays and status.
"""
