"""Make an ORT-format file the same bytes on every conversion of the same model.

onnxruntime's serializer writes the kernel type-string resolver (which type constraint of each operator maps to
which input or output) from an unordered container: the entries are the same each time and in the same order,
but the nested tables land in a different order in the buffer, so two conversions of one model differ in their
first kilobyte or so (measured: 4 different files from 5 conversions of the demo CNN; 2,000 of the 3.4 MB of
PP-OCRv6 recognition's .ort, all before the model table). Everything from the model table on is the same bytes.

A flatbuffer is written back to front and its offsets point forward, so the model's bytes are self-contained: this
module keeps them as they are, at the end, and writes the root table, the version string and the resolver in front
of them again in one fixed order, from their contents. The distance of every model byte from the end of the buffer
is unchanged and the total length keeps its alignment, so every offset and alignment inside the model holds.
A file laid out otherwise than expected is left exactly as onnxruntime wrote it.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["canonical_ort"]

logger = logging.getLogger(__name__)

_ROOT_FIELDS = 4  # InferenceSession: ort_version, model, (deprecated) session_state, kernel_type_str_resolver
_IDENTIFIER = b"ORTM"
_MAX_ALIGN = 64

Resolver = list[tuple[bytes, list[tuple[bytes, list[tuple[int, int]]]]]]


def _fbs() -> Any:
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on sys.path)
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    return fbs


def canonical_ort(data: bytes) -> bytes | memoryview:
    """``data`` (an ORT-format file) with the part onnxruntime lays out differently on each conversion rewritten
    in a fixed layout; ``data`` itself where the file is not laid out as this expects. The model's bytes are
    copied once, into the new buffer, whose view is returned: a large .ort costs about twice its size."""
    buf = data
    if len(buf) < 8 or buf[4:8] != _IDENTIFIER:
        return data
    try:
        import flatbuffers

        fbs = _fbs()
    except ImportError as exc:  # an onnxruntime build without its tools: the file as it was written
        logger.debug("ORT file left as written: %s", exc)
        return data
    root = fbs.InferenceSession.InferenceSession.GetRootAs(buf, 0)
    model, resolver = root.Model(), root.KernelTypeStrResolver()
    if model is None or root._tab.Offset(8) != 0:  # no model, or the deprecated session state: not this layout
        logger.debug("ORT file left as written: unexpected root table")
        return data
    start = model._tab.Pos
    vtable = start - flatbuffers.encode.Get(flatbuffers.packer.soffset, buf, start)
    cut = min(start, vtable)
    align = _alignment(len(buf))
    if resolver is not None and resolver._tab.Pos >= cut:  # the resolver was written before the model
        logger.debug("ORT file left as written: resolver after the model")
        return data
    contents = _read_resolver(resolver) if resolver is not None else None
    try:
        out = _rebuild(fbs, memoryview(data)[cut:], len(buf) - start, root.OrtVersion(), contents, cut, align)
    except (AttributeError, TypeError, ValueError) as exc:  # flatbuffers or generated code older than expected
        logger.debug("ORT file left as written: %s", exc)
        return data
    return out if _same_contents(fbs, out, contents, memoryview(data)[cut:]) else data


def _alignment(length: int) -> int:
    """The largest power of two up to ``_MAX_ALIGN`` dividing ``length``: at least the alignment the buffer was
    finished to, so a buffer of a length that is a multiple of it keeps every model byte's alignment."""
    a = 1
    while a < _MAX_ALIGN and length % (2 * a) == 0:
        a *= 2
    return a


def _read_resolver(resolver: Any) -> Resolver:
    out: Resolver = []
    for i in range(resolver.OpKernelTypeStrArgsLength()):
        entry = resolver.OpKernelTypeStrArgs(i)
        kinds = []
        for j in range(entry.KernelTypeStrArgsLength()):
            kind = entry.KernelTypeStrArgs(j)
            args = [(kind.Args(a).ArgType(), kind.Args(a).Index()) for a in range(kind.ArgsLength())]
            kinds.append((kind.KernelTypeStr(), args))
        out.append((entry.OpId(), kinds))
    return out


def _rebuild(
    fbs: Any,
    model: memoryview,
    model_offset: int,
    version: bytes | None,
    resolver: Resolver | None,
    prefix: int,
    align: int,
) -> memoryview:
    """Root, version and resolver written in front of the model's bytes, children before parents, in order.
    ``prefix``: what onnxruntime's take; room for twice that keeps the builder from doubling its buffer."""
    import flatbuffers

    b = flatbuffers.Builder(len(model) + 2 * prefix + 4096)
    b.Bytes[len(b.Bytes) - len(model) :] = model
    b.head = len(b.Bytes) - len(model)
    b.minalign = align
    res = _write_resolver(fbs, b, resolver) if resolver is not None else None
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


def _write_resolver(fbs: Any, b: Any, resolver: Resolver) -> int:
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
            kind_offs.append(_keyed(fbs, b, ("KernelTypeStrArgsEntry", "KernelTypeStr", "Args"), name, arg_offs))
        entries.append(_keyed(fbs, b, ("OpIdKernelTypeStrArgsEntry", "OpId", "KernelTypeStrArgs"), op_id, kind_offs))
    r = fbs.KernelTypeStrResolver
    vec = _offsets(b, r.KernelTypeStrResolverStartOpKernelTypeStrArgsVector, entries)
    r.KernelTypeStrResolverStart(b)
    r.KernelTypeStrResolverAddOpKernelTypeStrArgs(b, vec)
    return int(r.KernelTypeStrResolverEnd(b))


def _keyed(fbs: Any, b: Any, table: tuple[str, str, str], key: bytes, children: list[int]) -> int:
    """One entry of a sorted map (table name, key field, children field): its string key and its children's
    vector, through the functions flatc generates for that table (``<Table>Start``, ``<Table>Add<Field>``...)."""
    name, key_field, vec_field = table
    mod = getattr(fbs, name)
    vec = _offsets(b, getattr(mod, f"{name}Start{vec_field}Vector"), children)
    key_off = b.CreateSharedString(key)
    getattr(mod, f"{name}Start")(b)
    getattr(mod, f"{name}Add{key_field}")(b, key_off)
    getattr(mod, f"{name}Add{vec_field}")(b, vec)
    return int(getattr(mod, f"{name}End")(b))


def _same_contents(fbs: Any, out: memoryview, resolver: Resolver | None, model: memoryview) -> bool:
    """The rewritten file ends in the model's bytes and reads back the same resolver: else it is not used."""
    back = fbs.InferenceSession.InferenceSession.GetRootAs(out, 0).KernelTypeStrResolver()
    ok = out[len(out) - len(model) :] == model and (_read_resolver(back) if back is not None else None) == resolver
    if not ok:
        logger.debug("ORT file left as written: the rewrite did not read back the same")
    return ok
