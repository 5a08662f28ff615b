"""The wgmma register-A hazard, found in SASS (pure text analysis; no I/O).

A Hopper ``wgmma.mma_async`` whose A operand lives in registers reads those registers
asynchronously: PTX leaves the result undefined if anything writes them before a
``wgmma.wait_group`` retires that wgmma (triton-lang/triton#9433, DeepGEMM #449). In SASS a
wgmma is ``HGMMA``; its register A is four registers from the second operand (``R88`` is
R88..R91); the last HGMMA of a commit group carries ``gsb0``; ``WARPGROUP.DEPBAR.LE gsb0,
N`` waits until at most N committed groups are pending (``WARPGROUP.ARRIVE`` is the fence
and retires nothing).

``register_a_hazards(sass)`` follows every path of every function's control-flow graph to
a fixpoint (so every loop, over any number of iterations, and straight-line code): the
state is the ordered list of pending groups with their A registers (HGMMAs of a group not
yet committed count as pending). An instruction whose destination registers meet a pending
group's A registers is a finding. Conservative where it matters: a predicated write is a
write, a predicated wait may not happen, a predicated branch may go either way.

Input: ``cuobjdump -sass`` text (addresses as ``/*1e30*/``, branch targets as hex). Limits,
stated: ``CALL`` targets are followed but ``RET`` does not return to the call site. An
indirect branch (``BRX``/``JMX``: Triton 3.6 dispatches ``warp_specialize`` partitions
with one) with nothing pending may go to any instruction (a superset of its real targets);
with wgmma pending it is reported, as is more than ``MAX_PENDING`` pending groups (not
analysable, so not proven safe). An HGMMA's own accumulator writes are not counted (they
are the in-flight result, by design).
"""

from __future__ import annotations

import dataclasses
import re

MAX_PENDING = 8
_MAX_STATES = 256  # per instruction; more means a pathological CFG: reported, not dropped
_LINE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s*(.*?)\s*;")
_GUARD = re.compile(r"^@(!?)(U?P\w+)\s+")
_REG = re.compile(r"^R(\d+)$")


@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int
    text: str
    guard: str | None  # "P0", "!P5", ... (None: always executes)
    opcode: str  # with modifiers, e.g. "HGMMA.64x128x16.F32.BF16"
    operands: tuple[str, ...]


def parse_functions(sass: str) -> dict[str, list[Instr]]:
    """Function name -> its instructions in address order (``cuobjdump -sass`` text)."""
    functions: dict[str, list[Instr]] = {}
    current: list[Instr] = functions.setdefault("", [])
    for line in sass.splitlines():
        name = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if name:
            current = functions.setdefault(name.group(1), [])
            continue
        m = _LINE.match(line)
        if not m or not m.group(2):
            continue
        text = m.group(2)
        guard = None
        g = _GUARD.match(text)
        if g:
            guard = g.group(1) + g.group(2)
            text = text[g.end():]
        opcode, _, rest = text.partition(" ")
        operands = tuple(o.strip() for o in rest.split(",") if o.strip())
        current.append(Instr(int(m.group(1), 16), m.group(2), guard, opcode, operands))
    return {k: v for k, v in functions.items() if v}


def _width(opcode: str) -> int:
    """Registers an instruction's destination spans (from its modifiers)."""
    parts = opcode.split(".")
    if "128" in parts:
        return 4
    if parts[0] == "LDSM":
        return {"4": 4, "2": 2}.get(parts[-1], 1)
    if "64" in parts or "WIDE" in parts or parts[0] == "CS2R" and "32" not in parts:
        return 2
    if parts[0] in ("DADD", "DMUL", "DFMA", "DMNMX") or (parts[0] in ("F2F", "I2F")
                                                        and parts[1:2] == ["F64"]):
        return 2
    if parts[0] == "HMMA":
        return 4 if "F32" in parts else 2
    return 1


def written_registers(instr: Instr) -> frozenset[int]:
    """The general registers (R<n>) an instruction writes; none for HGMMA (see module doc)
    and for stores (their first operand is an address, not a register)."""
    base = instr.opcode.split(".")[0]
    if base == "HGMMA" or not instr.operands:
        return frozenset()
    dest = instr.operands[1] if base == "SHFL" and len(instr.operands) > 1 else instr.operands[0]
    m = _REG.match(dest)
    if not m:
        return frozenset()
    first = int(m.group(1))
    return frozenset(range(first, first + _width(instr.opcode)))


