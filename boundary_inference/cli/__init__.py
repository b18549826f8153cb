"""The ``boundary-inference`` command line: one module per command group (``app`` holds the
top-level commands), ``output`` for how things print, ``context`` for settings and services,
``errors`` for the one-line operator errors. The only layer of the package above flows and tasks."""
