"""``ntq bench``: the benchmark, its load generator, hook receiver and ceilings. Tooling,
kept out of the core's way: nothing in ntq imports it but the command line."""
