"""The helper-thread team's shared memory: one definition for the code generator and the runtime.

A helper thread runs the module's job loop (``codegen.worker_name``) on a
*control block* of :data:`CTL_WORDS` int64s; a batch shared by the team is
described by a *job block* of :data:`JOB_WORDS` int64s.  ``codegen`` reads and
writes these slots by the names below and ``runtime.compiled`` fills them by
the same names, so the two sides cannot drift apart.
"""

from __future__ import annotations

from enum import IntEnum

CTL_WORDS = 16  # int64s per control block: two cache lines, so helpers share none


class Ctl(IntEnum):
    """Slots of a helper's control block."""

    POSTED = 0  # number of the last job posted; or ASLEEP / EXIT
    DONE = 1  # number of the last job done
    KIND = 2  # stage k (0 <= k < len(Program.stages)), or len(stages): a share of a batch
    ARGS = 3  # first argument: a stage job takes STAGE_ARGS, a batch job BATCH_ARGS


STAGE_ARGS = 8  # input*, output*, weights*, scratch*, n0, nt, r0, r1 (as codegen.stage_name takes them)
STAGE_POINTERS = 4  # of which the first four are pointers
BATCH_ARGS = 2  # job block*, this helper's scratch*

ASLEEP = -2  # Ctl.POSTED: the helper has left its spin loop
EXIT = -1  # Ctl.POSTED: the helper should return for good

JOB_WORDS = 2 * CTL_WORDS


class Job(IntEnum):
    """Slots of a batch job block."""

    NEXT = 0  # the next chunk, taken by atomic increment (alone on its cache line)
    INPUT = 8  # the caller's input*
    OUTPUT = 9  # output*
    WEIGHTS = 10  # weights*
    N = 11  # images in the batch
    CHUNK = 12  # images per chunk


assert Ctl.ARGS + STAGE_ARGS <= CTL_WORDS and Job.CHUNK < JOB_WORDS
