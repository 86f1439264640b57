/* pipeline.ingest._fastpings, Kafka record batches (v2, uncompressed), built here for the CRC32C.
 *
 * aiokafka's compiled batch builder computes the batch's CRC32C in software, ~0.5 ns a byte: ~4 us
 * of a 50-ping request's ~10 KB (perf: ~3 % of the proxy's CPU). SSE4.2 has an instruction for it.
 * The bytes are exactly aiokafka's (DefaultRecordBatchBuilder: magic 2, no compression, not
 * transactional, no headers, every record's offset delta its index); the unit tests compare them. */
#include "_fastpings.h"
#include <string.h>

#define BATCH_HEADER 61  /* up to the first record */
#define BATCH_CRC_AT 17  /* baseOffset 8, length 4, partitionLeaderEpoch 4, magic 1 */
#define BATCH_ATTRS_AT 21

static uint32_t crc32c_table[256];

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t n) {
    while (n--) crc = crc32c_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_CRC32C_HW 1
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    crc = (uint32_t)c;
    while (n--) crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#endif

static int crc32c_hw_ok = 0;

void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
#ifdef HAVE_CRC32C_HW
    crc32c_hw_ok = __builtin_cpu_supports("sse4.2");
#endif
}

/* soft: the table path even where SSE4.2 is there, so that the tests exercise the path a CPU
 * without it takes */
/* calls of each path (the GIL is held): the tests read them to know which path a call took */
static unsigned long long crc32c_calls_hw = 0, crc32c_calls_table = 0;

static uint32_t crc32c(const unsigned char *p, size_t n, int soft) {
#ifdef HAVE_CRC32C_HW
    if (crc32c_hw_ok && !soft) {
        crc32c_calls_hw++;
        return ~crc32c_hw(~0u, p, n);
    }
#endif
    crc32c_calls_table++;
    return ~crc32c_soft(~0u, p, n);
}

static inline size_t varint_size(int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); /* zigzag */
    size_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}

static inline unsigned char *put_varint(unsigned char *w, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (z >= 0x80) {
        *w++ = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    *w++ = (unsigned char)z;
    return w;
}

static inline unsigned char *put_be(unsigned char *w, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) *w++ = (unsigned char)(v >> (8 * i));
    return w;
}

/* The body of a record (after its length): attributes, deltas, key, value, no headers. */
static inline size_t record_body_size(Py_ssize_t index, Py_ssize_t kn, Py_ssize_t vn) {
    return 1 + 1 + varint_size(index) + varint_size(kn) + (size_t)kn + varint_size(vn) + (size_t)vn + 1;
}

/* record_batch(rows, timestamp_ms, producer_id, producer_epoch, base_sequence) -> bytes */
PyObject *record_batch(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "record_batch(rows: list, timestamp_ms, producer_id, producer_epoch, base_sequence)");
        return NULL;
    }
    PyObject *rows = args[0];
    long long ts = PyLong_AsLongLong(args[1]), pid = PyLong_AsLongLong(args[2]);
    long epoch = PyLong_AsLong(args[3]), seq = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(rows);
    if (n < 1 || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a batch holds at least one record");
        return NULL;
    }
    size_t total = BATCH_HEADER;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(row, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(row, 1))) {
            PyErr_SetString(PyExc_TypeError, "rows are (key: bytes, value: bytes)");
            return NULL;
        }
        size_t body = record_body_size(i, PyBytes_GET_SIZE(PyTuple_GET_ITEM(row, 0)), PyBytes_GET_SIZE(PyTuple_GET_ITEM(row, 1)));
        total += varint_size((int64_t)body) + body;
    }
    if (total - 12 > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch too large");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) return NULL;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(out), *w = b;
    w = put_be(w, 0, 8);                            /* base offset: the broker's */
    w = put_be(w, (uint64_t)(total - 12), 4);       /* length after this field */
    w = put_be(w, (uint64_t)(uint32_t)-1, 4);       /* no partition leader epoch */
    *w++ = 2;                                       /* magic */
    w = put_be(w, 0, 4);                            /* CRC, below */
    w = put_be(w, 0, 2);                            /* attributes */
    w = put_be(w, (uint64_t)(uint32_t)(n - 1), 4);  /* last offset delta */
    w = put_be(w, (uint64_t)ts, 8);                 /* first timestamp */
    w = put_be(w, (uint64_t)ts, 8);                 /* max timestamp */
    w = put_be(w, (uint64_t)pid, 8);
    w = put_be(w, (uint64_t)(uint16_t)epoch, 2);
    w = put_be(w, (uint64_t)(uint32_t)seq, 4);
    w = put_be(w, (uint64_t)(uint32_t)n, 4);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i), *k = PyTuple_GET_ITEM(row, 0), *v = PyTuple_GET_ITEM(row, 1);
        Py_ssize_t kn = PyBytes_GET_SIZE(k), vn = PyBytes_GET_SIZE(v);
        w = put_varint(w, (int64_t)record_body_size(i, kn, vn));
        *w++ = 0; /* attributes */
        w = put_varint(w, 0); /* timestamp delta: one time for the batch */
        w = put_varint(w, i); /* offset delta */
        w = put_varint(w, kn);
        memcpy(w, PyBytes_AS_STRING(k), (size_t)kn);
        w += kn;
        w = put_varint(w, vn);
        memcpy(w, PyBytes_AS_STRING(v), (size_t)vn);
        w += vn;
        w = put_varint(w, 0); /* headers */
    }
    uint32_t crc = crc32c(b + BATCH_ATTRS_AT, total - BATCH_ATTRS_AT, 0);
    put_be(b + BATCH_CRC_AT, crc, 4);
    return out;
}

/* crc32c(data, /, soft=False) -> int: the CRC32C of a bytes-like object, through the path batches use
 * or, with soft, through the table */
PyObject *crc32c_py(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"", "soft", NULL};
    Py_buffer data;
    int soft = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|p:crc32c", kwlist, &data, &soft)) return NULL;
    uint32_t crc = crc32c((const unsigned char *)data.buf, (size_t)data.len, soft);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

/* crc32c_calls() -> (sse4.2, table): how many CRCs each path computed in this process */
PyObject *crc32c_calls_py(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return Py_BuildValue("(KK)", crc32c_calls_hw, crc32c_calls_table);
}
