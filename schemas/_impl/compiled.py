"""Avro bodies read and written by Python compiled once from each schema.

fastavro interprets the schema on every call: about 10 us to read a
26-field work unit and 12 us to write one on the machines we run on. The hot
path reads and writes the *current* version of each schema millions of
times, so each schema is turned once into straight-line Python (varints
inlined, one dict literal per record), which does the same work in about a
third of the time and moves every processor, the views sink and the codec
bench with it.

The compiled code must give exactly what fastavro gives: the same bytes on
write and the same values on read (`tests/schemas/test_compiled.py` checks
both for every event type). Only the types onceflow's contracts use are
compiled: null, boolean, int, long, float, double, string, bytes, enum,
record, array, map, and unions with at most one non-null branch. A schema
with anything else (fixed, logical types, wider unions) is not compiled and
the codec keeps using fastavro for it; so is data written with an older
schema, whose resolution to the current one stays fastavro's.

When the C extension `schemas._impl._native` is built (it is, by `pip
install`, wherever a C compiler is), the schema is also turned into a small
"program" of tuples that the extension interprets, about five times faster
again; the generated Python stays as the fallback and as the reference the
tests compare the extension with.
"""

from __future__ import annotations

import functools
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from onceflow.schemas._impl.codegen import Source

try:
    import onceflow.schemas._impl._native as _native_module

    _NATIVE: ModuleType | None = _native_module
except ImportError:  # no C compiler where the package was installed
    _NATIVE = None

__all__ = ["CompiledSchema", "compile_schema", "native_available"]

Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]
Writer = Callable[[dict[str, Any]], bytes]

#: Avro's rule for names; a name is also part of an identifier in the generated code
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}


@dataclass(frozen=True)
class CompiledSchema:
    """`read(data, start) -> (record, end)` and `write(record) -> body`."""

    read: Reader
    write: Writer
    #: the generated Python ("" when the C extension runs the schema)
    source: str = ""
    #: True: `read` and `write` are the C extension's; False: the generated Python's
    native: bool = False


class _Unsupported(Exception):
    pass


