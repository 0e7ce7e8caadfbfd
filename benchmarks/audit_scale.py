"""`audit` of one long row: its field check against the render itself, as the row grows (the check is linear).

    .venv/bin/python benchmarks/audit_scale.py [--messages 10000 50000 100000]

For each size, one row of that many messages (user and assistant turns, each assistant turn with a `thinking`
field the template leaves out) is audited with the ChatML library template; printed side by side: the seconds
of one render of the row, of the whole audit (the render, plus one render and one scan per field path), and their
ratio. Linear: the ratio stays flat as the row grows (it was quadratic: 65 s for 100,000 messages).
"""

from __future__ import annotations

import argparse
import time

import templatekit
from templatekit.training.audit import audit_conversations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    args = parser.parse_args(argv)
    template = templatekit.get_template("chatml")
    print(f"{'messages':>9} {'render s':>9} {'audit s':>8} {'ratio':>6}")
    for count in args.messages:
        messages = []
        for i in range(count // 2):
            messages += [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i}", "thinking": "hmm"},
            ]
        renderer = templatekit.SpanRenderer(template)
        started = time.perf_counter()
        renderer.render(messages)
        render = time.perf_counter() - started
        started = time.perf_counter()
        report = audit_conversations(template, [{"messages": messages}])
        audit = time.perf_counter() - started
        assert report.fields_not_rendered == {"messages[].thinking": 1}
        print(f"{count:9,} {render:9.2f} {audit:8.2f} {audit / render:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
