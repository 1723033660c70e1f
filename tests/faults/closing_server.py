"""The real echo inference server, except that each Process stream ends (status OK)
after it has sent `--close-after` responses with results: a server that hangs up.

    python -m tests.faults.closing_server --close-after 20 [services.inference flags]
"""

from __future__ import annotations

import sys
from typing import Any

from services.inference import __main__ as inference_main
from services.inference.server import InferenceServicer


def hang_up_after(responses: int) -> None:
    original = InferenceServicer.Process

    async def process(self: InferenceServicer, request_iterator: Any, context: Any) -> Any:
        sent = 0
        stream = original(self, request_iterator, context)
        try:
            async for response in stream:
                yield response
                sent += bool(response.results)
                if sent >= responses:
                    print("closing a stream", file=sys.stderr, flush=True)
                    return
        finally:
            await stream.aclose()

    InferenceServicer.Process = process  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--close-after":
        print("usage: --close-after N [inference server flags]", file=sys.stderr)
        return 2
    hang_up_after(int(argv[1]))
    return inference_main.main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
