"""onceflow's event contracts: Avro schemas, the models that mirror them, and codecs.

Import everything from here; `schemas._impl` is private.
"""

from onceflow.schemas._impl.codec import (
    SINGLE_OBJECT_MARKER,
    EventCodec,
    SingleObjectCodec,
)
from onceflow.schemas._impl.columnar import ContainerBlock, decode_bodies
from onceflow.schemas._impl.compiled import native_available
from onceflow.schemas._impl.errors import (
    CodecError,
    EventValidationError,
    NotAvroSingleObjectError,
    TruncatedEventError,
    UnknownEventTypeError,
    UnknownSchemaError,
)
from onceflow.schemas._impl.events import *  # noqa: F403
from onceflow.schemas._impl.events import SYSTEM_TENANT
from onceflow.schemas._impl.events import __all__ as _event_names
from onceflow.schemas._impl.reasons import (
    BreakerState,
    ClaimRejectionReason,
    ControlAction,
    ControlOutcome,
    ControlScope,
    DeferralReason,
    DenialReason,
    LedgerOutcome,
    LineItemType,
    NeedsOperatorReason,
    PlacementReason,
    RejectionReason,
    RetryReason,
    SessionFailurePolicy,
    SessionLimitName,
    SessionLimitThreshold,
    SettlementReason,
    SlotReleaseReason,
    TrustOutcome,
    TrustReason,
)
from onceflow.schemas._impl.registry import (
    EventSchema,
    SchemaRegistry,
    avro_fingerprint,
    default_registry,
    schema_dir,
)
from onceflow.schemas._impl.tokens import (
    estimated_input_tokens,
    estimated_output_tokens,
    max_tokens_of,
    weighted_tokens,
)
from onceflow.schemas._impl.types import (
    MONEY_QUANTUM,
    BreakerBucket,
    ContentRef,
    EffectLabel,
    HealthStatus,
    IdempotencyClass,
    Money,
    PlacementCandidate,
    Priority,
    SessionLimitPolicy,
    SessionLimits,
    WorkKind,
    quantize_money,
)

__all__ = [
    *_event_names,
    "BreakerBucket",
    "BreakerState",
    "MONEY_QUANTUM",
    "SINGLE_OBJECT_MARKER",
    "SYSTEM_TENANT",
    "ClaimRejectionReason",
    "CodecError",
    "ControlAction",
    "ControlOutcome",
    "ControlScope",
    "ContainerBlock",
    "ContentRef",
    "DeferralReason",
    "DenialReason",
    "EffectLabel",
    "EventCodec",
    "EventSchema",
    "EventValidationError",
    "HealthStatus",
    "IdempotencyClass",
    "LedgerOutcome",
    "LineItemType",
    "Money",
    "NeedsOperatorReason",
    "NotAvroSingleObjectError",
    "PlacementCandidate",
    "PlacementReason",
    "Priority",
    "RejectionReason",
    "RetryReason",
    "SchemaRegistry",
    "SessionFailurePolicy",
    "SessionLimitName",
    "SessionLimitPolicy",
    "SessionLimitThreshold",
    "SessionLimits",
    "SettlementReason",
    "SlotReleaseReason",
    "SingleObjectCodec",
    "TruncatedEventError",
    "TrustOutcome",
    "TrustReason",
    "UnknownEventTypeError",
    "UnknownSchemaError",
    "WorkKind",
    "avro_fingerprint",
    "decode_bodies",
    "default_registry",
    "estimated_input_tokens",
    "estimated_output_tokens",
    "max_tokens_of",
    "weighted_tokens",
    "native_available",
    "quantize_money",
    "schema_dir",
]

