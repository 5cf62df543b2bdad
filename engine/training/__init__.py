"""The training library `engine train` and `engine eval` build on: config, inputs, the step, checkpoints, runs.

Data flows one way: the job (engine/train.py) builds these objects from its config once and hands them
down; nothing here imports a job.
"""
