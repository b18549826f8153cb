"""``python -m boundary_inference.cli``: the same CLI as the ``boundary-inference`` script."""

from boundary_inference.cli.app import main

main()
