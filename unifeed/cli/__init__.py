"""The ``unifeed`` command line: argument parsing, configuration sources, logging setup
and printing. Nothing below it knows about argparse.

May import every other layer.
"""
