# cython: language_level=3
"""A growable byte buffer the compiled modules write their output into, and decimal text: one
definition, `cimport`ed by `_rows.pyx` and `_frames.pyx` (inline: no call between modules)."""

from cpython.mem cimport PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy


cdef struct Buf:
    char *data
    Py_ssize_t size
    Py_ssize_t cap


cdef inline int buf_init(Buf *b, Py_ssize_t cap) except -1:
    b.data = <char *>PyMem_Malloc(cap)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = cap
    return 0


cdef inline int buf_room(Buf *b, Py_ssize_t n) except -1:
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
    buf_room(b, n)
    memcpy(b.data + b.size, src, n)
    b.size += n
    return 0


cdef inline int put_byte(Buf *b, uint8_t c) except -1:
    buf_room(b, 1)
    b.data[b.size] = <char>c
    b.size += 1
    return 0


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