def hgmma_a_registers(instr: Instr) -> frozenset[int]:
    """An HGMMA's register-A operand (four registers), empty when A comes from shared."""
    if len(instr.operands) < 2:
        return frozenset()
    m = _REG.match(instr.operands[1])
    return frozenset(range(int(m.group(1)), int(m.group(1)) + 4)) if m else frozenset()


# A state: (pending committed groups, oldest first; the open group or None); a group is
# (address of its first HGMMA, its A registers).
_Group = tuple[int, frozenset]
_State = tuple[tuple[_Group, ...], "_Group | None"]


def _step(instr: Instr, state: _State) -> list[_State]:
    """The states after ``instr`` (two where a predicated wait may or may not happen)."""
    pending, open_group = state
    base = instr.opcode.split(".")[0]
    if base == "HGMMA":
        regs = hgmma_a_registers(instr)
        addr = open_group[0] if open_group else instr.addr
        group = (addr, (open_group[1] if open_group else frozenset()) | regs)
        if "gsb0" in instr.operands:
            return [((*pending, group), None)]
        return [(pending, group)]
    if instr.opcode.startswith("WARPGROUP.DEPBAR"):
        depth = int(instr.operands[-1], 0)
        waited = (pending[len(pending) - depth:] if depth else (), open_group)
        return [waited] if instr.guard is None else [waited, state]
    return [state]


def _successors(instrs: list[Instr], i: int, index: dict[int, int]) -> list[int] | None:
    """Indices that may run after instruction i; None for an indirect branch."""
    instr = instrs[i]
    base = instr.opcode.split(".")[0]
    fall = [i + 1] if i + 1 < len(instrs) else []
    if base in ("BRX", "JMX"):
        return None
    if base in ("EXIT", "RET"):
        return [] if instr.guard is None else fall
    if base in ("BRA", "JMP", "CALL"):
        target = next((int(o, 16) for o in reversed(instr.operands)
                       if re.fullmatch(r"0x[0-9a-fA-F]+", o)), None)
        out = [index[target]] if target in index else []
        if instr.guard is not None or base == "CALL" or target is None:
            out += fall
        return out
    return fall


def register_a_hazards(sass: str) -> list[str]:
    """Every write to a register of a still-pending wgmma's register-A operand, one line
    each (``[]``: none, or no register-A HGMMA at all). See the module doc."""
    findings: dict[tuple, str] = {}
    for name, instrs in parse_functions(sass).items():
        if not any(hgmma_a_registers(i) for i in instrs if i.opcode.startswith("HGMMA")):
            continue
        index = {ins.addr: k for k, ins in enumerate(instrs)}
        seen: list[set] = [set() for _ in instrs]
        work = [(0, ((), None))]
        while work:
            i, state = work.pop()
            if state in seen[i]:
                continue
            if len(seen[i]) >= _MAX_STATES:
                findings[(name, "states")] = f"{name}: too many wgmma states, not analysed"
                break
            seen[i].add(state)
            instr = instrs[i]
            pending, open_group = state
            written = written_registers(instr)
            for addr, regs in (*pending, *([open_group] if open_group else [])):
                for reg in sorted(written & regs):
                    findings[(name, instr.addr, reg, addr)] = (
                        f"{name}: /*{instr.addr:04x}*/ {instr.text} writes R{reg}, register A "
                        f"of the HGMMA group at /*{addr:04x}*/ still pending")
            succ = _successors(instrs, i, index)
            if succ is None and state != ((), None):
                findings[(name, instr.addr)] = (f"{name}: /*{instr.addr:04x}*/ indirect "
                                                f"branch with wgmma pending, not analysed")
                continue
            if succ is None:  # nothing pending: entering anywhere is a superset of its targets
                succ = range(len(instrs))
            for after in _step(instr, state):
                if len(after[0]) > MAX_PENDING:
                    findings[(name, "deep")] = (f"{name}: more than {MAX_PENDING} wgmma "
                                                f"groups pending, not analysed")
                    continue
                work += [(j, after) for j in succ]
    return list(findings.values())
