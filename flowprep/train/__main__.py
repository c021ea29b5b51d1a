"""``python -m flowprep.train``: the same as ``flowprep train``."""

import sys

from flowprep.train.train import command, get_args_parser

sys.exit(command(get_args_parser().parse_args()))
