"""Example processor: counts how often each work unit id was submitted.

It shows the whole recipe for a user-defined processor: an event type of
your own (a model plus its Avro schema, registered with the codec's
registry), a pure reducer, and one of the two shells to run it. The tests
use it to prove both shells survive SIGKILL and a lost state directory.

    python -m streams.examples.submission_counter --input T --facts F --group G
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from onceflow.schemas import Event, WorkUnitSubmitted, default_registry
from onceflow.schemas._impl.avro_from_model import avro_schema_for
from onceflow.streams.ids import caused_by
from onceflow.streams.types import Reducer, State

__all__ = ["SubmissionCounted", "SubmissionCounter", "main"]


class SubmissionCounted(Event, event_type="example.submission.counted",
                        avro_name="ExampleSubmissionCounted"):
    """A user's own event type: one declaration names it, as for onceflow's own."""

    count: int
    last_work_unit_id: str


def register_example_schema() -> None:
    registry = default_registry()
    if SubmissionCounted.EVENT_TYPE not in registry.by_type:
        registry.register(
            SubmissionCounted.EVENT_TYPE, avro_schema_for(SubmissionCounted), SubmissionCounted
        )


register_example_schema()


class SubmissionCounter(Reducer):
    name = "example-submission-counter"

    def decide(self, state: State, event: Event) -> Sequence[Event]:
        if not isinstance(event, WorkUnitSubmitted):
            return ()
        # Keys are per work unit, the entity the input topic is partitioned
        # by, so the state of one partition never needs another partition's.
        count = int(state.get(f"unit:{event.work_unit_id}", {}).get("count", 0)) + 1
        return (
            SubmissionCounted(
                **caused_by(event, "counted"),
                count=count,
                last_work_unit_id=event.work_unit_id or "",
            ),
        )

    def evolve(self, state: State, fact: Event) -> None:
        if isinstance(fact, SubmissionCounted):
            state.set(
                f"unit:{fact.last_work_unit_id}", {"count": fact.count, "tenant": fact.tenant_id}
            )


def main(argv: list[str] | None = None) -> None:
    from onceflow.streams.log import configure_logging
    from onceflow.streams.runtime.batched import BatchedProcessor
    from onceflow.streams.settings import StreamsSettings, load_settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--facts", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--dead-letters", default=None)
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="touched once partitions are assigned and recovered")
    args = parser.parse_args(argv)
    settings = load_settings(StreamsSettings)
    configure_logging(settings.log_format, settings.log_level)
    processor = BatchedProcessor(
        SubmissionCounter(), settings, inputs=[args.input], fact_topic=args.facts,
        group_id=args.group, state_dir=args.state_dir, dead_letter_topic=args.dead_letters,
        on_ready=args.ready_file.touch if args.ready_file else None,
    )
    processor.install_signal_handlers()
    processor.run()


if __name__ == "__main__":
    main()
