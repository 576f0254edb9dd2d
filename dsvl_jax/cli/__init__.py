"""One module per command: flags, checks, one library call, printing. command.py holds what they share
(--help, the error convention: usage/config errors exit 2, runtime failures exit 1, one line each)."""
