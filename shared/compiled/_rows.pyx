# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, infer_types=True
"""Row bytes in, MessagePack bytes out, with no Python object per value (the compiled path).

Loops a profile showed hot, written over the bytes (shared/compiled/__init__.py says how the
bridge picks this module or the pure-Python path):

- `encode_changes`: a read's pgoutput Inserts, Updates and Deletes → each CDC event's
  payload, as `EventBuilder._change` packs it.
- `pack_copy_lines`: `COPY … TO STDOUT` text lines → each row's packed map, as
  `CopyRowPacker.pack_block` packs it.
- `take_copy_lines`: those lines from libpq, a block at a time (`copy_out_blocks`).

The pure-Python code is the reference: the first two stop at, or return None for, anything
they do not take exactly as it does (a binary value, an escape-format bytea, an integer past
64 bits, text that is not UTF-8, a malformed frame, …), and the caller then runs the
reference, which also names what is wrong. tests/unit/test_compiled_rows.py holds the two to the same bytes over generated
input. Values convert as `shared.codec` converts them: KIND_* below are its converters.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

from shared.compiled._buffer cimport Buf, buf_init, buf_room, decimal, put, put_byte


cdef extern from "Python.h":
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception) except? -1.0


# A column's conversion (shared.codec.text): text, int(), float(), as_bool, as_bytea; C
# constants (compared per value), and the same numbers for Python.
cdef enum:
    _STR = 0
    _INT = 1
    _FLOAT = 2
    _BOOL = 3
    _BYTEA = 4

KIND_STR = _STR
KIND_INT = _INT
KIND_FLOAT = _FLOAT
KIND_BOOL = _BOOL
KIND_BYTEA = _BYTEA

cdef uint64_t _U64_MAX = <uint64_t>-1
cdef uint64_t _I64_MAX = (<uint64_t>1 << 63) - 1
cdef uint64_t _U32_MASK = (<uint64_t>1 << 32) - 1

cdef enum:
    _XLOG_HEADER = 25  # 'w', data start, WAL end, send time


# -- an output buffer ---------------------------------------------------------------------------

cdef inline int put_be(Buf *b, uint64_t v, int width) except -1:
    """`width` bytes of `v`, big-endian."""
    cdef int i
    buf_room(b, width)
    for i in range(width):
        b.data[b.size + i] = <char>((v >> (8 * (width - 1 - i))) & 0xFF)
    b.size += width
    return 0


cdef inline int put_head(Buf *b, Py_ssize_t n, uint8_t fix, uint8_t fix_limit, uint8_t m8,
                         uint8_t m16, uint8_t m32) except -1:
    """A MessagePack length header: the fix form below `fix_limit`, then 8 (m8 != 0), 16 and
    32 bits."""
    if n < fix_limit:
        return put_byte(b, fix | <uint8_t>n)
    if m8 and n < 0x100:
        put_byte(b, m8)
        return put_byte(b, <uint8_t>n)
    if n < 0x10000:
        put_byte(b, m16)
        return put_be(b, <uint64_t>n, 2)
    put_byte(b, m32)
    return put_be(b, <uint64_t>n, 4)


cdef inline int put_str(Buf *b, const char *s, Py_ssize_t n) except -1:
    put_head(b, n, 0xA0, 32, 0xD9, 0xDA, 0xDB)
    return put(b, s, n)


cdef inline int put_map_head(Buf *b, Py_ssize_t n) except -1:
    return put_head(b, n, 0x80, 16, 0, 0xDE, 0xDF)


cdef inline int put_array_head(Buf *b, Py_ssize_t n) except -1:
    return put_head(b, n, 0x90, 16, 0, 0xDC, 0xDD)


cdef int put_int(Buf *b, int64_t d) except -1:
    """msgpack's own choice of width for a Python int (its pack_template.h)."""
    if d < -(1 << 5):
        if d < -(1 << 15):
            if d < -(<int64_t>1 << 31):
                put_byte(b, 0xD3)
                return put_be(b, <uint64_t>d, 8)
            put_byte(b, 0xD2)
            return put_be(b, <uint64_t>(<uint32_t>d), 4)
        if d < -(1 << 7):
            put_byte(b, 0xD1)
            return put_be(b, <uint64_t>d & 0xFFFF, 2)
        put_byte(b, 0xD0)
        return put_byte(b, <uint8_t>(d & 0xFF))
    if d < (1 << 7):
        return put_byte(b, <uint8_t>(d & 0xFF))
    if d < (1 << 8):
        put_byte(b, 0xCC)
        return put_byte(b, <uint8_t>d)
    if d < (1 << 16):
        put_byte(b, 0xCD)
        return put_be(b, <uint64_t>d, 2)
    if d < (<int64_t>1 << 32):
        put_byte(b, 0xCE)
        return put_be(b, <uint64_t>d, 4)
    put_byte(b, 0xCF)
    return put_be(b, <uint64_t>d, 8)


