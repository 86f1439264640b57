/* pipeline.ingest._fastpings: a ping request's body checked, keyed and encoded in one pass, in C.
 *
 * In Python a 50-ping body cost the proxy ~110 µs of its own (msgspec decode + checks 29,
 * keying every ping by H3 54, record encode 25) against the bare handler's 43 µs of
 * ``orjson.loads``. Here the body is read once, byte by byte, into a C array of the
 * pings' value texts; each ping is range-checked and keyed (H3 through h3-py's own compiled
 * ``latlng_to_cell``, from its Cython C-API capsule: the cells are exactly h3-py's), and the
 * pings come back in runs of one key as ready JSON fragments, so a Kafka record is joined
 * from bytes. No Python object is made per ping. A ping surely inside the previous ping's cell
 * (a point-in-cell test against the cell's edges, below) takes that cell without calling H3.
 *
 * The fast path only ever accepts a whole body, and only the restricted JSON phones send:
 * one ping object or an array of them, ASCII, no escapes, the keys exactly ``seq, ts, lat,
 * lon, speed_mps, heading_deg, accuracy_m``, optional ``state`` (one of the three, or
 * null) and optional ``device_id`` equal to the token's, each key once. Anything else — a
 * refused value, heading exactly 360 (normalised to 0 by the reference path), an unknown
 * or duplicate key, a negative seq literal ("-0"), more than ``max_batch`` pings, an empty
 * array — returns None and the reference path (orjson + ``accept.sort_pings``) decides and
 * names the reasons. The unit tests hold the two equal.
 *
 * Numbers are copied into the fragment verbatim (their text is valid JSON, so the record's
 * readers parse the same double the check used), with ".0" after an integer literal so
 * that every field but ``seq`` reads back as a float, as ``pings.validate_ping`` makes it.
 *
 * The module is three C files (declarations shared in _fastpings.h): this one (the scan, the
 * module), _h3skip.c (``cell_of``: the H3 call skipped inside the previous ping's cell) and
 * _batchwire.c (Kafka record batches and their CRC32C).
 */
#include "_fastpings.h"
#include "../_jsonread.h"
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <string.h>

/* the seven numeric fields, in the order a fragment writes them */
enum { F_SEQ, F_TS, F_LAT, F_LON, F_SPEED, F_HEADING, F_ACC, N_NUM, F_STATE = N_NUM, F_DEVICE };
/* what a fragment writes before each number: the first one carries the device id before it */
static const char *const LABELS[] = {",\"seq\":", ",\"ts\":", ",\"lat\":", ",\"lon\":", ",\"speed_mps\":",
                                     ",\"heading_deg\":", ",\"accuracy_m\":"};
static const char *const STATES[] = {"driving", "stopped", "parked"};
static Py_ssize_t label_len[N_NUM], state_len[3];
#define DEVICE_LABEL "{\"device_id\":"
#define STATE_LABEL ",\"state\":\""
#define ALL_NUM ((1u << N_NUM) - 1)

typedef struct {
    const char *text[N_NUM]; /* into the body */
    uint32_t len[N_NUM];
    uint8_t as_float;        /* bit i: an integer literal, written with ".0" */
    int8_t state;            /* -1 none, else an index into STATES */
    uint8_t verbatim;        /* the object's own text is the fragment's, after the device id */
    const char *inner;       /* the object's text between its braces */
    uint32_t inner_len;
    int32_t group;
    uint64_t key; /* the key_res parent of its cell_res cell */
} Ping;


/* Which field a key names (-1: none): by its length, then one comparison of known length. */
static inline int field_of(const char *k, Py_ssize_t n) {
#define IS(text) (memcmp(k, text, sizeof(text) - 1) == 0)
    switch (n) {
    case 2: return IS("ts") ? F_TS : -1;
    case 3: return IS("lat") ? F_LAT : IS("lon") ? F_LON : IS("seq") ? F_SEQ : -1;
    case 5: return IS("state") ? F_STATE : -1;
    case 9: return IS("speed_mps") ? F_SPEED : IS("device_id") ? F_DEVICE : -1;
    case 10: return IS("accuracy_m") ? F_ACC : -1;
    case 11: return IS("heading_deg") ? F_HEADING : -1;
    default: return -1;
    }
#undef IS
}



/* A JSON number (RFC 8259 grammar) at the cursor: its text, its double, whether it is an integer
 * literal and, for an unsigned integer literal of at most 19 digits, its value (else UINT64_MAX).
 * The double is correctly rounded, as orjson's: exact for a mantissa up to 2^53 and a power of
 * ten up to 22 (one IEEE operation on two exact operands: Clinger's fast path), CPython's own
 * correctly rounding parser otherwise. Past the double range it is +-inf, which every range
 * check refuses. 1: parsed; 0: not a JSON number, or one CPython's parser does not take. */
