"""From traced probes to text edits: where `{% generation %}` and `{% endgeneration %}` go.

For every trained turn of every probe we know the expected span (layout.py) and which unit wrote each
character (analysis.py); turn_regions.py turns each span into regions of the source. Here the regions of all
probes are reconciled: a region that opens a turn
in one render and continues one in another is paired with its alternative under the template's own test;
regions are merged, and split around what must stay outside (a `set` read later, an output that wrote
someone else's text or only header). Regions that the render also enters for untrained messages get a guard
(`{% if message.role in [...] %}`) and the region is written twice, tagged and untagged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from jinja2 import nodes

from ..errors import PlanError
from . import writers
from .analysis import Body, Flow, Item, Stmt, Unit
from .guards import Guard
from .layout import Layout, TracedProbe
from .regions import Cut, Region, where
from .syntax import Pos
from .turn_regions import cut_after, cut_before, loops_of, pieces_by_writer, regions_for_turn, units_in, units_of


def _absorb(outer: Region, region: Region, **changes) -> Region:
    """`outer` holding what `region` adds: its message variables, its guard, the roles before its turns."""
    return replace(
        outer,
        targets=outer.targets | region.targets,
        guard=outer.guard or region.guard,
        after_roles=outer.after_roles | region.after_roles,
        **changes,
    )


def merge_regions(flow: Flow, regions: list[Region]) -> list[Region]:
    """Drop duplicates and regions nested in others; merge overlapping regions of one body."""
    # The headers each sliced operand follows, by region: those its own renders cut after, and the whole value of
    # the operand in renders where it is all header (a cut at the operator after it).
    learned: dict[tuple[int, int], tuple[str, ...]] = {}
    for region in regions:
        if region.start.operator is not None and region.start.operator.headers:
            learned[region.key] = learned.get(region.key, ()) + region.start.operator.headers
    for region in regions:
        follows = region.start.operator.follows if region.start.operator is not None else None
        if follows is not None and follows[1] and (follows[0], region.end.offset) in learned:
            learned[(follows[0], region.end.offset)] += (follows[1],)
    unique: dict[tuple[int, int], Region] = {}
    for region in regions:
        kept = unique.get(region.key)
        if kept is None:
            unique[region.key] = region
            continue
        if kept.closes != region.closes:
            raise PlanError(
                f"the output at {where(flow, region.start.offset)} both opens a turn and closes the one before"
            )
        chosen = kept if kept.alternative is not None or region.alternative is None else region
        unique[region.key] = _absorb(kept, region, alternative=chosen.alternative, condition=chosen.condition)
    for key, region in unique.items():
        operator = region.start.operator
        if key in learned and set(learned[key]) != set(operator.headers):
            # One computed operand opens the turn after different headers in different renders (`<think>` before
            # reasoning, `<think></think>` without): one slice that cuts after whichever the value holds.
            unique[key] = replace(region, start=replace(region.start, operator=operator.with_headers(learned[key])))
    ordered = sorted(unique.values(), key=lambda r: (r.start.offset, -r.end.offset))
    merged: list[Region] = []
    for region in ordered:
        if merged and region.start.offset < merged[-1].end.offset:
            outer = merged[-1]
            if outer.closes != region.closes:
                raise PlanError(
                    f"the outputs at {where(flow, outer.start.offset)} both open a turn and close the one before"
                )
            if region.end.offset <= outer.end.offset:
                merged[-1] = _absorb(outer, region)
                continue
            if region.body is not outer.body:
                raise PlanError(
                    f"spans overlap without nesting at {where(flow, outer.start.offset)} and {where(flow, region.start.offset)}"
                )
            merged[-1] = _absorb(outer, region, last=region.last, end=region.end)
            continue
        merged.append(region)
    return merged


def _other_slice(kept: Cut, new: Cut) -> bool:
    """True when two cuts slice the same computed operand after different headers."""
    a, b = kept.operator, new.operator
    return a is not None and b is not None and bool(a.headers) and bool(b.headers) and a.headers != b.headers


def _silent(item: Item) -> bool:
    return isinstance(item, Stmt) and not item.bodies


def _trim(region: Region) -> Region:
    """Leave statements that write nothing (`set`, `do`, macros) outside the region's ends.

    A generation block is a call block: a variable set inside it does not outlive it.
    """
    items = region.body.items
    first, last, start, end = region.first, region.last, region.start, region.end
    while first < last and _silent(items[first]) and start.item is items[first]:
        first += 1
        start = cut_before(items[first])
    while last > first and _silent(items[last]) and end.item is items[last]:
        last -= 1
        end = cut_after(items[last])
    return replace(region, first=first, last=last, start=start, end=end)


def _assigned_names(item: Item) -> set[str]:
    """Variables that `item` sets in the scope it runs in: `set` statements, also inside `if` branches.

    Loops, macros and call blocks have scopes of their own, so what they set never leaks out of them;
    attribute sets (`ns.x = ...`) change an object and leak nowhere either.
    """
    if not isinstance(item, Stmt):
        return set()
    if isinstance(item.node, (nodes.Assign, nodes.AssignBlock)):
        return {name.name for name in item.node.target.find_all(nodes.Name)} | (
            {item.node.target.name} if isinstance(item.node.target, nodes.Name) else set()
        )
    if isinstance(item.node, nodes.If):
        return {name for body in item.bodies for inner in body.items for name in _assigned_names(inner)}
    return set()


def _names_read_outside(flow: Flow, start: int, end: int) -> set[str]:
    return {
        name.name
        for name in flow.parsed.ast.find_all(nodes.Name)
        if name.ctx == "load" and isinstance(name.lineno, Pos) and not start <= name.lineno.offset < end
    }


def _pieces(flow: Flow, region: Region, foreign: set[int], seen: set[int]) -> list[Region]:
    """`region` split around what must stay outside a generation block.

    Two things must: a `set` whose variable is read after the region (a generation block is a call block,
    so a variable set inside it vanishes when the block ends), and an output that writes someone else's
    text or only ever header text in some probe (a tool result the template puts inside the assistant's
    turn, a header piece one branch adds): `foreign` holds their unit ids. An `if` or loop holding one is entered and its bodies are wrapped one by one.
    Adjacent pieces train the same characters as the whole region. Pieces that write nothing are dropped, and so
    are pieces inside such an `if` or loop that no probe saw write a trained turn (`seen`): a branch beside a tool
    result may write that result in another shape (content blocks) and is left out rather than guessed.
    """
    read_outside = _names_read_outside(flow, region.start.offset, region.end.offset)

    def excluded(item: Item) -> bool:
        if isinstance(item, Unit):
            return item.uid in foreign
        return bool(_assigned_names(item) & read_outside) or any(unit.uid in foreign for unit in units_of(item))

    def pieces(body: Body, first: int, last: int, start: Cut | None, end: Cut | None, beside: bool) -> list[Region]:
        found: list[Region] = []
        run: list[Item] = []

        def close_run(end_cut: Cut | None) -> None:
            units = [unit for item in run for unit in units_of(item)]
            if units and (not beside or any(unit.uid in seen for unit in units)):
                head = start if run[0].index == first and start is not None else cut_before(run[0])
                tail = end_cut if end_cut is not None else cut_after(run[-1])
                found.append(
                    Region(body, run[0].index, run[-1].index, head, tail, region.targets, closes=region.closes)
                )
            run.clear()

        for item in body.items[first : last + 1]:
            if excluded(item):
                if run:
                    close_run(None)
                for sub in getattr(item, "bodies", []):
                    if sub.items:
                        found += pieces(sub, 0, len(sub.items) - 1, None, None, True)
            else:
                run.append(item)
        if run:
            close_run(end if run[-1].index == last else None)
        return found

    found = pieces(region.body, region.first, region.last, region.start, region.end, False)
    if len(found) == 1 and (found[0].first, found[0].last, found[0].key) == (region.first, region.last, region.key):
        return [region]  # nothing left out: keep the region with what it carries (an alternative)
    return found


def _opening_test(
    flow: Flow, region: Region, uids: set[int], headers: dict[int, set], per_message: set
) -> Guard | None:
    """The test under which a region trains outputs that write the turn's header after some messages (the prompt
    writes it there) and open the turn whole after others (after a tool result the prompt writes nothing): the role
    of the message before, when the two sets of roles do not meet."""
    header_roles = set().union(*(headers.get(uid, set()) for uid in uids))
    if not header_roles or not region.after_roles or None in region.after_roles | header_roles:
        return None
    if region.after_roles & header_roles:
        return None
    units = units_in(region)
    loops = loops_of(units[0]) if units else []
    if not loops or loops[0].start in per_message:
        return None
    return Guard.previous_role_in(sorted(region.after_roles))


def _branch_guard(flow: Flow, statement: Stmt, body: Body) -> Guard | None:
    """The source of the test that leads into `body`, when it is the only branch of an `if`."""
    node = statement.node
    if not isinstance(node, nodes.If) or node.elif_ or node.else_ or statement.bodies[0] is not body:
        return None
    tokens = flow.parsed.tokens
    index = flow.parsed.token_index_at(statement.start)
    while not (tokens[index].type == "name" and tokens[index].value == "if"):
        index += 1
    start = tokens[index].end
    while tokens[index].type != "block_end":
        index += 1
    return Guard.of_template(flow.parsed.source[start : tokens[index].start])


def _covering_regions(flow: Flow, emissions: list, start: int, end: int) -> list[Region]:
    """`regions_for_turn` for the span, cut again before any output that writes part of it and that no region
    holds (a later tool call written by another branch of a loop whose first call opens the turn mid-output)."""
    regions = regions_for_turn(flow, emissions, start, end)
    covered = {unit.uid for region in regions for unit in units_in(region)}
    missing = [e.start for e in emissions if e.text and start < e.start < end and e.uid not in covered]
    if not missing:
        return regions
    cut = min(missing)
    return regions_for_turn(flow, emissions, start, cut) + _covering_regions(flow, emissions, cut, end)


def _pair_alternatives(
    flow: Flow, regions: list[Region], pair_branches: bool = False, per_message: frozenset | set = frozenset()
) -> list[Region]:
    """Pair a region with a later-starting one over the same outputs, to be chosen between at render time.

    A unit can open the turn in one render (its header stays out: the region starts inside it) and carry
    on a turn begun earlier in another. Two shapes have a test to tell them apart: the turn began in an
    `if` just before the unit (reasoning written first), whose test is reused; or it began at an earlier
    `+` of the same output, and the computed operands between the two cuts are empty whenever the later
    cut applies (an empty reasoning field that leaves its framing to the header). The pair becomes one
    region written twice under that test.

    With `pair_branches`, a third shape: the turn began in an earlier `if` of an enclosing body (reasoning
    written in a block of its own, with a header of its own), so the region that follows is generated
    whole; in renders where that branch did not run, the same outputs hold the turn's opening in pieces of
    their own, which become the alternative, under the `if`'s test.
    """
    splits = [r for r in regions if r.start.side == "split"]
    # The roles of the messages that come right before the turns each region shape opens (regions repeat per render).
    after_roles: dict[tuple[int, int], set] = {}
    for region in regions:
        after_roles.setdefault(region.key, set()).update(region.after_roles)
    # Where some renders began the turn in an earlier `if` (reasoning written first), the outputs after it are
    # generated whole there, whichever part of a loop they are.
    began: dict[int, list[Guard]] = {}  # by where the outputs start
    for region in regions:
        test = _branch_guard(flow, *region.began_in) if region.began_in is not None else None
        if test is not None and region.start.side == "before" and test not in began.get(region.start.offset, []):
            began.setdefault(region.start.offset, []).append(test)
    paired: set[tuple[int, int]] = set()
    chosen: dict[int, tuple[Region, Guard]] = {}  # by id of the region: its alternative and the test between them
    for region in regions:
        for other in splits:
            same_outputs = (
                other is not region
                and other.body is region.body
                and other.start.item is region.start.item
                and other.start.offset > region.start.offset
                and (other.first, other.last, other.end.offset) == (region.first, region.last, region.end.offset)
            )
            condition = _alternative_test(flow, region, other, per_message, after_roles) if same_outputs else None
            if condition is not None:
                chosen[id(region)] = (other, condition)
                paired.add(other.key)
                break
    regions = [
        replace(region, alternative=chosen[id(region)][0], condition=chosen[id(region)][1])
        if id(region) in chosen
        else region
        for region in regions
    ]
    regions = [
        replace(region, condition=Guard.any_of([region.condition, *began[region.start.offset]]))
        if region.condition == Guard.not_first() and began.get(region.start.offset)
        else region
        for region in regions
    ]
    result = []
    for region in regions:
        result.append(_paired_with_branch(flow, region, regions, paired) if pair_branches else region)
    return [r for r in result if r.key not in paired or r.alternative is not None]


def _paired_with_branch(flow: Flow, region: Region, regions: list[Region], paired: set) -> Region:
    """`region`, paired (when the turn began in an `if` before it) with the piece of the same outputs that opens
    the turn where that branch did not run; the keys of the regions it now holds go into `paired`."""
    condition = _branch_guard(flow, *region.began_in) if region.began_in is not None else None
    if region.alternative is not None or region.start.side != "before" or condition is None:
        return region
    inside = {
        other.key: other
        for other in regions
        if other.key != region.key
        and not other.closes
        and region.start.offset < other.start.offset
        and other.end.offset <= region.end.offset
    }
    ending = [r for r in inside.values() if r.body is region.body and r.end.offset == region.end.offset]
    if len(ending) != 1:
        return region
    paired |= set(inside)
    nested = tuple(other for other in inside.values() if other is not ending[0])
    return replace(region, alternative=ending[0], condition=condition, nested=nested)


def _blank_before_stop(flow: Flow, region: Region, regions: list[Region], ends: set[int]) -> list[Region]:
    """`region`, and apart from it the blank text it ends with when that text comes before an `if` whose branch
    writes the stop marker and some turn ends before it (`content + ' ' + {% if not last %}eos{% endif %}`):
    the blank text is generated only when the marker follows, so it is trained under the `if`'s test."""
    items = region.body.items
    tail = items[region.last]
    following = items[region.last + 1] if region.last + 1 < len(items) else None
    if not (
        region.first < region.last
        and isinstance(tail, Unit)
        and tail.kind == "data"
        and region.end.side == "after"
        and region.end.item is tail
        and not flow.parsed.source[tail.start : tail.end].strip()
        and tail.start in ends
        and isinstance(following, Stmt)
        and isinstance(following.node, nodes.If)
        and any(other.body is following.bodies[0] and other.first == 0 for other in regions)
    ):
        return [region]
    test = _branch_guard(flow, following, following.bodies[0])
    if test is None:
        return [region]
    shortened = replace(region, last=region.last - 1, end=cut_after(items[region.last - 1]))
    blank = Region(
        region.body, tail.index, tail.index, cut_before(tail), cut_after(tail), region.targets, region.guard, when=test
    )
    return [shortened, blank]