cdef object buf_bytes(Buf *b):
    return PyBytes_FromStringAndSize(b.data, b.size)


# -- values: 1 packed, 0 not taken here (the reference decides) -----------------------------

cdef uint64_t _HIGH_BITS = 0x8080808080808080ULL


cdef inline bint utf8_valid(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    """Exactly what Python's strict UTF-8 decoder accepts (no surrogates, no overlongs, at most
    U+10FFFF)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    cdef uint64_t word
    while i < n:
        if i + 8 <= n:  # eight ASCII bytes at a time (nearly all text)
            memcpy(&word, s + i, 8)
            if not (word & _HIGH_BITS):
                i += 8
                continue
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif 0xE0 <= c <= 0xEF:
            if i + 2 >= n:
                return False
            c1 = s[i + 1]
            if c == 0xE0:
                if not (0xA0 <= c1 <= 0xBF):
                    return False
            elif c == 0xED:
                if not (0x80 <= c1 <= 0x9F):
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (s[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
        elif 0xF0 <= c <= 0xF4:
            if i + 3 >= n:
                return False
            c1 = s[i + 1]
            if c == 0xF0:
                if not (0x90 <= c1 <= 0xBF):
                    return False
            elif c == 0xF4:
                if not (0x80 <= c1 <= 0x8F):
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
                return False
            i += 4
        else:
            return False
    return True


cdef inline int hex_digit(uint8_t c) noexcept nogil:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    return -1


cdef int put_int_text(Buf *b, const uint8_t *s, Py_ssize_t n) except -1:
    """PostgreSQL's integer output (`-?[0-9]+`), from -2**63 to 2**64 - 1: int() reads it
    the same, and msgpack packs it so (anything longer is the reference's)."""
    cdef Py_ssize_t i = 0
    cdef uint64_t v = 0, digit
    cdef bint negative = False
    if n and s[0] == 0x2D:
        negative = True
        i = 1
    if i == n or n - i > 20:
        return 0
    while i < n:
        if not (0x30 <= s[i] <= 0x39):
            return 0
        digit = s[i] - 0x30
        if v > (_U64_MAX - digit) // 10:
            return 0
        v = v * 10 + digit
        i += 1
    if negative:
        if v > (<uint64_t>1 << 63):
            return 0
        put_int(b, <int64_t>(0 - v))  # two's complement: -2**63 too
    elif v > _I64_MAX:
        put_byte(b, 0xCF)
        put_be(b, v, 8)
    else:
        put_int(b, <int64_t>v)
    return 1


cdef bint float_text(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    """PostgreSQL's float output: `-?D+(.D+)?(e[+-]D+)?`, `NaN`, `Infinity`, `-Infinity`."""
    cdef Py_ssize_t i = 0, start
    if n and s[0] == 0x2D:
        i = 1
    if n - i == 8 and s[i] == 0x49:  # Infinity
        return memcmp(s + i, b"Infinity", 8) == 0
    if i == 0 and n == 3 and s[0] == 0x4E:
        return memcmp(s, b"NaN", 3) == 0
    start = i
    while i < n and 0x30 <= s[i] <= 0x39:
        i += 1
    if i == start:
        return False
    if i < n and s[i] == 0x2E:
        i += 1
        start = i
        while i < n and 0x30 <= s[i] <= 0x39:
            i += 1
        if i == start:
            return False
    if i < n and (s[i] == 0x65 or s[i] == 0x45):
        i += 1
        if i < n and (s[i] == 0x2B or s[i] == 0x2D):
            i += 1
        start = i
        while i < n and 0x30 <= s[i] <= 0x39:
            i += 1
        if i == start:
            return False
    return i == n


cdef int put_float_text(Buf *b, const uint8_t *s, Py_ssize_t n) except -1:
    cdef char text[64]
    cdef char *end
    cdef double value
    cdef uint64_t bits
    if n >= 64 or not float_text(s, n):
        return 0
    memcpy(text, s, n)
    text[n] = 0
    value = PyOS_string_to_double(text, &end, NULL)  # float()'s own parser
    if end != text + n:
        return 0
    memcpy(&bits, &value, 8)
    put_byte(b, 0xCB)
    put_be(b, bits, 8)
    return 1


cdef int put_bytea_text(Buf *b, const uint8_t *s, Py_ssize_t n) except -1:
    """The `hex` bytea output (`\\x0a0b`); the `escape` output is the reference's."""
    cdef Py_ssize_t i, count
    cdef int hi, lo
    if n < 2 or s[0] != 0x5C or s[1] != 0x78 or (n - 2) % 2:
        return 0
    count = (n - 2) // 2
    for i in range(2, n):
        if hex_digit(s[i]) < 0:
            return 0
    put_head(b, count, 0, 0, 0xC4, 0xC5, 0xC6)
    buf_room(b, count)
    for i in range(count):
        hi = hex_digit(s[2 + 2 * i])
        lo = hex_digit(s[3 + 2 * i])
        b.data[b.size + i] = <char>((hi << 4) | lo)
    b.size += count
    return 1


cdef int put_value(Buf *b, const uint8_t *s, Py_ssize_t n, uint8_t kind) except -1:
    """One column's text output, converted as `shared.codec` converts it, packed."""
    if kind == _STR:
        if not utf8_valid(s, n):
            return 0
        put_str(b, <const char *>s, n)
        return 1
    if kind == _INT:
        return put_int_text(b, s, n)
    if kind == _FLOAT:
        return put_float_text(b, s, n)
    if kind == _BOOL:
        if n == 1 and s[0] == 0x74:
            return put_byte(b, 0xC3) + 1
        if n == 1 and s[0] == 0x66:
            return put_byte(b, 0xC2) + 1
        return 0
    if kind == _BYTEA:
        return put_bytea_text(b, s, n)
    return 0


# -- a table's columns ---------------------------------------------------------------------------

cdef class RowShape:
    """A table's columns as the compiled loops need them: each name packed, each conversion
    (KIND_*), which are key columns."""

    cdef readonly Py_ssize_t width
    cdef bytes _names  # the packed names, one after another
    cdef Py_ssize_t *_offsets  # width + 1 offsets into _names
    cdef bytes _kinds
    cdef bytes _keys

    def __cinit__(self, names, kinds, keys=None, *more):
        cdef Py_ssize_t i
        self.width = len(names)
        if len(kinds) != self.width or (keys is not None and len(keys) != self.width):
            raise ValueError("one kind and one key flag per column")
        packed = []
        self._offsets = <Py_ssize_t *>PyMem_Malloc((self.width + 1) * sizeof(Py_ssize_t))
        if self._offsets == NULL:
            raise MemoryError()
        self._offsets[0] = 0
        for i, name in enumerate(names):
            encoded = name.encode()
            one = _packed_str(encoded)
            packed.append(one)
            self._offsets[i + 1] = self._offsets[i] + len(one)
        self._names = b"".join(packed)
        for kind in kinds:
            if kind > _BYTEA:
                raise ValueError(f"unknown column kind {kind}")
        self._kinds = bytes(kinds)
        self._keys = bytes(keys) if keys is not None else bytes(self.width)

    def __dealloc__(self):
        PyMem_Free(self._offsets)

    cdef inline int put_name(self, Buf *b, Py_ssize_t i) except -1:
        return put(b, PyBytes_AS_STRING(self._names) + self._offsets[i],
                   self._offsets[i + 1] - self._offsets[i])


cdef bytes _packed_str(bytes encoded):
    cdef Buf b
    buf_init(&b, len(encoded) + 5)
    try:
        put_str(&b, PyBytes_AS_STRING(encoded), len(encoded))
        return buf_bytes(&b)
    finally:
        PyMem_Free(b.data)


cdef class ChangeShape(RowShape):
    """A published table's `RowShape` with what its events repeat: per operation (insert,
    update, delete) the subject and the packed head of the event map, and its subject token."""

    cdef readonly tuple subjects
    cdef readonly str token
    cdef tuple _heads

    def __init__(self, names, kinds, keys, heads, subjects, token):
        self._heads = tuple(heads)
        self.subjects = tuple(subjects)
        self.token = token
        if len(self._heads) != 3 or len(self.subjects) != 3:
            raise ValueError("one head and one subject per operation")


# -- pgoutput ----------------------------------------------------------------------------------

cdef enum:
    _MODE_NEW = 0  # every column; 'u' columns listed apart
    _MODE_OLD = 1  # every column but 'u' ones
    _MODE_KEY = 2  # key columns only (the others are NULL in a key tuple)


cdef Py_ssize_t read_tuple(const uint8_t *p, Py_ssize_t pos, Py_ssize_t size, RowShape shape,
                           int mode, Buf *entries, Py_ssize_t *count, Buf *unchanged,
                           Py_ssize_t *unchanged_count) except -2:
    """A TupleData at `pos`, its map entries into `entries`: the position after it, or -1 when
    the reference has to read it."""
    cdef Py_ssize_t ncols, i, length
    cdef uint8_t kind, col_kind
    cdef const uint8_t *keys = <const uint8_t *>PyBytes_AS_STRING(shape._keys)
    cdef const uint8_t *kinds = <const uint8_t *>PyBytes_AS_STRING(shape._kinds)
    if pos + 2 > size:
        return -1
    ncols = (p[pos] << 8) | p[pos + 1]
    pos += 2
    if ncols != shape.width:
        return -1
    for i in range(ncols):
        if pos >= size:
            return -1
        kind = p[pos]
        pos += 1
        if kind == 0x74:  # t
            if pos + 4 > size:
                return -1
            length = ((<uint32_t>p[pos] << 24) | (<uint32_t>p[pos + 1] << 16)
                      | (<uint32_t>p[pos + 2] << 8) | p[pos + 3])
            if p[pos] & 0x80:
                return -1
            pos += 4
            if pos + length > size:
                return -1
            if mode == _MODE_KEY and not keys[i]:
                return -1  # a non-key value in a key tuple: the reference's to judge
            shape.put_name(entries, i)
            if not put_value(entries, p + pos, length, kinds[i]):
                return -1
            count[0] += 1
            pos += length
        elif kind == 0x6E:  # n
            if mode == _MODE_KEY and not keys[i]:
                continue
            shape.put_name(entries, i)
            put_byte(entries, 0xC0)
            count[0] += 1
        elif kind == 0x75:  # u
            if mode == _MODE_NEW:
                shape.put_name(unchanged, i)
                unchanged_count[0] += 1
        else:  # b (binary) or not a kind at all
            return -1
    return pos


cdef inline int put_lsn_text(Buf *b, uint64_t lsn) except -1:
    """`X/Y` (upper-case hex, as PostgreSQL prints an LSN) as a fixstr."""
    cdef char text[20]
    cdef int n = 0
    n = hex_text(text, lsn >> 32, n)
    text[n] = 0x2F
    n = hex_text(text, lsn & _U32_MASK, n + 1)
    return put_str(b, text, n)


cdef const char *_HEX = b"0123456789ABCDEF"


cdef inline int hex_text(char *out, uint64_t v, int at) noexcept:
    cdef char digits[16]
    cdef int n = 0
    if v == 0:
        out[at] = 0x30
        return at + 1
    while v:
        digits[n] = _HEX[v & 0xF]
        v >>= 4
        n += 1
    while n:
        n -= 1
        out[at] = digits[n]
        at += 1
    return at


cdef struct Scratch:
    Buf out
    Buf data
    Buf old
    Buf unchanged


cdef int scratch_init(Scratch *s) except -1:
    s.out.data = s.data.data = s.old.data = s.unchanged.data = NULL
    buf_init(&s.out, 512)
    buf_init(&s.data, 256)
    buf_init(&s.old, 64)
    buf_init(&s.unchanged, 32)
    return 0


cdef void scratch_free(Scratch *s) noexcept:
    PyMem_Free(s.out.data)
    PyMem_Free(s.data.data)
    PyMem_Free(s.old.data)
    PyMem_Free(s.unchanged.data)


cdef ChangeShape encode(bytes raw, dict shapes, bytes tx_middle, bytes tx_time, int64_t ordinal,
                        Scratch *s, int *op_out):
    """The event of one row-change frame into `s.out`: its table's shape (the operation in
    `op_out`), or None for the reference to read the frame."""
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw), pos
    cdef uint8_t kind, marker
    cdef uint32_t oid
    cdef uint64_t lsn = 0
    cdef int op, i
    cdef ChangeShape shape
    cdef Py_ssize_t data_count = 0, old_count = 0, unchanged_count = 0, ignored = 0
    cdef bint has_old = False
    if size < _XLOG_HEADER + 6:
        return None
    kind = p[_XLOG_HEADER]
    if kind == 0x49:
        op = 0
    elif kind == 0x55:
        op = 1
    elif kind == 0x44:
        op = 2
    else:
        return None
    oid = ((<uint32_t>p[26] << 24) | (<uint32_t>p[27] << 16) | (<uint32_t>p[28] << 8) | p[29])
    found = shapes.get(oid)
    if found is None:
        return None
    shape = <ChangeShape>found
    marker = p[30]
    pos = 31
    s.out.size = s.data.size = s.old.size = s.unchanged.size = 0
    if marker == 0x4E:  # N: the new row (an update without an old tuple)
        if op == 2:
            return None
        pos = read_tuple(p, pos, size, shape, _MODE_NEW, &s.data, &data_count, &s.unchanged,
                         &unchanged_count)
    elif (marker == 0x4B or marker == 0x4F) and op != 0:  # K, O: the old key or row
        has_old = True
        pos = read_tuple(p, pos, size, shape, _MODE_KEY if marker == 0x4B else _MODE_OLD,
                         &s.old, &old_count, &s.unchanged, &ignored)
        if pos < 0:
            return None
        if op == 1:
            if pos >= size or p[pos] != 0x4E:
                return None
            pos = read_tuple(p, pos + 1, size, shape, _MODE_NEW, &s.data, &data_count,
                             &s.unchanged, &unchanged_count)
    else:
        return None
    if pos != size:
        return None
    # The map as EventBuilder._change joins it: head (schema, table, operation), lsn,
    # commit_lsn and xid, ordinal, commit_time, data, old, unchanged.
    head = <bytes>shape._heads[op]
    put(&s.out, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
    put(&s.out, b"\xa3lsn", 4)
    for i in range(8):
        lsn = (lsn << 8) | p[1 + i]
    put_lsn_text(&s.out, lsn)
    put(&s.out, PyBytes_AS_STRING(tx_middle), PyBytes_GET_SIZE(tx_middle))
    put(&s.out, b"\xa7ordinal", 8)
    put_int(&s.out, ordinal)
    put(&s.out, PyBytes_AS_STRING(tx_time), PyBytes_GET_SIZE(tx_time))
    put(&s.out, b"\xa4data", 5)
    if op == 2:
        put_byte(&s.out, 0xC0)
    else:
        put_map_head(&s.out, data_count)
        put(&s.out, s.data.data, s.data.size)
    put(&s.out, b"\xa3old", 4)
    if has_old:
        put_map_head(&s.out, old_count)
        put(&s.out, s.old.data, s.old.size)
    else:
        put_byte(&s.out, 0xC0)
    put(&s.out, b"\xa9unchanged", 10)
    put_array_head(&s.out, unchanged_count)
    put(&s.out, s.unchanged.data, s.unchanged.size)
    op_out[0] = op
    return shape


def encode_changes(list frames, Py_ssize_t start, dict shapes, bytes tx_middle, bytes tx_time,
                   int64_t ordinal, bytes msg_id_prefix, dict counts, Py_ssize_t limit,
                   list out, object make):
    """XLogData frames (`w` and their header included) from `frames[start]` on while they are
    Inserts, Updates or Deletes of a table in `shapes` (relation OID → `ChangeShape`) taken
    exactly as `EventBuilder._change` packs them, with payloads of at most `limit` bytes: each
    appended to `out` as `make(subject, payload, msg_id)` (the Msg-Id `msg_id_prefix` and the
    ordinal), `counts` (changes per table token) counted. Returns the index of the first frame not taken and the next ordinal."""
    cdef Scratch s
    cdef int op = 0
    cdef Py_ssize_t i = start, n = len(frames), id_size
    cdef char number[24]
    cdef Buf msg_id
    cdef ChangeShape shape
    scratch_init(&s)
    buf_init(&msg_id, PyBytes_GET_SIZE(msg_id_prefix) + 24)
    put(&msg_id, PyBytes_AS_STRING(msg_id_prefix), PyBytes_GET_SIZE(msg_id_prefix))
    id_size = msg_id.size
    try:
        while i < n:
            frame = frames[i]
            if type(frame) is not bytes:  # the reference's to judge (the reader reads bytes)
                break
            shape = encode(<bytes>frame, shapes, tx_middle, tx_time, ordinal, &s, &op)
            if shape is None or s.out.size > limit:
                break
            msg_id.size = id_size
            put(&msg_id, number, decimal(number, ordinal))
            out.append(make(shape.subjects[op], buf_bytes(&s.out), buf_bytes(&msg_id)))
            token = shape.token
            counts[token] = counts.get(token, 0) + 1
            ordinal += 1
            i += 1
        return i, ordinal
    finally:
        scratch_free(&s)
        PyMem_Free(msg_id.data)


# -- COPY text output ----------------------------------------------------------------------------

cdef int put_copy_field(Buf *b, Buf *scratch, const uint8_t *s, Py_ssize_t n,
                        uint8_t kind) except -1:
    """One field of a COPY text line, its escapes undone (shared/codec/copy_text.py)."""
    cdef Py_ssize_t i = 0, digits
    cdef int value, d
    cdef uint8_t c
    if n == 2 and s[0] == 0x5C and s[1] == 0x4E:  # \N
        return put_byte(b, 0xC0) + 1
    if memchr(s, 0x5C, n) == NULL:
        return put_value(b, s, n, kind)
    scratch.size = 0
    i = 0
    while i < n:
        c = s[i]
        if c != 0x5C or i + 1 == n:  # a trailing backslash stands for itself
            put_byte(scratch, c)
            i += 1
            continue
        c = s[i + 1]
        if 0x30 <= c <= 0x37:  # up to three octal digits
            value = 0
            digits = 0
            while digits < 3 and i + 1 + digits < n and 0x30 <= s[i + 1 + digits] <= 0x37:
                value = value * 8 + (s[i + 1 + digits] - 0x30)
                digits += 1
            put_byte(scratch, <uint8_t>(value & 0xFF))
            i += 1 + digits
        elif c == 0x78 and i + 2 < n and hex_digit(s[i + 2]) >= 0:  # \x and one or two digits
            value = hex_digit(s[i + 2])
            digits = 1
            if i + 3 < n:
                d = hex_digit(s[i + 3])
                if d >= 0:
                    value = value * 16 + d
                    digits = 2
            put_byte(scratch, <uint8_t>value)
            i += 2 + digits
        else:
            if c == 0x62:
                c = 0x08
            elif c == 0x66:
                c = 0x0C
            elif c == 0x6E:
                c = 0x0A
            elif c == 0x72:
                c = 0x0D
            elif c == 0x74:
                c = 0x09
            elif c == 0x76:
                c = 0x0B
            put_byte(scratch, c)
            i += 2
    return put_value(b, <const uint8_t *>scratch.data, scratch.size, kind)


def pack_copy_lines(list lines, RowShape shape):
    """COPY text lines (each with its newline) → one packed `{column: value}` map per line, or
    None for the reference to decode the block."""
    cdef Buf row, scratch
    cdef Py_ssize_t width = shape.width, size, start, end, column
    cdef const uint8_t *p
    cdef const uint8_t *tab
    cdef const uint8_t *kinds = <const uint8_t *>PyBytes_AS_STRING(shape._kinds)
    cdef list packed = []
    if width == 0:
        return None
    buf_init(&row, 256)
    buf_init(&scratch, 64)
    try:
        for line in lines:
            if type(line) is not bytes:  # the reference's to judge (COPY lines are bytes)
                return None
            p = <const uint8_t *>PyBytes_AS_STRING(line)
            size = PyBytes_GET_SIZE(<bytes>line)
            if size and p[size - 1] == 0x0A:
                size -= 1
            row.size = 0
            put_map_head(&row, width)
            start = 0
            column = 0
            while True:
                tab = <const uint8_t *>memchr(p + start, 0x09, size - start)
                end = size if tab == NULL else tab - p
                if column == width:
                    return None  # more fields than columns
                shape.put_name(&row, column)
                if not put_copy_field(&row, &scratch, p + start, end - start, kinds[column]):
                    return None
                column += 1
                if end == size:
                    break
                start = end + 1
            if column != width:
                return None
            packed.append(buf_bytes(&row))
        return packed
    finally:
        PyMem_Free(row.data)
        PyMem_Free(scratch.data)


def take_copy_lines(object get_copy_data, list block, Py_ssize_t limit):
    """Lines of a `COPY … TO STDOUT` from libpq (psycopg's `PGconn.get_copy_data`, asked not
    to wait) onto `block` until it holds `limit`: the last call's byte count, as libpq says it
    (0: nothing buffered now, -1: the COPY ended, -2: an error), or `limit`'s line's. The
    loop `shared.postgres.copy_out_blocks` runs per line, in one call for a block."""
    cdef Py_ssize_t nbytes = 0
    while len(block) < limit:
        nbytes, data = get_copy_data(1)
        if nbytes <= 0:
            return nbytes
        block.append(bytes(data))
    return nbytes
