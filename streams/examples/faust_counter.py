"""The submission counter on the faust shell (see `submission_counter` for the reducer).

    python -m streams.examples.faust_counter --input T --facts F --app-id A \
        --state-dir D --fingerprint-file P worker

The fingerprint file is rewritten every half second with the table's
fingerprint and size, which is how the tests watch a live faust worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from onceflow.streams.examples.submission_counter import SubmissionCounter

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    from onceflow.streams.faust import attach_reducer, make_app
    from onceflow.streams.runtime.fingerprint import fingerprint_items
    from onceflow.streams.settings import StreamsSettings, load_settings
    from onceflow.streams.topics.catalog import TopicCatalog

    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--facts", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--fingerprint-file", type=Path, required=True)
    parser.add_argument("--dead-letters", default=None)
    args, rest = parser.parse_known_args(argv)
    settings = load_settings(StreamsSettings, state_dir=args.state_dir)
    app = make_app(args.app_id, settings)
    _agent, table = attach_reducer(
        app, SubmissionCounter(), input_topic=args.input, fact_topic=args.facts,
        dead_letter_topic=args.dead_letters or TopicCatalog(settings)["deadletters"].name,
    )

    @app.timer(0.5)
    async def write_fingerprint() -> None:
        from onceflow.streams.faust import TableState

        items = list(TableState(table).raw_items())
        tmp = args.fingerprint_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint_items(items), "keys": len(items)}))
        os.replace(tmp, args.fingerprint_file)

    sys.argv = [sys.argv[0], *(rest or ["worker", "--without-web"]), "-l", "warn"]
    app.main()


if __name__ == "__main__":
    main()
