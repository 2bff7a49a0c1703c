"""The command line: a thin layer that parses flags, calls library functions and renders results."""
