# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A CDC change event's bytes → the entries a copy reads (the compiled path).

`ChangeReader.read` unpacked every event into a dict of its eleven entries (six of them
strings a copy never reads) and then read five or six. `read_change` picks those from the
MessagePack bytes and builds only them: a dict of `operation`, `commit_lsn`, `commit_time`,
`data`, `old` and (when the event has it) `unchanged`, the values as `msgpack.unpackb(raw=False,
strict_map_key=False)` makes them. Anything else (a
missing entry, another type, a nested value, text that is not UTF-8, bytes that are not
MessagePack) is None: the reference reads the event and says what is wrong with it
(tests/unit/test_compiled_changes.py holds the two to the same changes).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_New, PyDict_SetItem
from cpython.list cimport PyList_Append, PyList_GET_ITEM
from cpython.ref cimport PyObject, Py_DECREF
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy


cdef extern from "Python.h":
    # Not `object`: a NULL (text that is not UTF-8) is answered here, without the cost of
    # a try block on every string.
    PyObject *PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    void PyErr_Clear()
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyBytes_FromStringAndSize(const char *v, Py_ssize_t len)
    object PyFloat_FromDouble(double v)
    object PyLong_FromLongLong(long long v)
    object PyLong_FromUnsignedLongLong(unsigned long long v)


cdef struct Cursor:
    const uint8_t *p
    Py_ssize_t pos
    Py_ssize_t size
    bint bad  # not taken here: the reference reads the event


cdef inline uint64_t be(Cursor *c, int width) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | c.p[c.pos + i]
    c.pos += width
    return v


cdef inline bint need(Cursor *c, Py_ssize_t n) noexcept:
    if c.pos + n > c.size:
        c.bad = True
        return False
    return True


cdef Py_ssize_t length(Cursor *c, uint8_t head, uint8_t fix_mask, uint8_t fix_base,
                       uint8_t m8, uint8_t m16, uint8_t m32) noexcept:
    """The length a str/bin/array/map header says (its bytes consumed), -1 for another type."""
    if fix_mask and (head & fix_mask) == fix_base:
        return head & ~fix_mask
    if m8 and head == m8:
        if not need(c, 1):
            return -1
        return <Py_ssize_t>be(c, 1)
    if head == m16:
        if not need(c, 2):
            return -1
        return <Py_ssize_t>be(c, 2)
    if head == m32:
        if not need(c, 4):
            return -1
        return <Py_ssize_t>be(c, 4)
    return -1


cdef object text(Cursor *c):
    """A str (None, with `bad` set, for anything else)."""
    cdef uint8_t head
    cdef Py_ssize_t n
    cdef PyObject *decoded
    if not need(c, 1):
        return None
    head = c.p[c.pos]
    c.pos += 1
    n = length(c, head, 0xE0, 0xA0, 0xD9, 0xDA, 0xDB)
    if n < 0 or not need(c, n):
        c.bad = True
        return None
    decoded = PyUnicode_DecodeUTF8(<const char *>c.p + c.pos, n, NULL)
    if decoded == NULL:
        PyErr_Clear()
        c.bad = True
        return None
    value = <object>decoded  # a new reference, taken over
    Py_DECREF(value)
    c.pos += n
    return value


# The strings every event of a table repeats (its columns' names, the operation, a
# transaction's commit LSN and time): the one read last at each place is kept, and a key whose
# bytes are the same is that str again, not a new one decoded (and hashed again by the dict).
cdef enum:
    KEPT = 64
cdef list _kept = [None] * KEPT  # 0-2: operation, commit LSN, commit time; 3-: row keys


cdef object kept_text(Cursor *c, Py_ssize_t at):
    """`text`, answered from `_kept[at]` when its bytes are that ASCII str's."""
    cdef uint8_t head
    cdef Py_ssize_t n
    if at >= KEPT or not need(c, 1):
        return text(c)
    head = c.p[c.pos]
    if (head & 0xE0) != 0xA0:  # a fixstr (the names and LSNs are short); else decoded
        return text(c)
    n = head & 0x1F
    kept = <object>PyList_GET_ITEM(_kept, at)
    if (kept is not None and PyUnicode_IS_COMPACT_ASCII(kept) and PyUnicode_GET_LENGTH(kept) == n
            and c.pos + 1 + n <= c.size
            and memcmp(PyUnicode_DATA(kept), c.p + c.pos + 1, n) == 0):
        c.pos += 1 + n
        return kept
    value = text(c)
    if not c.bad:
        _kept[at] = value
    return value


