# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The replicator's chained HPUB frames, a run of them in one buffer (the compiled path).

`chain` writes exactly what `Publisher._chain` joins from `shared.nats_frames.hpub` calls (the
reference, tests/unit/test_compiled_frames.py holds the two to the same bytes): every message
of the run with `Nats-Msg-Id`, `Nats-Expected-Last-Sequence` and, after the first (or when the
run continues one), `Nats-Expected-Last-Msg-Id`; only the last with a reply subject.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy


cdef struct Buf:
    char *data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int room(Buf *b, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap
    cdef char *grown
    if b.size + n <= b.cap:
        return 0
    cap = b.cap * 2
    while cap < b.size + n:
        cap *= 2
    grown = <char *>PyMem_Realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int put(Buf *b, const char *src, Py_ssize_t n) except -1:
    room(b, n)
    memcpy(b.data + b.size, src, n)
    b.size += n
    return 0


cdef inline int put_bytes(Buf *b, bytes value) except -1:
    return put(b, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))


cdef inline int decimal(char *out, int64_t value) noexcept:
    """`value` (at least 0) in decimal into `out` (20 bytes): its length."""
    cdef char digits[20]
    cdef int n = 0, i
    cdef uint64_t v = <uint64_t>value
    if v == 0:
        out[0] = 0x30
        return 1
    while v:
        digits[n] = <char>(0x30 + v % 10)
        v //= 10
        n += 1
    for i in range(n):
        out[i] = digits[n - 1 - i]
    return n


cdef int frame(Buf *b, bytes subject, bytes reply, bytes msg_id, int64_t expected,
               bytes payload, bytes previous) except -1:
    """One HPUB frame, as `hpub` formats it."""
    cdef char last[20]
    cdef char number[20]
    cdef int last_size = decimal(last, expected), n
    cdef Py_ssize_t hlen = (
        len(b"NATS/1.0\r\nNats-Msg-Id: ") + len(b"\r\nNats-Expected-Last-Sequence: ")
        + len(b"\r\n\r\n") + PyBytes_GET_SIZE(msg_id) + last_size
    )
    if PyBytes_GET_SIZE(previous):
        hlen += len(b"\r\nNats-Expected-Last-Msg-Id: ") + PyBytes_GET_SIZE(previous)
    put(b, b"HPUB ", 5)
    put_bytes(b, subject)
    put(b, b" ", 1)
    if PyBytes_GET_SIZE(reply):
        put_bytes(b, reply)
        put(b, b" ", 1)
    n = decimal(number, hlen)
    put(b, number, n)
    put(b, b" ", 1)
    n = decimal(number, hlen + PyBytes_GET_SIZE(payload))
    put(b, number, n)
    put(b, b"\r\nNATS/1.0\r\nNats-Msg-Id: ", 25)
    put_bytes(b, msg_id)
    put(b, b"\r\nNats-Expected-Last-Sequence: ", 31)
    put(b, last, last_size)
    if PyBytes_GET_SIZE(previous):
        put(b, b"\r\nNats-Expected-Last-Msg-Id: ", 29)
        put_bytes(b, previous)
    put(b, b"\r\n\r\n", 4)
    put_bytes(b, payload)
    put(b, b"\r\n", 2)
    return 0


def chain(list messages, Py_ssize_t start, Py_ssize_t end, int64_t expected, bytes previous,
          bytes reply):
    """The frames of `messages[start:end]` (`Outgoing`s) for one write: the first expects the
    stream's last sequence `expected` and last Msg-Id `previous` (b"": none), each later one
    the one before it; the last has the reply subject `reply`."""
    cdef Buf b
    cdef Py_ssize_t i
    cdef bytes msg_id
    if end <= start or start < 0 or end > len(messages) or expected < 0:
        raise ValueError("a run of at least one message")
    b.data = <char *>PyMem_Malloc(4096)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = 4096
    try:
        for i in range(start, end):
            message = messages[i]
            msg_id = message.msg_id
            frame(&b, message.subject, reply if i == end - 1 else b"", msg_id, expected,
                  message.payload, previous)
            expected += 1
            previous = msg_id
        return PyBytes_FromStringAndSize(b.data, b.size)
    finally:
        PyMem_Free(b.data)
