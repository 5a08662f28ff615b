"""The application: the ``dawin-fast`` command line, the demo, evaluation on user
checkpoints and data, checkpoint loading, plots and the self-check.

The only folder that reads user files, writes reports and prints.

May import: anything in ``dawin_fast``. Nothing in the package imports it (the entry
point ``dawin-fast`` and ``python -m dawin_fast`` do).
"""
