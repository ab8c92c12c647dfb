"""Moving a group's committed offsets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidings.admin.positions import Position, resolve_start
from tidings.admin.topics import describe_group, is_internal
from tidings.errors import (
    ConfigError,
    GroupBusy,
)
from tidings.transport import (
    Transport,
)

if TYPE_CHECKING:
    pass


# -- offsets ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffsetChange:
    """What a reset did (or would do) to a group's offset in one partition."""

    group: str
    topic: str
    partition: int
    old: int | None  # None: the group had not started on this partition
    new: int


async def reset_offsets(
    transport: Transport,
    group: str,
    to: Position,
    *,
    topic: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    internal: bool = False,
) -> list[OffsetChange]:
    """Move ``group``'s committed offsets on ``topic`` (default: every topic it has,
    its retry topic only with ``internal``: a reset must not skip or repeat replays an
    operator sent unless asked to) to ``to``; return the changes, old to new, per
    partition.

    Refuses with GroupBusy while the group has live members, unless ``force`` (they
    drop what they hold and start again from the new offsets). ``dry_run`` changes
    nothing. GroupNotFound for a group with neither offsets nor members.
    """
    info = await describe_group(transport, group)
    if topic is not None:
        topics = [topic]
    else:
        topics = sorted(
            {r.topic for r in info.partitions if internal or not is_internal(group, r.topic)}
        )
        if not topics:
            raise ConfigError(f"group {group!r} has no topics yet; name one with --topic")
    if info.members and not force and not dry_run:
        # Checked for every topic before moving any, so that a refusal changes nothing;
        # set_offsets checks again, against a member joining meanwhile.
        raise GroupBusy(
            f"group {group!r} has {len(info.members)} live member(s) "
            f"({', '.join(m.member for m in info.members)}); stop its workers first, or "
            "pass --force (they will start again from the new offsets)"
        )
    committed = {(row.topic, row.partition): row.committed for row in info.partitions}
    plan: dict[str, dict[int, int]] = {}
    for name in topics:
        plan[name] = await resolve_start(transport, name, to)
    if not dry_run:
        for name, offsets in plan.items():
            await transport.set_offsets(group, name, offsets, force=force)
    return [
        OffsetChange(group, name, p, committed.get((name, p)), new)
        for name, offsets in plan.items()
        for p, new in sorted(offsets.items())
    ]