class _Gen(Source):
    """Emits the source of one module: a reader and a writer per named record."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, dict[str, Any]] = {}

    # -- schema walking ----------------------------------------------------------------

    def collect(self, schema: Any, namespace: str | None) -> None:
        """Find every named record (so a reference by name resolves), refusing what we
        do not compile."""
        if isinstance(schema, str):
            if schema not in _PRIMITIVES and _full(schema, namespace) not in self.records:
                raise _Unsupported(f"unknown named type {schema}")
            return
        if isinstance(schema, list):
            if sum(1 for s in schema if s != "null") > 1:
                raise _Unsupported("union with more than one non-null branch")
            for s in schema:
                self.collect(s, namespace)
            return
        if not isinstance(schema, dict):
            raise _Unsupported(repr(schema))
        if "logicalType" in schema:
            raise _Unsupported(f"logical type {schema['logicalType']}")
        kind = schema["type"]
        if kind in ("record", "enum") and not (
                _NAME.match(str(schema.get("name", ""))) and _NAME.match(
                    str(schema.get("namespace") or namespace or "_"))):
            raise _Unsupported(f"name {schema.get('name')!r} is not an Avro name")
        if kind == "record":
            ns = schema.get("namespace", namespace)
            name = _full(schema["name"], ns)
            self.records[name] = {**schema, "_ns": ns}
            for f in schema["fields"]:
                self.collect(f["type"], ns)
        elif kind == "enum":
            ns = schema.get("namespace", namespace)
            self.records.setdefault(_full(schema["name"], ns), {**schema, "_ns": ns})
        elif kind == "array":
            self.collect(schema["items"], namespace)
        elif kind == "map":
            self.collect(schema["values"], namespace)
        elif kind in _PRIMITIVES:
            pass
        else:
            raise _Unsupported(f"type {kind}")

    def resolve(self, schema: Any, namespace: str | None) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return self.records[_full(schema, namespace)]
        if isinstance(schema, dict) and schema["type"] in _PRIMITIVES:
            return schema["type"]
        if isinstance(schema, dict) and schema["type"] in ("record", "enum"):
            return self.records[_full(schema["name"], schema.get("namespace", namespace))]
        return schema

    # -- readers --------------------------------------------------------------------------

    def read_long(self, d: int, target: str) -> None:
        b, n, s = self.var("b"), self.var("n"), self.var("s")
        self.emit(d, f"{b} = data[pos]")
        self.emit(d, "pos += 1")
        self.emit(d, f"if {b} < 128:")
        self.emit(d + 1, f"{target} = ({b} >> 1) ^ -({b} & 1)")
        self.emit(d, "else:")
        self.emit(d + 1, f"{n} = {b} & 127")
        self.emit(d + 1, f"{s} = 7")
        self.emit(d + 1, "while True:")
        self.emit(d + 2, f"{b} = data[pos]")
        self.emit(d + 2, "pos += 1")
        self.emit(d + 2, f"{n} |= ({b} & 127) << {s}")
        self.emit(d + 2, f"if {b} < 128:")
        self.emit(d + 3, "break")
        self.emit(d + 2, f"{s} += 7")
        self.emit(d + 1, f"{target} = ({n} >> 1) ^ -({n} & 1)")

    def read_bytes(self, d: int, target: str) -> None:
        b, size, end = self.var("b"), self.var("z"), self.var("e")
        # Most lengths are under 64: one byte, even (non-negative), read inline.
        self.emit(d, f"{b} = data[pos]")
        self.emit(d, f"if {b} < 128 and not {b} & 1:")
        self.emit(d + 1, f"{end} = pos + 1 + ({b} >> 1)")
        self.emit(d + 1, f"if {end} > size:")
        self.emit(d + 2, f"raise EOFError(f'expected {{{b} >> 1}} bytes at byte {{pos}} of {{size}}')")
        self.emit(d + 1, f"{target} = data[pos + 1:{end}]")
        self.emit(d + 1, f"pos = {end}")
        self.emit(d, "else:")
        self.read_long(d + 1, size)
        self.emit(d + 1, f"{end} = pos + {size}")
        self.emit(d + 1, f"if {size} < 0 or {end} > size:")
        self.emit(d + 2, f"raise EOFError(f'expected {{{size}}} bytes at byte {{pos}} of {{size}}')")
        self.emit(d + 1, f"{target} = data[pos:{end}]")
        self.emit(d + 1, f"pos = {end}")

    def read(self, schema: Any, d: int, target: str, ns: str | None) -> None:
        schema = self.resolve(schema, ns)
        if isinstance(schema, list):
            # A branch index below 64 is one byte, 2 * index (zig-zag): every
            # union we compile has at most two branches.
            idx = self.var("u")
            self.emit(d, f"{idx} = data[pos]")
            self.emit(d, "pos += 1")
            for i, branch in enumerate(schema):
                self.emit(d, f"{'if' if i == 0 else 'elif'} {idx} == {2 * i}:")
                self.read(branch, d + 1, target, ns)
            self.emit(d, "else:")
            self.emit(d + 1, f"raise ValueError(f'union branch byte {{{idx}}} out of range')")
            return
        if isinstance(schema, str):
            if schema == "null":
                self.emit(d, f"{target} = None")
            elif schema == "boolean":
                self.emit(d, f"{target} = data[pos] != 0")
                self.emit(d, "pos += 1")
            elif schema in ("int", "long"):
                self.read_long(d, target)
            elif schema in ("float", "double"):
                fn = "_unpack_double" if schema == "double" else "_unpack_float"
                self.emit(d, f"{target} = {fn}(data, pos)[0]")
                self.emit(d, f"pos += {8 if schema == 'double' else 4}")
            elif schema == "string":
                raw = self.var("t")
                self.read_bytes(d, raw)
                self.emit(d, f"{target} = {raw}.decode()")
            elif schema == "bytes":
                self.read_bytes(d, target)
            return
        kind = schema["type"]
        if kind == "record":
            self.emit(d, f"{target}, pos = _read_{_ident(_full(schema['name'], schema['_ns']))}"
                         "(data, pos, size)")
        elif kind == "enum":
            sym = self.var("i")
            self.read_long(d, sym)
            self.emit(d, f"if {sym} < 0:")
            self.emit(d + 1, f"raise ValueError(f'enum index {{{sym}}}')")
            self.emit(d, f"{target} = {self.const(tuple(schema['symbols']))}[{sym}]")
        elif kind in ("array", "map"):
            count, item, key = self.var("c"), self.var("x"), self.var("k")
            self.emit(d, f"{target} = {'[]' if kind == 'array' else '{}'}")
            self.emit(d, "while True:")
            self.read_long(d + 1, count)
            self.emit(d + 1, f"if {count} == 0:")
            self.emit(d + 2, "break")
            self.emit(d + 1, f"if {count} < 0:")
            self.emit(d + 2, f"{count} = -{count}")
            self.read_long(d + 2, self.var("_"))  # the block's byte size: not needed
            self.emit(d + 1, f"for _ in range({count}):")
            if kind == "map":
                self.read("string", d + 2, key, ns)
                self.read(schema["values"], d + 2, item, ns)
                self.emit(d + 2, f"{target}[{key}] = {item}")
            else:
                self.read(schema["items"], d + 2, item, ns)
                self.emit(d + 2, f"{target}.append({item})")

    def record_reader(self, name: str, schema: dict[str, Any]) -> None:
        ns = schema["_ns"]
        self.emit(0, f"def _read_{_ident(name)}(data, pos, size):")
        names = []
        for f in schema["fields"]:
            v = self.var("f")
            names.append((f["name"], v))
            self.read(f["type"], 1, v, ns)
        body = ", ".join(f"{n!r}: {v}" for n, v in names)
        self.emit(1, f"return {{{body}}}, pos")
        self.emit(0, "")

    # -- writers ------------------------------------------------------------------------

    def write_long(self, d: int, value: str) -> None:
        n = self.var("n")
        self.emit(d, f"{n} = ({value} << 1) ^ ({value} >> 63)")
        self.emit(d, f"while {n} > 127:")
        self.emit(d + 1, f"out.append(({n} & 127) | 128)")
        self.emit(d + 1, f"{n} >>= 7")
        self.emit(d, f"out.append({n})")

    def write(self, schema: Any, d: int, value: str, ns: str | None) -> None:
        schema = self.resolve(schema, ns)
        if isinstance(schema, list):
            other = [(i, s) for i, s in enumerate(schema) if s != "null"]
            nulls = [i for i, s in enumerate(schema) if s == "null"]
            if nulls and other:
                self.emit(d, f"if {value} is None:")
                self.emit(d + 1, f"out.append({2 * nulls[0]})")
                self.emit(d, "else:")
                self.emit(d + 1, f"out.append({2 * other[0][0]})")
                self.write(other[0][1], d + 1, value, ns)
            elif nulls:
                self.emit(d, f"if {value} is not None:")
                self.emit(d + 1, "raise TypeError('a null-only union got a value')")
                self.emit(d, f"out.append({2 * nulls[0]})")
            else:
                self.emit(d, f"out.append({2 * other[0][0]})")
                self.write(other[0][1], d, value, ns)
            return
        if isinstance(schema, str):
            if schema == "null":
                self.emit(d, f"if {value} is not None:")
                self.emit(d + 1, "raise TypeError('null field got a value')")
            elif schema == "boolean":
                self.emit(d, f"out.append(1 if {value} else 0)")
            elif schema in ("int", "long"):
                self.write_long(d, value)
            elif schema in ("float", "double"):
                fn = "_pack_double" if schema == "double" else "_pack_float"
                self.emit(d, f"out += {fn}({value})")
            elif schema in ("string", "bytes"):
                raw = self.var("t")
                if schema == "string":
                    self.emit(d, f"{raw} = {value}.encode()")
                else:
                    self.emit(d, f"{raw} = {value}")
                self.write_long(d, f"len({raw})")
                self.emit(d, f"out += {raw}")
            return
        kind = schema["type"]
        if kind == "record":
            self.emit(d, f"_write_{_ident(_full(schema['name'], schema['_ns']))}(out, {value})")
        elif kind == "enum":
            self.write_long(d, f"{self.const({s: i for i, s in enumerate(schema['symbols'])})}"
                               f"[{value}]")
        elif kind in ("array", "map"):
            item, key = self.var("x"), self.var("k")
            self.emit(d, f"if len({value}) > 0:")
            self.write_long(d + 1, f"len({value})")
            if kind == "map":
                self.emit(d + 1, f"for {key}, {item} in {value}.items():")
                self.write("string", d + 2, key, ns)
                self.write(schema["values"], d + 2, item, ns)
            else:
                self.emit(d + 1, f"for {item} in {value}:")
                self.write(schema["items"], d + 2, item, ns)
            self.emit(d, "out.append(0)")

    def record_writer(self, name: str, schema: dict[str, Any]) -> None:
        ns = schema["_ns"]
        self.emit(0, f"def _write_{_ident(name)}(out, r):")
        if not schema["fields"]:
            self.emit(1, "pass")
        for f in schema["fields"]:
            v = self.var("f")
            ftype = f["type"]
            nullable = ftype == "null" or (isinstance(ftype, list) and "null" in ftype)
            if "default" in f:
                self.emit(1, f"{v} = r.get({f['name']!r}, {self.const(f['default'])})")
            elif nullable:
                self.emit(1, f"{v} = r.get({f['name']!r})")
            else:
                self.emit(1, f"{v} = r[{f['name']!r}]")
            self.write(ftype, 1, v, ns)
        self.emit(0, "")


def _full(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _ident(name: str) -> str:
    return name.replace(".", "_")


def native_available() -> bool:
    """Whether the C extension was built where this package was installed."""
    return _NATIVE is not None


def compile_schema(schema: dict[str, Any], *, native: bool = True) -> CompiledSchema | None:
    """Compile a record schema; None when it uses a type we leave to fastavro.

    `native=False` keeps the generated Python even when the C extension is there
    (the tests compare the two)."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    gen = _Gen()
    try:
        gen.collect(schema, schema.get("namespace"))
    except _Unsupported:
        return None
    if native and _NATIVE is not None:
        # The program needs only the walk above: no Python is generated to be dropped
        # (generating and compiling it is most of a process's start-up registry).
        try:
            program = _Program(gen).of(schema, schema.get("namespace"))
        except _Unsupported:
            pass
        else:
            return CompiledSchema(read=functools.partial(_NATIVE.read, program),
                                  write=functools.partial(_NATIVE.write, program),
                                  native=True)
    for name, rec in gen.records.items():
        if rec["type"] == "record":
            gen.record_reader(name, rec)
            gen.record_writer(name, rec)
    top = _ident(_full(schema["name"], schema.get("namespace")))
    gen.emit(0, "def read(data, pos):")
    gen.emit(1, f"return _read_{top}(data, pos, len(data))")
    gen.emit(0, "")
    gen.emit(0, "def write(r):")
    gen.emit(1, "out = bytearray()")
    gen.emit(1, f"_write_{top}(out, r)")
    gen.emit(1, "return bytes(out)")
    namespace = gen.run(f"<avro {schema.get('name')}>", {
        "_unpack_double": struct.Struct("<d").unpack_from,
        "_unpack_float": struct.Struct("<f").unpack_from,
        "_pack_double": struct.Struct("<d").pack,
        "_pack_float": struct.Struct("<f").pack,
    })
    return CompiledSchema(read=namespace["read"], write=namespace["write"], source=gen.text())


