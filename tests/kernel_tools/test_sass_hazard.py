"""The wgmma register-A hazard check (``kernel_tools/sass_hazard.py``) on hand-written SASS and on
a real compiled loop (rowscaled, Triton 3.6, sm_90a: triton-lang/triton#9433).

Each snippet is ``cuobjdump -sass`` text: ``/*addr*/ instruction ;``. A defect must be
found; the same code with a wait that retires the reader before the write must pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dawin_fast.kernel_tools.sass_hazard import (
    parse_functions,
    register_a_hazards,
    written_registers,
)

DATA = Path(__file__).parent / "data"


def sass(*lines: str) -> str:
    """A function of the given instructions at addresses 0x0, 0x10, ..."""
    body = "\n".join(f"        /*{16 * i:04x}*/                   {line} ;"
                     for i, line in enumerate(lines))
    return "\t\tFunction : k\n" + body + "\n"


# A k-loop: combine into R88..R91, issue a register-A wgmma, keep one group in flight
# (depth 1), branch back. The next iteration rewrites R88 while that wgmma is pending.
LOOP_DEFECT = sass(
    "MOV R0, RZ",                                           # 0x00
    "FMUL R88, R10, R11",                                   # 0x10 loop head
    "F2FP.BF16.F32.PACK_AB R89, R12, R13",                  # 0x20
    "WARPGROUP.ARRIVE",                                     # 0x30
    "HGMMA.64x128x16.F32.BF16 R24, R88, gdesc[UR4], R24, gsb0",  # 0x40
    "WARPGROUP.DEPBAR.LE gsb0, 0x1",                        # 0x50
    "@P0 BRA 0x10",                                         # 0x60
    "WARPGROUP.DEPBAR.LE gsb0, 0x0",                        # 0x70
    "EXIT",
)


def test_a_loop_rewriting_a_pending_a_operand_is_found():
    found = register_a_hazards(LOOP_DEFECT)
    assert found and all("HGMMA group at /*0040*/" in f for f in found)
    assert {f.split("writes ")[1].split(",")[0] for f in found} == {"R88", "R89"}


def test_a_wait_that_retires_the_reader_before_the_rewrite_passes():
    fixed = LOOP_DEFECT.replace("WARPGROUP.DEPBAR.LE gsb0, 0x1", "WARPGROUP.DEPBAR.LE gsb0, 0x0")
    assert register_a_hazards(fixed) == []


def test_two_a_register_sets_alternated_with_depth_one_pass():
    """Iteration body issues A=R88 then A=R92, each write preceded by a wait that leaves only
    the other set's group pending: the double-buffer fix."""
    code = sass(
        "MOV R0, RZ",
        "FMUL R88, R10, R11",                                    # 0x10 head: set 0
        "WARPGROUP.ARRIVE",
        "HGMMA.64x128x16.F32.BF16 R24, R88, gdesc[UR4], R24, gsb0",  # 0x30
        "WARPGROUP.DEPBAR.LE gsb0, 0x1",                         # retires set 1's group
        "FMUL R92, R10, R11",                                    # set 1
        "WARPGROUP.ARRIVE",
        "HGMMA.64x128x16.F32.BF16 R24, R92, gdesc[UR4], R24, gsb0",  # 0x70
        "WARPGROUP.DEPBAR.LE gsb0, 0x1",                         # retires set 0's group
        "@P0 BRA 0x10",
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",
        "EXIT",
    )
    assert register_a_hazards(code) == []
    # Depth 2 keeps set 0's group pending into the next iteration: a defect.
    assert register_a_hazards(code.replace("gsb0, 0x1", "gsb0, 0x2"))


def test_the_next_slot_writing_the_previous_slots_a_right_after_its_issue_is_found():
    """Straight-line code (no loop): the multi-slot defect of the Gluon kernel."""
    code = sass(
        "LDSM.16.M88.4 R88, [R3]",
        "WARPGROUP.ARRIVE",
        "HGMMA.64x64x16.F32.BF16 R24, R88, gdesc[UR4], R24",        # slot 0, group open
        "LDSM.16.M88.4 R88, [R5]",                                  # slot 1's A: same regs
        "HGMMA.64x64x16.F32.BF16 R56, R88, gdesc[UR8], R56, gsb0",
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",
        "EXIT",
    )
    found = register_a_hazards(code)
    assert len(found) == 4 and "/*0030*/ LDSM" in found[0]  # R88..R91, all four


