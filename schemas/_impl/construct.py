"""Models built from decoded Avro records without validating again what Avro already did.

`Model.model_validate(record)` costs about 6 us for a 26-field work unit, and
most of it re-checks types: that a field the Avro schema declares `string`
holds a `str`, a `long` an `int`. A record decoded against the current
schema cannot be otherwise. What Avro does not check is the model's own
contract: `ge=0`, `min_length=1`, a `Literal`'s values, a pattern, money
parsed into `Decimal`. A builder, generated once per model, checks exactly
those, and sets the decoded dict as the instance's fields (about 1.5 us).

The builder never decides that a record is invalid: when any check fails it
returns None, and the codec asks `model_validate`, whose error is the one
reported (and the one that sends the record to the dead-letter topic). So
the only promise the builder makes is the one `tests/schemas/test_construct.py`
holds it to, for every event type: whatever it accepts, `model_validate`
accepts too, with an equal model.

A field the builder does not know how to check inline (money, a pattern, any
other metadata, an annotation it has no rule for) is validated by pydantic
alone, with a `TypeAdapter` of its annotation. A model with validators,
private attributes, a post-init hook or configuration beyond `extra` and
`frozen` gets no builder at all.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, TypeAdapter, ValidationError

from onceflow.schemas._impl.codegen import Source

__all__ = ["BodyDecoder", "Builder", "model_builder", "model_builders"]

#: record (decoded against the model's schema) -> model, or None: ask model_validate
Builder = Callable[[dict[str, Any]], Any]
#: (data, start of the body) -> model, or None: take the slow path
BodyDecoder = Callable[[bytes, int], Any]

_CONFIG_KEYS = {"extra", "frozen", "title"}
_AVRO_KINDS = {
    str: ("string",),
    int: ("int", "long"),
    float: ("float", "double"),
    bool: ("boolean",),
    bytes: ("bytes",),
}
# What object.__setattr__ would find for the four attributes every pydantic instance
# holds (BaseModel's __dict__ and slots), called directly: a third cheaper.
_SLOT_SETTERS = {
    f"_set_{short}": BaseModel.__dict__[name].__set__
    for short, name in [("dict", "__dict__"), ("fields", "__pydantic_fields_set__"),
                        ("extra", "__pydantic_extra__"), ("private", "__pydantic_private__")]
}
_BOUNDS = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"),
           annotated_types.Le: ("<=", "le"), annotated_types.Lt: ("<", "lt")}


def model_builders(model: type[BaseModel], schema: dict[str, Any],
                   read: Callable[[bytes, int], tuple[dict[str, Any], int]] | None = None,
                   ) -> tuple[Builder, BodyDecoder | None] | None:
    """`model`'s builder for records decoded with `schema`, and with a `read`, its body
    decoder; None: no builder, use model_validate.

    The body decoder, `decode(data, start)`, reads the body at `start` with `read`
    and builds the model in one call (the codec's hot path). None from it: the body
    has trailing bytes or a check failed, and the codec's slow path says which; it
    may also raise whatever `read` raises on a corrupt body. Both functions share
    the one set of checks generated for the model.
    """
    try:
        return _Gen().model(model, schema, read)
    except _NoBuilder:
        return None


def model_builder(model: type[BaseModel], schema: dict[str, Any]) -> Builder | None:
    """The builder alone (see `model_builders`)."""
    built = model_builders(model, schema)
    return None if built is None else built[0]


class _NoBuilder(Exception):
    pass


def _eligible(model: type[BaseModel], schema: dict[str, Any]) -> bool:
    decorators = model.__pydantic_decorators__
    if (decorators.validators or decorators.field_validators or decorators.root_validators
            or decorators.model_validators):
        return False
    if model.__private_attributes__ or model.__pydantic_post_init__ is not None:
        return False
    if set(model.model_config) - _CONFIG_KEYS or model.model_config.get("extra") == "allow":
        return False  # (with extra="allow" an instance holds a dict of extras, not None)
    if any(f.alias or f.validation_alias for f in model.model_fields.values()):
        return False
    # The decoded dict becomes the instance's fields as it is: same names, same order.
    return [f["name"] for f in schema.get("fields", ())] == list(model.model_fields)


def _avro(t: Any) -> Any:
    """A type's Avro kind: "string", ["null", X], or the dict of a complex type."""
    if isinstance(t, dict) and t.get("type") in ("string", "int", "long", "float", "double",
                                                 "boolean", "bytes") and "logicalType" not in t:
        return t["type"]
    return t


class _Gen(Source):
    def model(self, model: type[BaseModel], schema: dict[str, Any],
              read: Callable[[bytes, int], tuple[dict[str, Any], int]] | None = None,
              ) -> tuple[Builder, BodyDecoder | None]:
        if not _eligible(model, schema):
            raise _NoBuilder(model.__name__)
        replaced: list[tuple[str, str]] = []
        for f in schema["fields"]:
            name = f["name"]
            info = model.model_fields[name]
            v = self.var("v")
            mark = len(self.lines)
            self.emit(1, f"{v} = r[{name!r}]")
            out = self.field(1, v, info.annotation, list(info.metadata), _avro(f["type"]))
            if out != v:
                replaced.append((name, out))
            elif len(self.lines) == mark + 1:  # nothing to check: Avro's type is the contract
                self.lines.pop()
        for name, out in replaced:
            self.emit(1, f"r[{name!r}] = {out}")
        m = self.const(model)
        self.emit(1, f"m = _new({m})")
        self.emit(1, "_set_dict(m, r)")
        if model.model_config.get("frozen"):
            # Every field is set, and nothing changes the fields set of a frozen model
            # in place (pydantic's copies copy it first): one set serves every instance.
            self.emit(1, f"_set_fields(m, {self.const(set(model.model_fields))})")
        else:
            fields = self.const(frozenset(model.model_fields))
            self.emit(1, f"_set_fields(m, set({fields}))")
        self.emit(1, "_set_extra(m, None)")
        self.emit(1, "_set_private(m, None)")
        self.emit(1, "return m")
        # The checks once, under two heads: a decoded record, or a body to read first.
        body, self.lines = self.lines, ["def build(r):"]
        # A record resolved from an older writer's schema (fastavro) may list its
        # fields in another order; the instance's fields must be in the model's.
        self.emit(1, f"if tuple(r) != {self.const(tuple(model.model_fields))}:")
        self.emit(2, "return None")
        self.lines += body
        if read is not None:
            self.emit(0, "def decode(data, start):")
            self.emit(1, f"r, end = {self.const(read)}(data, start)")
            self.emit(1, "if end != len(data):")
            self.emit(2, "return None")
            self.lines += body
        namespace = self.run(f"<build {model.__name__}>", {
            "_new": object.__new__, "_VE": ValidationError, **_SLOT_SETTERS})
        return namespace["build"], namespace.get("decode")

    def field(self, d: int, v: str, ann: Any, metadata: list[Any], avro: Any) -> str:
        """Emit the checks of one value; return the name that holds the value to keep."""
        inline = self.inline(d, v, ann, metadata, avro)
        if inline is not None:
            return inline
        # Anything else is pydantic's to check: the field's own annotation and metadata.
        adapter = TypeAdapter(Annotated[ann, *metadata] if metadata else ann)
        a, out = self.const(adapter.validate_python), self.var("x")
        self.emit(d, "try:")
        self.emit(d + 1, f"{out} = {a}({v})")
        self.emit(d, "except _VE:")
        self.emit(d + 1, "return None")
        return out

    def inline(self, d: int, v: str, ann: Any, metadata: list[Any], avro: Any) -> str | None:
        """Checks emitted for what the Avro type guarantees half of; None: not inline."""
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if (len(inner) != 1 or len(args) != 2 or metadata or not isinstance(avro, list)
                    or len(avro) != 2 or "null" not in avro):
                return None
            branch = _avro(next(b for b in avro if b != "null"))
            mark = len(self.lines)
            self.emit(d, f"if {v} is not None:")
            out = self.inline(d + 1, v, inner[0], [], branch)
            if out is None:
                del self.lines[mark:]
                return None
            if len(self.lines) == mark + 1:  # nothing to check inside
                self.lines.pop()
                return v
            if out == v:
                return v
            kept = self.var("x")  # a nested model built from the dict, or None
            self.lines.insert(mark, "    " * d + f"{kept} = {v}")
            self.emit(d + 1, f"{kept} = {out}")
            return kept
        bounds: list[tuple[str, Any]] = []
        lengths: list[tuple[str, int]] = []
        for m in metadata:
            bound = _BOUNDS.get(type(m))
            if bound is not None:
                bounds.append((bound[0], getattr(m, bound[1])))
            elif isinstance(m, annotated_types.MinLen):
                lengths.append((">=", m.min_length))
            elif isinstance(m, annotated_types.MaxLen):
                lengths.append(("<=", m.max_length))
            else:
                return None
        if ann in _AVRO_KINDS and avro in _AVRO_KINDS[ann]:
            if bounds and ann not in (int, float):
                return None
            if lengths and ann not in (str, bytes):
                return None
            self.checks(d, v, bounds, lengths)
            return v
        if (origin is typing.Literal and args and all(type(a) is str for a in args)
                and not metadata
                and (avro == "string" or (isinstance(avro, dict) and avro.get("type") == "enum"))):
            self.emit(d, f"if {v} not in {self.const(frozenset(args))}:")
            self.emit(d + 1, "return None")
            return v
        if bounds:
            return None
        if origin is list and args in ((str,),) and isinstance(avro, dict) \
                and avro.get("type") == "array" and _avro(avro["items"]) == "string":
            self.checks(d, v, [], lengths)
            return v
        if origin is dict and args == (str, str) and isinstance(avro, dict) \
                and avro.get("type") == "map" and _avro(avro["values"]) == "string":
            self.checks(d, v, [], lengths)
            return v
        if isinstance(ann, type) and issubclass(ann, BaseModel) and not lengths \
                and isinstance(avro, dict) and avro.get("type") == "record":
            return self.nested(d, v, ann, avro)
        if (origin is list and len(args) == 1 and isinstance(args[0], type)
                and issubclass(args[0], BaseModel) and isinstance(avro, dict)
                and avro.get("type") == "array" and isinstance(avro["items"], dict)
                and avro["items"].get("type") == "record"):
            build = self.builder(args[0], avro["items"])
            self.checks(d, v, [], lengths)
            out, item = self.var("x"), self.var("i")
            self.emit(d, f"{out} = []")
            self.emit(d, f"for {item} in {v}:")
            self.emit(d + 1, f"{item} = {build}({item})")
            self.emit(d + 1, f"if {item} is None:")
            self.emit(d + 2, "return None")
            self.emit(d + 1, f"{out}.append({item})")
            return out
        return None

    def checks(self, d: int, v: str, bounds: list[tuple[str, Any]],
               lengths: list[tuple[str, int]]) -> None:
        tests = [f"{v} {op} {self.const(limit)}" for op, limit in bounds]
        tests += [f"len({v}) {op} {limit}" for op, limit in lengths]
        if tests:
            self.emit(d, f"if not ({' and '.join(tests)}):")
            self.emit(d + 1, "return None")

    def builder(self, model: type[BaseModel], schema: dict[str, Any]) -> str:
        build, _ = _Gen().model(model, schema)  # raises _NoBuilder: the field goes to pydantic
        return self.const(build)

    def nested(self, d: int, v: str, model: type[BaseModel], avro: dict[str, Any]) -> str | None:
        try:
            build = self.builder(model, avro)
        except _NoBuilder:
            return None
        out = self.var("x")
        self.emit(d, f"{out} = {build}({v})")
        self.emit(d, f"if {out} is None:")
        self.emit(d + 1, "return None")
        return out