# Codes and node layouts shared with _native.c (its header comment lists them).
_NULL, _BOOLEAN, _LONG, _FLOAT, _DOUBLE, _STRING, _BYTES = range(7)
_RECORD, _ENUM, _ARRAY, _MAP, _UNION = range(7, 12)
_PRIMITIVE_CODES = {"null": _NULL, "boolean": _BOOLEAN, "int": _LONG, "long": _LONG,
                    "float": _FLOAT, "double": _DOUBLE, "string": _STRING, "bytes": _BYTES}
_REQUIRED, _DEFAULT, _NULLABLE = range(3)


class _Program:
    """The schema as the tuples `_native` interprets, with exactly the reading and
    writing rules of the generated Python (defaults, nullable fields, unions)."""

    def __init__(self, gen: _Gen) -> None:
        self.gen = gen
        self.done: dict[str, Any] = {}
        self.building: set[str] = set()

    def of(self, schema: Any, ns: str | None) -> Any:
        schema = self.gen.resolve(schema, ns)
        if isinstance(schema, list):
            branches = tuple(self.of(b, ns) for b in schema)
            other = [i for i, b in enumerate(schema) if b != "null"]
            nulls = [i for i, b in enumerate(schema) if b == "null"]
            return (_UNION, branches, nulls[0] if nulls else -1, other[0] if other else -1,
                    branches[other[0]] if other else None)
        if isinstance(schema, str):
            return _PRIMITIVE_CODES[schema]
        kind = schema["type"]
        if kind == "enum":
            symbols = tuple(schema["symbols"])
            return (_ENUM, symbols, {s: i for i, s in enumerate(symbols)})
        if kind == "array":
            return (_ARRAY, self.of(schema["items"], ns))
        if kind == "map":
            return (_MAP, self.of(schema["values"], ns))
        name = _full(schema["name"], schema["_ns"])
        if name in self.done:
            return self.done[name]
        if name in self.building:  # a recursive type: tuples cannot hold the cycle
            raise _Unsupported(f"recursive record {name}")
        self.building.add(name)
        fields = schema["fields"]
        modes, defaults = [], []
        for f in fields:
            ftype = f["type"]
            nullable = ftype == "null" or (isinstance(ftype, list) and "null" in ftype)
            modes.append(_DEFAULT if "default" in f else _NULLABLE if nullable else _REQUIRED)
            defaults.append(f.get("default"))
        node = (_RECORD, tuple(sys.intern(f["name"]) for f in fields),
                tuple(self.of(f["type"], schema["_ns"]) for f in fields),
                tuple(modes), tuple(defaults))
        self.building.discard(name)
        self.done[name] = node
        return node