def _alternative_test(
    flow: Flow, region: Region, later: Region, per_message: set, after_roles: dict[tuple[int, int], set]
) -> Guard | None:
    """The test under which `region` (which starts earlier) applies rather than `later`, if there is one."""
    if region.start.side == "before":
        if region.opened_in is not None:
            return _branch_guard(flow, *region.opened_in)
        # Inside a loop over parts of one message (parallel tool calls), the first part's output opens the
        # turn and every later one carries on: `'\n<tool_call>\n'` after the header, then as a separator.
        unit = region.start.item
        loops = loops_of(unit) if isinstance(unit, Unit) else []
        if loops and region.body is unit.body and loops[0].start in per_message:
            return Guard.not_first()
        # The generation prompt writes less after some messages than after others (nothing after a tool result,
        # where history still writes the turn's opening): the outputs open the turn whole after those.
        whole, split = after_roles.get(region.key, set()), after_roles.get(later.key, set())
        if loops and loops[0].start not in per_message and whole and None not in whole and not whole & split:
            return Guard.previous_role_in(sorted(whole))
        return None
    unit, early, late = region.start.item, region.start.operator, later.start.operator
    if not isinstance(unit, Unit) or not unit.parts or early is None or late is None:
        return None
    if early.left or early.right or late.left or late.right:
        return None  # only cuts at operators: the operands between them are whole
    source = flow.parsed.source
    computed = []
    for position, part in enumerate(unit.parts):
        if position == 0 or not early.start <= part.operator_start < late.start:
            continue
        end = unit.parts[position + 1].operator_start if position + 1 < len(unit.parts) else unit.close_tag.start
        if not isinstance(part.node, nodes.Const):
            computed.append(source[part.operator_end : end])
    return Guard.joined(computed) if computed else None


