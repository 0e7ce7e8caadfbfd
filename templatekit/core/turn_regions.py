"""One trained turn's span in one render, as regions of the source: where its tags open and close.

The span's first and last characters become cut points in the source (regions.py). Both cuts are lifted to
the innermost body that holds them both, because a generation block must open and close in the same
statement list; parallel tool calls whose iterations each write part of the span meet at the loop statement.
`pieces_by_writer` first cuts the span by who writes each piece (the turn, the next or previous message's branch,
the code after the loop), since each piece is tagged under its own test.
"""

from __future__ import annotations

from dataclasses import replace

from jinja2 import nodes

from ..errors import PlanError
from .analysis import Body, Emission, Flow, Item, Stmt, Unit
from .guards import Guard
from .regions import Closes, Cut, Region, cut_at, where


def _emission_at(emissions: list[Emission], char: int) -> Emission:
    for emission in emissions:
        if emission.start <= char < emission.end:
            return emission
    raise PlanError(f"no output unit wrote character {char}")


def regions_for_turn(flow: Flow, emissions: list[Emission], start: int, end: int) -> list[Region]:
    """Regions whose tags produce the span `[start, end)` in this render, as adjacent pieces.

    A generation block opens and closes in one statement list. When the span starts deeper than it ends
    (content written inside an `if`, the end-of-turn marker after it), the span is cut into pieces: from
    the start to the end of its body, then on from after each enclosing statement, up to the common body;
    the end side mirrors this. Adjacent spans train the same characters as one.
    """
    first = _emission_at(emissions, start)
    last = _emission_at(emissions, end - 1)
    first_unit, last_unit = flow.units[first.uid], flow.units[last.uid]
    start_bodies = first_unit.body.ancestors()
    common = next(body for body in last_unit.body.ancestors() if body in start_bodies)
    # Both ends in one loop body but in different iterations (parallel tool calls, each writing its own end
    # marker): the iterations meet at the loop statement, in the body that holds it.
    for body in common.ancestors():
        if body.parent is not None and _runs_again(body.parent, emissions, start, end):
            common = body.parent.body
            break
    # The statement of the common body where the turn began, when it began deeper (in an `if` that writes
    # reasoning first): regions after it are written only when that branch ran.
    began_in, body = None, first_unit.body
    while body is not common:
        began_in, body = (body.parent, body), body.parent.body
    regions: list[Region] = []

    start_cut: Cut | None = cut_at(flow, first, start - first.start, "before")
    item, index, opened_in = first_unit, first_unit.index, None
    while item.body is not common:
        body = item.body
        if _opens_loop_run(body.parent, first, emissions, start, end, start_cut):
            # The turn opens with the first output of a loop that runs on inside it (parallel tool calls
            # written by different branches for the first call and the others): the loop belongs to it whole.
            item, index, start_cut, opened_in = body.parent, body.parent.index, None, None
            continue
        if index < len(body.items):
            head, tail = body.items[index], body.items[-1]
            region = Region(body, index, tail.index, start_cut or cut_before(head), cut_after(tail))
            if _repeats_whole(first, emissions, end, start_cut, body):
                # Later iterations write the unit whole inside the span (a separator before each parallel
                # tool call): wrap it whole there, and from the cut in the iteration that opens the turn.
                alternative = Region(body, index, tail.index, start_cut, cut_after(tail))
                region = Region(
                    body,
                    index,
                    tail.index,
                    cut_before(head),
                    cut_after(tail),
                    alternative=alternative,
                    condition=Guard.not_first(),
                )
            regions.append(region)
        item, start_cut = body.parent, None
        index, opened_in = item.index + 1, (item, body)
    start_index = index

    end_cut: Cut | None = cut_at(flow, last, end - last.start, "after")
    item, index, end_pieces = last_unit, last_unit.index, []
    while item.body is not common:
        body = item.body
        if _whole_iterations(body.parent, emissions, start, end):
            # The span covers earlier iterations of this loop whole (parallel tool calls and the separators
            # between them): the loop statement belongs to it entirely.
            end_pieces, end_cut, item, index = [], None, body.parent, body.parent.index
            continue
        if index >= 0:
            head, tail = body.items[0], body.items[index]
            end_pieces.append(Region(body, 0, index, cut_before(head), end_cut or cut_after(tail)))
        item, end_cut = body.parent, None
        index = item.index - 1
    end_index = index

    if start_index <= end_index:
        head, tail = common.items[start_index], common.items[end_index]
        start_cut, end_cut = start_cut or cut_before(head), end_cut or cut_after(tail)
        if head is tail and start_cut.offset >= end_cut.offset:
            raise PlanError(
                f"the turn starts and ends inside the output at {where(flow, start_cut.offset)}, which writes "
                "its header too (through a macro or filter) and has no place between them for a tag"
            )
        regions.append(
            Region(common, start_index, end_index, start_cut, end_cut, opened_in=opened_in, began_in=began_in)
        )
    regions.extend(replace(piece, began_in=began_in) for piece in reversed(end_pieces))
    return regions


