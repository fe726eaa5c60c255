"""Make an ORT-format file the same bytes on every conversion of the same model.

onnxruntime's serializer writes the kernel type-string resolver (which type constraint of each operator maps to
which input or output) from an unordered container: the entries are the same each time and in the same order,
but the nested tables land in a different order in the buffer, and the part before the model sometimes comes out
8 bytes longer, so two conversions of one model differ in their first kilobyte or so and sometimes in length
(measured: 4 different files from 5 conversions of the demo CNN; 2,000 of the 3.4 MB of PP-OCRv6 recognition's .ort,
all before the model table). Everything from the model table on is the same bytes.

A flatbuffer is written back to front and its offsets point forward, so the model's bytes are self-contained: this
module keeps them as they are, at the end, and writes the root table, the version string and the resolver in front
of them again in one fixed order, from their contents. The distance of every model byte from the end of the buffer
is unchanged, and the new length is a multiple of ``ALIGN``, a multiple of every alignment the schema uses (8 at
most), so every offset and alignment inside the model holds whatever length onnxruntime's own part had.
Best effort: a file laid out otherwise than expected (a table with a field this does not know, the resolver after
the model) or any failure leaves the file exactly as onnxruntime wrote it, with a warning that it is then not the
same bytes from run to run.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["ALIGN", "canonical_ort", "ort_root", "ort_schema"]

logger = logging.getLogger(__name__)

ALIGN = 64
_IDENTIFIER = b"ORTM"
# fields each table of the rewritten part has in the schema this was written against (the root's third, a
# deprecated session state, must be absent): a file with more is from a newer schema, and is left as written
_ROOT_FIELDS, _RESOLVER_FIELDS, _ENTRY_FIELDS, _ARG_FIELDS = 4, 1, 2, 2

Resolver = list[tuple[bytes, list[tuple[bytes, list[tuple[int, int]]]]]]


class _UnexpectedLayoutError(Exception):
    """The file is not laid out as this module expects."""


def ort_schema() -> Any:
    """onnxruntime's generated flatbuffer classes for the ORT format, shipped with its tools."""
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on sys.path)
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    return fbs


def ort_root(data: bytes | memoryview) -> Any:
    """The InferenceSession table of an ORT-format buffer (its model, resolver and version)."""
    return ort_schema().InferenceSession.InferenceSession.GetRootAs(data, 0)


def canonical_ort(data: bytes) -> bytes | memoryview:
    """``data`` (an ORT-format file) with the part onnxruntime lays out differently on each conversion rewritten
    in a fixed layout; ``data`` itself where the file is not laid out as this expects. The model's bytes are
    copied once, into the new buffer, whose view is returned: a large .ort costs about twice its size."""
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        return data
    try:
        return _canonical(data)
    except Exception as exc:  # best effort: any failure keeps onnxruntime's own file
        logger.warning("the .ort is written as onnxruntime wrote it, not the same bytes from run to run: %s", exc)
        return data


def _canonical(data: bytes) -> memoryview:
    import flatbuffers

    fbs = ort_schema()
    root = ort_root(data)
    _known_fields(root, _ROOT_FIELDS, "the root table")
    model, resolver = root.Model(), root.KernelTypeStrResolver()
    if model is None or root._tab.Offset(8) != 0:
        raise _UnexpectedLayoutError("no model, or a (deprecated) session state")
    start = model._tab.Pos
    cut = min(start, start - flatbuffers.encode.Get(flatbuffers.packer.soffset, data, start))  # its vtable, if before
    if resolver is not None and resolver._tab.Pos >= cut:
        raise _UnexpectedLayoutError("the resolver comes after the model")
    contents = _read_resolver(resolver) if resolver is not None else None
    model_bytes = memoryview(data)[cut:]
    out = _rebuild(fbs, model_bytes, len(data) - start, root.OrtVersion(), contents, cut)
    back = ort_root(out).KernelTypeStrResolver()
    if out[len(out) - len(model_bytes) :] != model_bytes or (_read_resolver(back) if back else None) != contents:
        raise _UnexpectedLayoutError("the rewrite did not read back the same")
    return out


def _known_fields(table: Any, known: int, what: str) -> None:
    """Refuse a table whose vtable sets a field past the ``known`` ones: a field this rewrite would drop."""
    import flatbuffers

    tab = table._tab
    vtable = tab.Pos - flatbuffers.encode.Get(flatbuffers.packer.soffset, tab.Bytes, tab.Pos)
    slots = (flatbuffers.encode.Get(flatbuffers.packer.voffset, tab.Bytes, vtable) - 4) // 2
    if any(tab.Offset(4 + 2 * i) for i in range(known, slots)):
        raise _UnexpectedLayoutError(f"{what} has a field this does not know")