cdef object scalar(Cursor *c):
    """One value of a row: nil, bool, int, float, str or bin (None with `bad` set for a
    container, an ext or a cut value)."""
    cdef uint8_t head
    cdef Py_ssize_t n
    cdef uint32_t bits32
    cdef uint64_t bits64
    cdef float f32
    cdef double f64
    if not need(c, 1):
        return None
    head = c.p[c.pos]
    if head <= 0x7F:
        c.pos += 1
        return PyLong_FromLongLong(head)
    if head >= 0xE0:
        c.pos += 1
        return PyLong_FromLongLong(<int8_t>head)
    if (head & 0xE0) == 0xA0 or head == 0xD9 or head == 0xDA or head == 0xDB:
        return text(c)
    c.pos += 1
    if head == 0xC0:
        return None
    if head == 0xC2:
        return False
    if head == 0xC3:
        return True
    if head == 0xC4 or head == 0xC5 or head == 0xC6:
        n = length(c, head, 0, 0, 0xC4, 0xC5, 0xC6)
        if n < 0 or not need(c, n):
            c.bad = True
            return None
        c.pos += n
        return PyBytes_FromStringAndSize(<const char *>c.p + c.pos - n, n)
    if head == 0xCA:
        if not need(c, 4):
            return None
        bits32 = <uint32_t>be(c, 4)
        memcpy(&f32, &bits32, 4)
        return PyFloat_FromDouble(<double>f32)
    if head == 0xCB:
        if not need(c, 8):
            return None
        bits64 = be(c, 8)
        memcpy(&f64, &bits64, 8)
        return PyFloat_FromDouble(f64)
    if 0xCC <= head <= 0xCF:  # uint 8, 16, 32, 64
        n = 1 << (head - 0xCC)
        if not need(c, n):
            return None
        return PyLong_FromUnsignedLongLong(be(c, <int>n))
    if 0xD0 <= head <= 0xD3:  # int 8, 16, 32, 64
        n = 1 << (head - 0xD0)
        if not need(c, n):
            return None
        bits64 = be(c, <int>n)
        if n == 1:
            return PyLong_FromLongLong(<int8_t>bits64)
        if n == 2:
            return PyLong_FromLongLong(<int16_t>bits64)
        if n == 4:
            return PyLong_FromLongLong(<int32_t>bits64)
        return PyLong_FromLongLong(<int64_t>bits64)
    c.bad = True  # an array, a map, an ext, or a byte that is no type
    return None


cdef object row(Cursor *c):
    """A map of str keys to scalars, or nil."""
    cdef uint8_t head
    cdef Py_ssize_t n, i
    if not need(c, 1):
        return None
    head = c.p[c.pos]
    c.pos += 1
    if head == 0xC0:
        return None
    n = length(c, head, 0xF0, 0x80, 0, 0xDE, 0xDF)
    if n < 0:
        c.bad = True
        return None
    result = PyDict_New()
    for i in range(n):
        key = kept_text(c, 3 + i)
        if c.bad:
            return None
        value = scalar(c)
        if c.bad:
            return None
        PyDict_SetItem(result, key, value)
    return result


cdef object names(Cursor *c):
    """An array of str, or nil."""
    cdef uint8_t head
    cdef Py_ssize_t n, i
    if not need(c, 1):
        return None
    head = c.p[c.pos]
    c.pos += 1
    if head == 0xC0:
        return None
    n = length(c, head, 0xF0, 0x90, 0, 0xDC, 0xDD)
    if n < 0:
        c.bad = True
        return None
    result = []
    for i in range(n):
        value = text(c)
        if c.bad:
            return None
        PyList_Append(result, value)
    return result


cdef int skip_text(Cursor *c):
    """Past a str that is not read: checked as the reference would (UTF-8), built only when
    it is not ASCII."""
    cdef uint8_t head
    cdef Py_ssize_t n, i, start = c.pos
    if not need(c, 1):
        return 0
    head = c.p[c.pos]
    c.pos += 1
    n = length(c, head, 0xE0, 0xA0, 0xD9, 0xDA, 0xDB)
    if n < 0 or not need(c, n):
        c.bad = True
        return 0
    for i in range(n):
        if c.p[c.pos + i] & 0x80:
            c.pos = start
            text(c)
            return 0
    c.pos += n
    return 0