static int number(Cursor *c, const char **text, uint32_t *len, double *value, int *integer, uint64_t *uint) {
    const char *s = c->p;
    JsonNum n;
    if (!json_number_scan(s, c->end, &n)) return 0;
    *integer = n.integer;
    *text = s;
    *len = (uint32_t)(n.end - s);
    *uint = (n.neg || n.dropped || !n.integer) ? UINT64_MAX : n.m;
    if (!json_double_fast(&n, value)) {
        /* the body is a bytes object, so NUL-terminated, and the number ends at a byte its
         * grammar refuses: the parser stops where the JSON number does */
        char *stop;
        *value = PyOS_string_to_double(s, &stop, NULL);
        if (*value == -1.0 && PyErr_Occurred()) {
            PyErr_Clear(); /* e.g. more digits than CPython's parser takes: the reference path decides */
            return 0;
        }
        if (stop != n.end) return 0;
    }
    c->p = n.end;
    return 1;
}

typedef struct {
    const char *dev; /* the token's device id as JSON, without its quotes */
    Py_ssize_t dev_n;
    double ts_lo, ts_hi;
    int cell_res;
    uint64_t keep, put; /* key = cell & keep | put: the key_res parent of a cell_res cell */
} Rules;

/* One ping object (the cursor on its '{'). 1: accepted into *out, keyed; 0: the reference path
 * decides; -1: a Python error. */
static int ping(Cursor *c, Ping *out, const Rules *r, LastCell *last) {
    if (!eat(c, '{')) return 0;
    unsigned seen = 0;
    double v[N_NUM];
    int null_state = 0;
    out->as_float = 0;
    out->state = -1;
    out->inner = c->p;
    if (eat(c, '}')) return 0;
    for (;;) {
        const char *k;
        Py_ssize_t kn;
        skip_ws(c);
        if (!plain_string(c, &k, &kn) || !eat(c, ':')) return 0;
        int f = field_of(k, kn);
        if (f < 0 || (seen & (1u << f))) return 0; /* unknown or duplicate key */
        seen |= 1u << f;
        skip_ws(c);
        if (f < N_NUM) {
            int integer;
            uint64_t uint;
            int rc = number(c, &out->text[f], &out->len[f], &v[f], &integer, &uint);
            if (rc <= 0) return rc;
            if (f == F_SEQ) {
                if (uint >= (UINT64_C(1) << 53)) return 0; /* also: not an unsigned integer literal */
            } else if (integer) {
                out->as_float |= (uint8_t)(1u << f);
            }
        } else if (f == F_STATE) {
            const char *s;
            Py_ssize_t sn;
            if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
                c->p += 4; /* as validate_ping: a null state is no state */
                null_state = 1;
            } else {
                if (!plain_string(c, &s, &sn)) return 0;
                for (int i = 0; i < 3; i++)
                    if (sn == state_len[i] && memcmp(s, STATES[i], (size_t)sn) == 0) out->state = (int8_t)i;
                if (out->state < 0) return 0;
            }
        } else {
            const char *s;
            Py_ssize_t sn;
            /* the token's id, JSON-encoded: an id that needs escapes never equals a body string
             * without them, and the reference path decides (403 or not) */
            if (!plain_string(c, &s, &sn) || sn != r->dev_n || memcmp(s, r->dev, (size_t)sn) != 0) return 0;
        }
        if (eat(c, ',')) continue;
        skip_ws(c);
        if (c->p < c->end && *c->p == '}') {
            out->inner_len = (uint32_t)(c->p - out->inner);
            c->p++;
            break;
        }
        return 0;
    }
    if ((seen & ALL_NUM) != ALL_NUM) return 0;
    /* phones write every float with a point (and no device id): the fragment is the object's own
     * text with the device id put first, one copy instead of one per field */
    out->verbatim = !out->as_float && !null_state && !(seen & (1u << F_DEVICE));
    /* pings.validate_ping's ranges; JSON cannot write NaN, and inf fails every one of them */
    if (!(r->ts_lo <= v[F_TS] && v[F_TS] <= r->ts_hi && -90.0 <= v[F_LAT] && v[F_LAT] <= 90.0 &&
          -180.0 <= v[F_LON] && v[F_LON] <= 180.0 && 0.0 <= v[F_SPEED] && v[F_SPEED] <= 90.0 &&
          0.0 <= v[F_HEADING] && v[F_HEADING] < 360.0 && 0.0 <= v[F_ACC] && v[F_ACC] <= 100000.0))
        return 0;
    /* the integer literal "-0" in a float field: float(-0) is 0.0, so write "0.0", not "-0.0" */
    for (int f = F_TS; f < N_NUM; f++)
        if ((out->as_float & (1u << f)) && out->len[f] == 2 && out->text[f][0] == '-' && out->text[f][1] == '0') {
            out->text[f]++;
            out->len[f] = 1;
        }
    uint64_t cell = cell_of(v[F_LAT], v[F_LON], r->cell_res, last);
    if (cell == 1 && PyErr_Occurred()) return -1;
    out->key = (cell & r->keep) | r->put;
    return 1;
}

