"""Tiling and group-packing arithmetic shared by the swap-AB kernels (Gluon and its twin).

Swap-AB computes Y^T = W_c X^T: the weight rows (N) are the MMA's M dimension and the
x rows (T) its N dimension. A program owns one (row tile, N tile) pair. A row tile is
``SLOTS`` slots of ``SLOT_T`` rows; every slot holds rows of exactly one group, so a
slot starts a new group on a ``SLOT_T``-row boundary of the tile (``SLOT_T`` is a
multiple of 8, the granularity of wgmma's N). Several groups therefore share one
program, and each program reads its M weight tiles once for all of them.

The schedule is data (vLLM's align step): ``slot_schedule`` builds, on the device and
without a host sync, each slot's group id and first row; the kernels are pure consumers
of it through the ``@triton.jit`` helpers below, which both the Gluon kernel and the
plain-Triton twin call, so the two cannot disagree on which rows a slot covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

#: Shared memory one H100 block may use (bytes): cudaDevAttrMaxSharedMemoryPerBlockOptin.
SMEM_LIMIT = 232448


@dataclass(frozen=True)
class SlotSchedule:
    """Per-slot group ids and first rows for ``num_tiles * slots`` slots.

    ``slot_group[j] = -1`` marks a spare slot (the arrays have an upper-bound length so no
    host sync is needed); its ``slot_row`` is the row count, so a TMA box there lies
    wholly out of bounds (zero-filled, no memory traffic) and a masked store writes
    nothing. ``slot_group``/``slot_row`` are int32 (TMA coordinates are 32-bit).
    """

    slot_group: torch.Tensor
    slot_row: torch.Tensor
    num_tiles: int


def num_slots_upper(num_rows: int, num_groups: int, slot_t: int) -> int:
    """Upper bound on sum_g ceil(len_g / slot_t): floor(T / slot_t) + non-empty groups, <= T."""
    return min(num_rows, num_rows // slot_t + min(num_groups, num_rows))


def slot_schedule(offsets: torch.Tensor, num_rows: int, slot_t: int, slots: int) -> SlotSchedule:
    """Cut every group into ``ceil(len / slot_t)`` slots, pack ``slots`` slots per tile.

    Slots are numbered in group order, so a tile holds the tail of one group and the
    head of the next: consecutive groups share a program. Empty groups get no slot.
    """
    num_groups = offsets.numel() - 1
    device = offsets.device
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    per_group = (lengths + (slot_t - 1)) // slot_t
    ends = torch.cumsum(per_group, 0)
    upper = num_slots_upper(num_rows, num_groups, slot_t)
    num_tiles = triton.cdiv(upper, slots)
    slot_ids = torch.arange(num_tiles * slots, device=device, dtype=torch.int64)
    group = torch.searchsorted(ends, slot_ids, right=True)
    valid = group < num_groups
    group = group.clamp_(max=num_groups - 1)
    first_slot = ends[group] - per_group[group]
    first_row = offsets[group].to(torch.int64) + (slot_ids - first_slot) * slot_t
    slot_group = torch.where(valid, group, -1).to(torch.int32)
    slot_row = torch.where(valid, first_row, num_rows).to(torch.int32)
    return SlotSchedule(slot_group, slot_row, num_tiles)


def single_group_tiles(num_rows: int, slot_t: int, slots: int) -> int:
    """Row tiles of a one-group call: slot j of the call starts at row j * slot_t."""
    return triton.cdiv(triton.cdiv(num_rows, slot_t), slots)


def call_schedule(offsets: torch.Tensor, num_rows: int, num_groups: int, slot_t: int,
                  slots: int) -> SlotSchedule:
    """The slot schedule a launch passes: a one-group call (SINGLE_GROUP) needs no tables,
    so offsets stand in for them, unread."""
    if num_groups == 1:
        return SlotSchedule(offsets, offsets, single_group_tiles(num_rows, slot_t, slots))
    return slot_schedule(offsets, num_rows, slot_t, slots)


def padded_rows(lengths: list[int], slot_t: int) -> int:
    """Rows the MMA computes for groups of these lengths (each padded to ``slot_t``)."""
    return sum(triton.cdiv(n, slot_t) * slot_t for n in lengths)


# ------------------------------------------------------------------ in-kernel helpers


@triton.jit
def slot_span(slot_group_ptr, slot_row_ptr, offsets_ptr, tile, s,
              SLOTS: tl.constexpr, SLOT_T: tl.constexpr, SINGLE_GROUP: tl.constexpr):
    """(group, first row, end row) of slot ``s`` of row tile ``tile``.

    The group is -1 for a spare slot (end row 0: nothing to store). Rows from the first
    row to ``min(first + SLOT_T, end)`` are the slot's own; any further rows of its box
    belong to the next group or lie past T and are never stored.
    """
    slot = tile * SLOTS + s
    if SINGLE_GROUP:
        group = slot * 0
        first = slot * SLOT_T
        end = tl.load(offsets_ptr + 1).to(tl.int32)
    else:
        group = tl.load(slot_group_ptr + slot)
        first = tl.load(slot_row_ptr + slot)
        end = tl.load(offsets_ptr + tl.maximum(group, 0) + 1).to(tl.int32)
        end = tl.where(group >= 0, end, 0)
    return group, first, end
