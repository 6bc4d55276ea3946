"""Sub-commands of the ``dac-search`` CLI: each module has ``add_parser(subparsers)`` and ``run(args)``."""
