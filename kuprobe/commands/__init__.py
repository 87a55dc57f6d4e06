"""The subcommands of ``kuprobe`` beyond ``trace``: each module has ``add_parser(subparsers)``."""
