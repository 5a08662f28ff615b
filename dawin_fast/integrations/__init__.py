"""Plug-ins for other front-ends (model-merging frameworks) that use dawin_fast as their
backend. Each plug-in is optional: it imports its framework only when used.

May import: ``dawin_fast.ops``, ``algorithm``, ``nn``, ``pipeline`` (not ``app`` or
``bench``).
"""
