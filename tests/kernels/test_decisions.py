"""The dispatch decides as the stored table says (``decisions.json``, ``decisions.py``).

Every (target, call) of the table: the strategy, config and implementation
``kernel_choice`` reports, and on CUDA targets the measured dispatch's candidates. An
intended change of a decision regenerates the table (``python -m tests.kernels.decisions``
with ``TRITON_INTERPRET=1``) and names the change and its reason in the commit.
"""

from __future__ import annotations

import json

from tests.kernels import decisions


def test_the_table_covers_targets_dtypes_and_groupings():
    stored = json.loads(decisions.TABLE.read_text())
    names = [name for name, _ in decisions.calls()]
    assert len(names) >= 100 and len(set(names)) == len(names)
    assert set(stored) == {f"{t} | {n}" for t in decisions.TARGETS for n in names}


def test_every_decision_is_the_stored_one():
    stored = json.loads(decisions.TABLE.read_text())
    now = decisions.table()
    changed = {key: (stored.get(key), now.get(key)) for key in set(stored) | set(now)
               if stored.get(key) != now.get(key)}
    shown = "\n".join(f"{key}: {old} -> {new}" for key, (old, new) in sorted(changed.items())[:20])
    assert not changed, f"{len(changed)} decisions changed:\n{shown}"
