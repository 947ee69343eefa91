"""The `nextchar` command: `main` parses, one module per command family runs.

User mistakes raise UserError and are printed once, in `main`, as one line with exit status 2.
"""
