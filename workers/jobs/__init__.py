"""Backends whose model runs behind an HTTP job API: the farm creates a job (a prediction), keeps
its id in the action's ``JobRecord``, waits on it and fetches what it returns.

- ``workers.jobs.replicate``: kind ``replicate``, Replicate's predictions API (``/v1/predictions``,
  ``/v1/files``), for lip-sync models.
"""