def loops_of(unit: Unit) -> list[Stmt]:
    return [
        body.parent
        for body in unit.body.ancestors()
        if body.parent is not None and isinstance(body.parent.node, nodes.For)
    ]


def pieces_by_writer(
    flow: Flow, emissions: list[Emission], message: int, start: int, end: int
) -> list[tuple[int, int, Closes]]:
    """The span `[start, end)` of `message`'s turn in pieces by who writes them: the turn itself (""), the
    next message's branch ("next": a stop marker written before the next message's header), the previous
    message's branch ("previous": a separator it writes only when a message follows, generated ahead of the
    reply when the template has no generation prompt), or the code after the message loop ("after": an
    end-of-sequence token written once the conversation ends)."""
    # The loops that wrote the message: an output after one of them runs once the conversation is written.
    loop_ends = [loop.end for e in emissions if e.message == message for loop in loops_of(flow.units[e.uid])]
    pieces: list[tuple[int, int, Closes]] = []
    for emission in emissions:
        low, high = max(start, emission.start), min(end, emission.end)
        if low >= high:
            continue
        if emission.message not in (None, message):
            closes = "next" if emission.message > message else "previous"
        elif emission.message is None and loop_ends and flow.units[emission.uid].start >= min(loop_ends):
            closes = "after"
        else:
            closes = ""
        if pieces and pieces[-1][2] == closes and pieces[-1][1] == low:
            pieces[-1] = (pieces[-1][0], high, closes)
        else:
            pieces.append((low, high, closes))
    return pieces or [(start, end, "")]


def _whole_iterations(statement: Stmt, emissions: list[Emission], start: int, end: int) -> bool:
    """True when `statement` is a loop of which the span `[start, end)` holds more than one iteration."""
    if not isinstance(statement.node, nodes.For):
        return False
    inside = {unit.uid for body in statement.bodies for item in body.items for unit in units_of(item)}
    seen = [e.uid for e in emissions if e.uid in inside and e.text and start <= e.start and e.end <= end]
    return len(seen) != len(set(seen))


def _runs_again(statement: Stmt, emissions: list[Emission], start: int, end: int) -> bool:
    """True when the loop `statement` runs more than once inside the span `[start, end)`.

    Within one iteration the loop's own outputs (not those of a loop nested in it) write in source order,
    each `if` in one branch; an output that writes at or before the previous one's place in the source, or
    in another branch of an `if` taken already, starts a new iteration.
    """
    if not isinstance(statement.node, nodes.For):
        return False
    own: dict[int, Unit] = {}
    bodies = list(statement.bodies)
    while bodies:
        for item in bodies.pop().items:
            if isinstance(item, Unit):
                own[item.uid] = item
            elif not isinstance(item.node, nodes.For):
                bodies.extend(item.bodies)
    place, branches = -1, {}
    for emission in emissions:
        unit = own.get(emission.uid)
        if unit is None or not emission.text or not (start <= emission.start and emission.end <= end):
            continue
        taken = {}
        for body in unit.body.ancestors():
            if body.parent is None or body.parent is statement:
                break
            taken[id(body.parent)] = id(body)
        if unit.start <= place or any(branches.get(key, body) != body for key, body in taken.items()):
            return True
        place = unit.start
        branches.update(taken)
    return False


def _opens_loop_run(
    statement: Stmt | None, first: Emission, emissions: list[Emission], start: int, end: int, cut: Cut | None
) -> bool:
    """True when the span opens, at a whole output, with the first thing the loop `statement` writes for the
    message, and the loop runs again inside the span."""
    if (
        statement is None
        or (cut is not None and cut.side != "before")
        or not _runs_again(statement, emissions, start, end)
    ):
        return False
    inside = {unit.uid for unit in units_of(statement)}
    return not any(e.uid in inside and e.text and e.start < start and e.message == first.message for e in emissions)


def _repeats_whole(first: Emission, emissions: list[Emission], end: int, cut: Cut | None, body: Body) -> bool:
    """True when the span, which opens inside `first`'s output, covers that output again whole later on:
    a later iteration of the loop `body` belongs to."""
    if cut is None or cut.side != "split" or body.parent is None or not isinstance(body.parent.node, nodes.For):
        return False
    return any(e.uid == first.uid and e.start >= first.end and e.end <= end for e in emissions)


def cut_before(item: Item) -> Cut:
    return Cut(item, "before", item.start)


def cut_after(item: Item) -> Cut:
    return Cut(item, "after", item.end)


def units_in(region: Region) -> list[Unit]:
    """Every unit inside the region, nested statements included."""
    return [unit for item in region.body.items[region.first : region.last + 1] for unit in units_of(item)]


def units_of(item: Item) -> list[Unit]:
    if isinstance(item, Unit):
        return [item]
    return [unit for body in item.bodies for inner in body.items for unit in units_of(inner)]
