"""The command line: one file per command, each with its argparse section and handler
(``main.py`` holds the table of commands)."""
