# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The replicator's chained HPUB frames, a run of them in one buffer (the compiled path).

`chain` writes exactly what `Publisher._chain` joins from `shared.nats_frames.hpub` calls (the
reference, tests/unit/test_compiled_frames.py holds the two to the same bytes): every message
of the run with `Nats-Msg-Id`, `Nats-Expected-Last-Sequence` and, after the first (or when the
run continues one), `Nats-Expected-Last-Msg-Id`; only the last with a reply subject.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp

from shared.compiled._buffer cimport Buf, buf_init, decimal, put


cdef inline int put_bytes(Buf *b, bytes value) except -1:
    return put(b, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))


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
    buf_init(&b, 4096)
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


# -- HMSG frames in (a pull consumer's deliveries) ---------------------------------------------

cdef inline Py_ssize_t digits(const unsigned char *p, Py_ssize_t start, Py_ssize_t end,
                              uint64_t *value) noexcept:
    """`p[start:end]` as a decimal number: 0, or -1 when empty, not all digits or too long."""
    cdef uint64_t v = 0
    cdef Py_ssize_t i
    if end <= start or end - start > 19:
        return -1
    for i in range(start, end):
        if p[i] < 0x30 or p[i] > 0x39:
            return -1
        v = v * 10 + (p[i] - 0x30)
    value[0] = v
    return 0


cdef inline Py_ssize_t find(const unsigned char *p, Py_ssize_t start, Py_ssize_t end,
                            unsigned char c) noexcept:
    cdef Py_ssize_t i
    for i in range(start, end):
        if p[i] == c:
            return i
    return -1


def read_messages(bytes view, Py_ssize_t pos, bytes sid, dict subjects):
    """The plain deliveries of subscription `sid` in `view` (a read's bytes) from `pos` on, as
    `Puller._read` reads them: `(entries, pos, quiet)`, each entry `(subject, stream_seq,
    consumer_seq, pending, data)`, `pos` after the last taken, `quiet` when no entry has
    `pending` 0. It stops at the first frame that is not an `HMSG` of `sid` with a JetStream
    ack reply and no status header, or is incomplete: the pure-Python loop goes on from there.
    `subjects` keeps one bytes object per subject (a consumer keys its tables by them)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(view)
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(sid)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(view), sid_size = PyBytes_GET_SIZE(sid)
    cdef Py_ssize_t end, i, count, start, stop, headers_end, ntok
    cdef Py_ssize_t spaces[6]
    cdef Py_ssize_t dots[16]
    cdef Py_ssize_t r0, r1, t, u
    cdef uint64_t header_size, total_size, stream_seq, consumer_seq, pending
    cdef bint quiet = True
    entries = []
    while pos + 5 <= size and p[pos] == 0x48 and p[pos + 1] == 0x4D and p[pos + 2] == 0x53 \
            and p[pos + 3] == 0x47 and p[pos + 4] == 0x20:  # "HMSG "
        end = -1
        for i in range(pos + 5, size - 1):
            if p[i] == 0x0D and p[i + 1] == 0x0A:
                end = i
                break
        if end < 0:
            break
        # The control line's fields: subject, sid, reply, header size, total size.
        count = 0
        for i in range(pos + 5, end):
            if p[i] == 0x20:
                if count == 5:
                    count = 6
                    break
                spaces[count] = i
                count += 1
        if count != 4:  # five fields (a reply); four (none) or more: the reference's
            break
        if spaces[1] - spaces[0] - 1 != sid_size or \
                memcmp(p + spaces[0] + 1, s, sid_size) != 0:
            break
        if digits(p, spaces[2] + 1, spaces[3], &header_size) or \
                digits(p, spaces[3] + 1, end, &total_size):
            break
        start = end + 2
        stop = start + <Py_ssize_t>total_size
        if header_size > total_size or stop + 2 > size:
            break
        headers_end = start + <Py_ssize_t>header_size
        if start + 9 <= size and memcmp(p + start, b"NATS/1.0 ", 9) == 0:
            break  # a status: the reference's
        # The reply: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>,
        # or with domain and account hash tokens ($JS.ACK.<domain>.<hash>.…, 11 or more).
        r0, r1 = spaces[1] + 1, spaces[2]
        ntok = 0
        dots[0] = r0 - 1
        for i in range(r0, r1):
            if p[i] == 0x2E:
                ntok += 1
                if ntok >= 15:
                    break
                dots[ntok] = i
        if ntok >= 15:
            break
        ntok += 1
        dots[ntok] = r1
        if ntok == 9:  # tokens 5, 6 and 8
            t = 5
            u = 8
        elif ntok >= 11 and dots[1] == r0 + 3 and memcmp(p + r0, b"$JS", 3) == 0:
            t = 7  # tokens 7, 8 and 10
            u = 10
        else:
            break
        if digits(p, dots[t] + 1, dots[t + 1], &stream_seq) or \
                digits(p, dots[t + 1] + 1, dots[t + 2], &consumer_seq) or \
                digits(p, dots[u] + 1, dots[u + 1], &pending):
            break
        subject = PyBytes_FromStringAndSize(<const char *>p + pos + 5, spaces[0] - pos - 5)
        known = subjects.get(subject)
        if known is None:
            if len(subjects) < 1024:
                subjects[subject] = subject
        else:
            subject = known
        data = PyBytes_FromStringAndSize(<const char *>p + headers_end, stop - headers_end)
        entries.append((subject, stream_seq, consumer_seq, pending, data))
        if pending == 0:
            quiet = False
        pos = stop + 2
    return entries, pos, quiet
