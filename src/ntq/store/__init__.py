"""Storage: the only package that speaks SQL. Engines and the transaction policy, tables,
every INSERT of a task, every state transition, reads, applications and keys, the
``/metrics`` counters, migrations."""