def _read_resolver(resolver: Any) -> Resolver:
    _known_fields(resolver, _RESOLVER_FIELDS, "the resolver")
    out: Resolver = []
    for i in range(resolver.OpKernelTypeStrArgsLength()):
        entry = resolver.OpKernelTypeStrArgs(i)
        _known_fields(entry, _ENTRY_FIELDS, "a resolver entry")
        kinds = []
        for j in range(entry.KernelTypeStrArgsLength()):
            kind = entry.KernelTypeStrArgs(j)
            _known_fields(kind, _ENTRY_FIELDS, "a resolver entry")
            args = []
            for a in range(kind.ArgsLength()):
                arg = kind.Args(a)
                _known_fields(arg, _ARG_FIELDS, "a resolver argument")
                args.append((arg.ArgType(), arg.Index()))
            kinds.append((kind.KernelTypeStr(), args))
        out.append((entry.OpId(), kinds))
    return out


def _rebuild(
    fbs: Any, model: memoryview, model_offset: int, version: bytes | None, resolver: Resolver | None, prefix: int
) -> memoryview:
    """Root, version and resolver written in front of the model's bytes, children before parents, in order.
    ``prefix``: what onnxruntime's take; room for twice that keeps the builder from doubling its buffer."""
    import flatbuffers

    b = flatbuffers.Builder(len(model) + 2 * prefix + 4096)
    b.Bytes[len(b.Bytes) - len(model) :] = model
    b.head = len(b.Bytes) - len(model)
    b.minalign = ALIGN
    strings: dict[bytes, int] = {}  # each string once, as onnxruntime shares them (CreateSharedString is newer)
    res = _write_resolver(fbs, b, resolver, strings) if resolver is not None else None
    ver = b.CreateString(version) if version is not None else None
    s = fbs.InferenceSession
    s.InferenceSessionStart(b)
    if ver is not None:
        s.InferenceSessionAddOrtVersion(b, ver)
    s.InferenceSessionAddModel(b, model_offset)
    if res is not None:
        s.InferenceSessionAddKernelTypeStrResolver(b, res)
    b.Finish(s.InferenceSessionEnd(b), file_identifier=_IDENTIFIER)
    return memoryview(b.Bytes)[b.Head() :]


def _offsets(b: Any, start: Any, items: list[int]) -> int:
    start(b, len(items))
    for off in reversed(items):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _write_resolver(fbs: Any, b: Any, resolver: Resolver, strings: dict[bytes, int]) -> int:
    arg = fbs.ArgTypeAndIndex
    entries = []
    for op_id, kinds in resolver:
        kind_offs = []
        for name, args in kinds:
            arg_offs = []
            for arg_type, index in args:
                arg.ArgTypeAndIndexStart(b)
                arg.ArgTypeAndIndexAddArgType(b, arg_type)
                arg.ArgTypeAndIndexAddIndex(b, index)
                arg_offs.append(arg.ArgTypeAndIndexEnd(b))
            kind = ("KernelTypeStrArgsEntry", "KernelTypeStr", "Args")
            kind_offs.append(_keyed(fbs, b, kind, _string(b, strings, name), arg_offs))
        entry = ("OpIdKernelTypeStrArgsEntry", "OpId", "KernelTypeStrArgs")
        entries.append(_keyed(fbs, b, entry, _string(b, strings, op_id), kind_offs))
    r = fbs.KernelTypeStrResolver
    vec = _offsets(b, r.KernelTypeStrResolverStartOpKernelTypeStrArgsVector, entries)
    r.KernelTypeStrResolverStart(b)
    r.KernelTypeStrResolverAddOpKernelTypeStrArgs(b, vec)
    return int(r.KernelTypeStrResolverEnd(b))


def _string(b: Any, strings: dict[bytes, int], text: bytes) -> int:
    if text not in strings:
        strings[text] = int(b.CreateString(text))
    return strings[text]


def _keyed(fbs: Any, b: Any, table: tuple[str, str, str], key: int, children: list[int]) -> int:
    """One entry of a sorted map (table name, key field, children field): its string key (already written) and its
    children's vector, through the functions flatc generates for that table (``<Table>Start``, ...)."""
    name, key_field, vec_field = table
    mod = getattr(fbs, name)
    vec = _offsets(b, getattr(mod, f"{name}Start{vec_field}Vector"), children)
    getattr(mod, f"{name}Start")(b)
    getattr(mod, f"{name}Add{key_field}")(b, key)
    getattr(mod, f"{name}Add{vec_field}")(b, vec)
    return int(getattr(mod, f"{name}End")(b))