typedef struct {
    uint64_t key;
    Py_ssize_t count, size;
    char *w;
    PyObject *bytes;
} Group;

static Py_ssize_t fragment_size(const Ping *p, Py_ssize_t dev_json_n) {
    Py_ssize_t n = (Py_ssize_t)sizeof(DEVICE_LABEL) - 1 + dev_json_n + 1; /* ... "}" */
    if (p->verbatim) return n + 1 + p->inner_len;                         /* ... "," inner "}" */
    for (int f = 0; f < N_NUM; f++) n += label_len[f] + p->len[f] + ((p->as_float >> f) & 1 ? 2 : 0);
    if (p->state >= 0) n += (Py_ssize_t)sizeof(STATE_LABEL) - 1 + state_len[p->state] + 1;
    return n;
}

static char *put_bytes(char *w, const char *s, Py_ssize_t n) {
    memcpy(w, s, (size_t)n);
    return w + n;
}

static char *write_fragment(char *w, const Ping *p, const char *dev_json, Py_ssize_t dev_json_n) {
    w = put_bytes(w, DEVICE_LABEL, (Py_ssize_t)sizeof(DEVICE_LABEL) - 1);
    w = put_bytes(w, dev_json, dev_json_n);
    if (p->verbatim) {
        *w++ = ',';
        w = put_bytes(w, p->inner, p->inner_len);
        *w++ = '}';
        return w;
    }
    for (int f = 0; f < N_NUM; f++) {
        w = put_bytes(w, LABELS[f], label_len[f]);
        w = put_bytes(w, p->text[f], p->len[f]);
        if ((p->as_float >> f) & 1) w = put_bytes(w, ".0", 2);
    }
    if (p->state >= 0) {
        w = put_bytes(w, STATE_LABEL, (Py_ssize_t)sizeof(STATE_LABEL) - 1);
        w = put_bytes(w, STATES[p->state], state_len[p->state]);
        *w++ = '"';
    }
    *w++ = '}';
    return w;
}

/* The groups (key, count, fragment) of n keyed pings: runs of consecutive pings of one key, at
 * most max_pings long, so that records joined from them keep the pings' order in a partition. */
static PyObject *grouped(Ping *pings, Py_ssize_t n, Py_ssize_t max_pings, const char *dev_json, Py_ssize_t dev_json_n) {
    PyObject *list = NULL;
    Group *groups = PyMem_Malloc((size_t)n * sizeof(Group));
    if (groups == NULL) return PyErr_NoMemory();
    Py_ssize_t ng = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Ping *p = &pings[i];
        Group *g = ng ? &groups[ng - 1] : NULL;
        if (g == NULL || g->key != p->key || g->count == max_pings) {
            g = &groups[ng++];
            g->key = p->key;
            g->count = 0;
            g->size = -1; /* no comma before the first fragment */
            g->bytes = NULL;
        }
        p->group = (int32_t)(ng - 1);
        g->count++;
        g->size += 1 + fragment_size(p, dev_json_n);
    }
    list = PyList_New(ng);
    if (list == NULL) goto fail;
    for (Py_ssize_t g = 0; g < ng; g++) {
        groups[g].bytes = PyBytes_FromStringAndSize(NULL, groups[g].size);
        if (groups[g].bytes == NULL) goto fail;
        groups[g].w = PyBytes_AS_STRING(groups[g].bytes);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Group *gr = &groups[pings[i].group];
        if (gr->w != PyBytes_AS_STRING(gr->bytes)) *gr->w++ = ',';
        gr->w = write_fragment(gr->w, &pings[i], dev_json, dev_json_n);
    }
    for (Py_ssize_t g = 0; g < ng; g++) {
        PyObject *item = Py_BuildValue("(KnN)", (unsigned long long)groups[g].key, groups[g].count, groups[g].bytes);
        groups[g].bytes = NULL; /* stolen by "N", even on failure */
        if (item == NULL) goto fail;
        PyList_SET_ITEM(list, g, item);
    }
    PyMem_Free(groups);
    return list;
fail:
    for (Py_ssize_t g = 0; g < ng; g++) Py_XDECREF(groups[g].bytes);
    PyMem_Free(groups);
    Py_XDECREF(list);
    return NULL;
}

