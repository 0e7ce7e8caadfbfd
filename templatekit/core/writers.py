"""What each output of the template wrote across the traced probes: facts the planner reads off the traces.

A unit (one output of the template, `analysis.Unit`) may write part of a trained turn, only a trained turn's
header, someone else's text inside a trained message, or run more than once for one message (a loop over its tool
calls). `plan` decides where the tags go from these sets.
"""

from __future__ import annotations

from .analysis import Flow
from .layout import TracedProbe
from .turn_regions import loops_of


def trained_units(traces: list[TracedProbe]) -> set[int]:
    """Units that wrote part of a trained turn in some probe."""
    return {
        emission.uid
        for trace in traces
        for turn in trace.layout.turns
        for emission in trace.emissions
        if emission.text and emission.start < turn.end and turn.start < emission.end
    }


def header_after_roles(traces: list[TracedProbe]) -> dict[int, set]:
    """Per unit, the roles of the messages before the trained turns whose header it wrote (text of the message
    before its turn starts): where the generation prompt writes that text itself."""
    found: dict[int, set] = {}
    for trace in traces:
        for emission in trace.emissions:
            index = emission.message
            if index is None or index not in trace.layout.trained or not emission.text.strip():
                continue
            turns = [turn for turn in trace.layout.turns if turn.message == index]
            if turns and emission.end <= min(turn.start for turn in turns):
                previous = trace.probe.messages[index - 1]["role"] if index else None
                found.setdefault(emission.uid, set()).add(previous)
    return found


def header_units(traces: list[TracedProbe]) -> set[int]:
    """Units that only ever write a trained turn's header (a header piece one branch adds), never its body."""
    header, trained = set(), set()
    for trace in traces:
        layout, emissions = trace.layout, trace.emissions
        for turn in layout.turns:
            own = [e for e in emissions if e.message == turn.message and e.text]
            opening = min((e.start for e in own), default=turn.start)
            for emission in own:
                if opening <= emission.start and emission.end <= turn.start and emission.text.strip():
                    header.add(emission.uid)
            # Whoever writes part of a turn is trained there (a stop marker the next message writes).
            trained |= {e.uid for e in emissions if e.text and e.start < turn.end and turn.start < e.end}
    return header - trained


def foreign_units(traces: list[TracedProbe]) -> set[int]:
    """Units that, while writing a trained message, wrote someone else's text (a tool result, say)."""
    return {
        emission.uid
        for trace in traces
        for emission in trace.emissions
        if emission.message in trace.layout.trained
        and any(emission.start < end and start < emission.end for start, end, _ in trace.layout.forbidden)
    }


def per_message_loops(flow: Flow, traces: list[TracedProbe]) -> set[int]:
    """The loops (by source offset) that run more than once for one message: loops over its parts (tool calls),
    not over the messages."""
    found = set()
    for trace in traces:
        counts: dict[tuple[int, int], int] = {}
        for emission in trace.emissions:
            if emission.message is None or not emission.text:
                continue
            key = (emission.uid, emission.message)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 2 and (loops := loops_of(flow.units[emission.uid])):
                found.add(loops[0].start)
    return found