def test_a_predicated_wait_or_a_branch_around_it_does_not_count_as_a_wait():
    base = ("HGMMA.64x128x16.F32.BF16 R24, R88, gdesc[UR4], R24, gsb0",
            "WARPGROUP.DEPBAR.LE gsb0, 0x0", "FMUL R88, R1, R2", "EXIT")
    assert register_a_hazards(sass(*base)) == []
    guarded = sass(base[0], "@P1 " + base[1], *base[2:])
    assert register_a_hazards(guarded)
    skipped = sass(base[0], "@P1 BRA 0x30", *base[1:])
    assert register_a_hazards(skipped)


def test_shared_a_operands_and_other_writes_are_not_hazards():
    code = sass(
        "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24, gsb0",  # A from shared memory
        "MOV R88, RZ",
        "HGMMA.64x128x16.F32.BF16 R24, R88, gdesc[UR4], R24, gsb0",
        "STS [R88], R90",                # reads only
        "ISETP.GE.AND P0, PT, R89, R2, PT",  # writes a predicate
        "MOV R92, RZ",                   # next to, not in, R88..R91
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",
        "EXIT",
    )
    assert register_a_hazards(code) == []


@pytest.mark.parametrize("line,regs", [
    ("LDSM.16.M88.4 R88, [R3]", {88, 89, 90, 91}), ("LDS.128 R4, [R2]", {4, 5, 6, 7}),
    ("IMAD.WIDE.U32 R2, R3, 0x4, R4", {2, 3}), ("SHF.R.U64 R2, R3, 0x1, R4", {2}),
    ("SHFL.IDX PT, R5, R4, R3, 0x1f", {5}), ("STG.E desc[UR4][R2.64], R5", set()),
    ("ISETP.GE.AND P0, PT, R2, R3, PT", set()), ("F2FP.BF16.F32.PACK_AB R91, R94, R97", {91}),
])
def test_destination_registers(line, regs):
    (instr,) = parse_functions(sass(line))["k"]
    assert written_registers(instr) == frozenset(regs)


def test_an_indirect_branch_is_reported_with_wgmma_pending_and_followed_without():
    code = sass("HGMMA.64x128x16.F32.BF16 R24, R88, gdesc[UR4], R24, gsb0", "BRX R2 -0x10",
                "EXIT")
    assert any("indirect branch" in f for f in register_a_hazards(code))
    # Nothing pending at the jump (Triton 3.6's warp_specialize dispatch): every target is
    # analysed, so a defect behind it is still found, and a clean target passes.
    tail = ("HGMMA.64x128x16.F32.BF16 R24, R88, gdesc[UR4], R24, gsb0",
            "WARPGROUP.DEPBAR.LE gsb0, 0x1", "FMUL R88, R1, R2", "EXIT")
    assert register_a_hazards(sass("BRX R2 -0x10", "EXIT", *tail))
    assert register_a_hazards(sass("BRX R2 -0x10", "EXIT", *tail[:1], "WARPGROUP.DEPBAR.LE "
                                   "gsb0, 0x0", *tail[2:])) == []


def test_the_real_rowscaled_loop_of_triton_36_is_found():
    """The compiled main loop of rowscaled (sm_90a, Triton 3.6.0): DEPBAR.LE gsb0, 0x3 keeps
    three groups pending and the next iteration's FMUL/F2FP rewrite R100..R103, the A of the
    HGMMA at 0x20e0 (triton-lang/triton#9433)."""
    found = register_a_hazards((DATA / "rowscaled_loop_sm90a_triton36.sass").read_text())
    assert found
    assert any("FMUL R100" in f and "/*20e0*/" in f for f in found)


def test_the_real_gluon_loop_before_the_fix_is_found():
    """The Gluon swap-AB main loop as it was (wait depth 1, Triton 3.8, sm_90a): the next
    k-step's ldmatrix writes R164..R167, the A of the k-step still in flight."""
    text = (DATA / "swapab_gluon_loop_before_fix_sm90a_triton38.sass").read_text()
    found = register_a_hazards(text)
    assert any("LDSM.16.M88.4 R164" in f and "/*2a80*/" in f for f in found)