/* scan(body, device_json, ts_lo, ts_hi, cell_res, key_res, max_pings, max_batch) */
static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "scan(body, device_json, ts_lo, ts_hi, cell_res, key_res, max_pings, max_batch)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "body and device_json must be bytes");
        return NULL;
    }
    const char *body = PyBytes_AS_STRING(args[0]), *dev = PyBytes_AS_STRING(args[1]);
    Py_ssize_t body_n = PyBytes_GET_SIZE(args[0]), dev_n = PyBytes_GET_SIZE(args[1]);
    Rules r;
    r.ts_lo = PyFloat_AsDouble(args[2]);
    r.ts_hi = PyFloat_AsDouble(args[3]);
    long cell_res = PyLong_AsLong(args[4]), key_res = PyLong_AsLong(args[5]);
    Py_ssize_t max_pings = PyLong_AsSsize_t(args[6]), max_batch = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred()) return NULL;
    if (cell_res < 0 || cell_res > 15 || key_res < 0 || key_res > cell_res || max_pings < 1 || max_batch < 1) {
        PyErr_SetString(PyExc_ValueError, "bad resolutions or limits");
        return NULL;
    }
    if (dev_n < 2 || dev[0] != '"' || dev[dev_n - 1] != '"') {
        PyErr_SetString(PyExc_ValueError, "device_json must be a JSON string");
        return NULL;
    }
    r.dev = dev + 1;
    r.dev_n = dev_n - 2;
    r.cell_res = (int)cell_res;
    r.keep = ~(UINT64_C(0xF) << 52);
    r.put = ((uint64_t)key_res << 52) | ((UINT64_C(1) << (3 * (15 - key_res))) - 1);

    Ping local[64];
    Ping *pings = local;
    Py_ssize_t cap = 64, n = 0;
    PyObject *result = NULL;
    Cursor c = {body, body + body_n};
    int single = 0, rc;
    LastCell last = {0, 0, {{{0}}}};

    skip_ws(&c);
    if (c.p < c.end && *c.p == '{') single = 1;
    else if (!eat(&c, '[') || eat(&c, ']')) goto refuse; /* not a ping or an array; or empty: 400 there */
    for (;;) {
        if (n >= max_batch) goto refuse; /* too many: the reference path says 413 */
        if (n == cap) {
            Py_ssize_t ncap = cap * 4 > max_batch ? max_batch : cap * 4;
            Ping *grown = PyMem_Malloc((size_t)ncap * sizeof(Ping));
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            memcpy(grown, pings, (size_t)n * sizeof(Ping));
            if (pings != local) PyMem_Free(pings);
            pings = grown;
            cap = ncap;
        }
        rc = ping(&c, &pings[n], &r, &last);
        if (rc < 0) goto done;
        if (rc == 0) goto refuse;
        n++;
        if (single) break;
        if (eat(&c, ',')) continue;
        if (eat(&c, ']')) break;
        goto refuse;
    }
    skip_ws(&c);
    if (c.p != c.end) goto refuse;
    PyObject *groups = grouped(pings, n, max_pings, dev, dev_n);
    if (groups == NULL) goto done;
    result = Py_BuildValue("(nN)", n, groups);
    goto done;
refuse:
    result = Py_NewRef(Py_None);
done:
    if (pings != local) PyMem_Free(pings);
    return result;
}

static PyMethodDef methods[] = {
    {"record_batch", (PyCFunction)(void (*)(void))record_batch, METH_FASTCALL,
     "record_batch(rows, timestamp_ms, producer_id, producer_epoch, base_sequence) -> bytes: "
     "Kafka's record batch v2 of (key, value) rows, uncompressed, byte for byte as aiokafka builds it"},
    {"crc32c", (PyCFunction)(void (*)(void))crc32c_py, METH_VARARGS | METH_KEYWORDS,
     "crc32c(data, /, soft=False) -> int: CRC-32C (Castagnoli) of data, as record_batch computes it "
     "(SSE4.2 where the CPU has it), or through the software table with soft=True"},
    {"crc32c_calls", crc32c_calls_py, METH_NOARGS,
     "crc32c_calls() -> (sse4.2, table): how many CRCs each path has computed in this process"},
    {"cell_hinted", cell_hinted_py, METH_VARARGS,
     "cell_hinted(lat, lon, res, hint) -> int: the res cell, the hint confirmed without H3 when surely inside it"},
    {"cell_stats", cell_stats, METH_NOARGS,
     "cell_stats() -> (pings keyed by the previous ping's cell, pings keyed by H3, cell shapes made)"},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(body, device_json, ts_lo, ts_hi, cell_res, key_res, max_pings, max_batch) -> "
     "(pings, [(key, count, fragment), ...]) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline.ingest._fastpings", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpings(void) {
    if (h3skip_init() < 0) return NULL;
    crc32c_init();
    for (int i = 0; i < N_NUM; i++) label_len[i] = (Py_ssize_t)strlen(LABELS[i]);
    for (int i = 0; i < 3; i++) state_len[i] = (Py_ssize_t)strlen(STATES[i]);
    return PyModule_Create(&module);
}