cdef int skip(Cursor *c):
    """Past one value of an entry the copy does not read: a scalar (anything else is `bad`)."""
    cdef uint8_t head
    if need(c, 1):
        head = c.p[c.pos]
        if (head & 0xE0) == 0xA0 or head == 0xD9 or head == 0xDA or head == 0xDB:
            return skip_text(c)
    scalar(c)
    return 0


cdef enum Field:
    OTHER, OPERATION, COMMIT_LSN, COMMIT_TIME, DATA, OLD, UNCHANGED


cdef Field field(Cursor *c) noexcept:
    """Which entry the key at the cursor names (consumed); `bad` for a key that is no str."""
    cdef uint8_t head
    cdef Py_ssize_t n
    cdef const char *k
    if not need(c, 1):
        return OTHER
    head = c.p[c.pos]
    if (head & 0xE0) != 0xA0:  # the keys read are short: fixstr (anything longer is OTHER)
        skip_text(c)
        return OTHER
    n = head & 0x1F
    c.pos += 1
    if not need(c, n):
        return OTHER
    k = <const char *>c.p + c.pos
    c.pos += n
    if n == 4 and memcmp(k, b"data", 4) == 0:
        return DATA
    if n == 3 and memcmp(k, b"old", 3) == 0:
        return OLD
    if n == 9 and memcmp(k, b"operation", 9) == 0:
        return OPERATION
    if n == 9 and memcmp(k, b"unchanged", 9) == 0:
        return UNCHANGED
    if n == 10 and memcmp(k, b"commit_lsn", 10) == 0:
        return COMMIT_LSN
    if n == 11 and memcmp(k, b"commit_time", 11) == 0:
        return COMMIT_TIME
    c.pos -= n + 1  # another key: checked as text (UTF-8) like the reference would
    skip_text(c)
    return OTHER


def read_change(bytes raw):
    """The entries of a change event a copy reads, as a dict, or None for the reference to
    unpack it whole."""
    return parse(raw, None, None, None)


def read_insert(bytes raw, table, seq, make):
    """For a table whose changes need no comparison with a snapshot or a replay window: an
    insert as the change `make(table, data, seq, commit_lsn, commit_time, False)` (the follower
    passes `Insert`), without the dict between; any other change event as `read_change` reads
    it."""
    return parse(raw, table, seq, make)


cdef object parse(bytes raw, object table, object seq, object make):
    cdef Cursor c
    cdef uint8_t head
    cdef Py_ssize_t n, i
    cdef int seen = 0
    cdef Field which
    c.p = <const uint8_t *>PyBytes_AS_STRING(raw)
    c.pos = 0
    c.size = PyBytes_GET_SIZE(raw)
    c.bad = False
    if not need(&c, 1):
        return None
    head = c.p[0]
    c.pos = 1
    n = length(&c, head, 0xF0, 0x80, 0, 0xDE, 0xDF)
    if n < 0:
        return None
    operation = commit_lsn = commit_time = data = old = unchanged = None
    for i in range(n):
        which = field(&c)
        if c.bad:
            return None
        if which == OPERATION or which == COMMIT_LSN or which == COMMIT_TIME:
            value = kept_text(&c, <Py_ssize_t>which - <Py_ssize_t>OPERATION)
            if which == OPERATION:
                operation = value
            elif which == COMMIT_LSN:
                commit_lsn = value
            else:
                commit_time = value
        elif which == DATA:
            data = row(&c)
        elif which == OLD:
            old = row(&c)
        elif which == UNCHANGED:
            unchanged = names(&c)
        else:
            skip(&c)
        if c.bad:
            return None
        seen |= 1 << <int>which
    # Every entry the change path reads present, and nothing after the map.
    if (seen & 0b111110) != 0b111110 or c.pos != c.size:
        return None
    if make is not None and operation == "insert":
        return make(table, data, seq, commit_lsn, commit_time, False)
    event = {"operation": operation, "commit_lsn": commit_lsn, "commit_time": commit_time,
             "data": data, "old": old}
    if seen & (1 << <int>UNCHANGED):
        event["unchanged"] = unchanged
    return event
