"""The ``ntq`` command: its sub-commands, ``ntq serve`` and the process entry points."""