def plan_regions(
    flow: Flow, traces: list[TracedProbe], trained_roles_of: Callable[[Layout], set], pair_branches: bool = False
) -> list[Region]:
    """Regions for every trained turn of every traced probe, merged, each marked with whether it needs a guard.

    `trained_roles_of(layout)` returns the set of message indices trained in that probe. With
    `pair_branches`, a region after an `if` that began the turn in some renders is written twice under
    that `if`'s test (see `_pair_alternatives`); the plainer plan is tried first.
    """
    regions: list[Region] = []
    for trace in traces:
        layout, emissions = trace.layout, trace.emissions
        for turn in layout.turns:
            if turn.end <= turn.start or turn.optional:
                continue
            previous = trace.probe.messages[turn.message - 1]["role"] if turn.message else None
            for start, end, closes in pieces_by_writer(flow, emissions, turn.message, turn.start, turn.end):
                for region in _covering_regions(flow, emissions, start, end):
                    regions.append(replace(region, closes=closes, after_roles=frozenset({previous})))
    ends = {region.end.offset for region in regions}
    per_message = writers.per_message_loops(flow, traces)
    regions = [_trim(region) for region in regions]
    regions = merge_regions(flow, _pair_alternatives(flow, regions, pair_branches, per_message))
    regions = [piece for region in regions for piece in _blank_before_stop(flow, region, regions, ends)]
    outside = writers.foreign_units(traces) | writers.header_units(traces)
    seen = writers.trained_units(traces)
    regions = [piece for region in regions for piece in _pieces(flow, region, outside, seen)]
    headers = writers.header_after_roles(traces)
    return [_guarded(flow, region, traces, trained_roles_of, headers, per_message) for region in regions]


def _guarded(flow: Flow, region: Region, traces, trained_roles_of, headers: dict[int, set], per_message: set) -> Region:
    """`region` with what its tags must be written under: the variables that hold the messages it writes for, a
    guard when it writes for untrained messages too, a test of the message before it where the generation prompt
    writes its outputs after some messages, and whether it is the next message's role token."""
    uids = {unit.uid for unit in units_in(region)}
    targets, guard = set(region.targets), region.guard
    written = set()
    for trace in traces:
        trained = trained_roles_of(trace.layout)
        for emission in trace.emissions:
            if emission.uid not in uids or not emission.text or emission.message is None:
                continue
            written.add(emission.text)
            targets.add(flow.units[emission.uid].loop_targets[emission.target])
            guard = guard or emission.message not in trained
    return replace(
        region,
        targets=frozenset(targets),
        guard=guard,
        when=region.when or _opening_test(flow, region, uids, headers, per_message),
        names_role=region.closes == "next" and len(written) > 1,
    )
