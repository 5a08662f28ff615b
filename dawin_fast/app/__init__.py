"""The application: the ``dawin-fast`` command line (``cli``, its argument types in
``options``, user errors and exit codes in ``errors``, checked atomic writes in
``outputs``), the demo, evaluation on user checkpoints and data (``eval_command``:
validate, then run; ``evaluate``; ``checkpoints`` and ``datasets``: inspect and load),
plots and the self-check.

The only folder that reads user files, writes reports and prints.

May import: anything in ``dawin_fast``. Nothing in the package imports it (the entry
point ``dawin-fast`` and ``python -m dawin_fast`` do).
"""
