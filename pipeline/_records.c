/* pipeline._records: the stream side's per-ping check of a decoded ping record, in C.
 *
 * ``pings.decode_record`` parses a record with orjson, then every ping is checked (exact
 * types, ranges) and given its res-9 cell. In Python that loop plus h3-py's string API
 * cost ~1.3 µs a ping, most of the decode; here it is one pass over the list. The H3 call
 * is h3-py's own compiled ``latlng_to_cell`` (its Cython C-API capsule), so the cell is
 * exactly the one h3-py computes; the cell strings are interned in a bounded cache (a city
 * is a few thousand res-9 cells) so the engine's dict look-ups compare by identity, and so
 * are the device ids.
 *
 * Semantics are the Python loop's it replaced (kept as ``pipeline.bench.stream.decode_python``,
 * the raw baseline's decode); tests/unit/test_records.py holds the two equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "h3capi.h"
#include <stdint.h>
#include <stdio.h>

/* shared with pipeline/_pingbatch.c, the other file of this module */
#define HIDDEN __attribute__((visibility("hidden")))
HIDDEN PyObject *records_cell_str(uint64_t h);
HIDDEN PyObject *records_device(PyObject *dev);
HIDDEN int pingbatch_add(PyObject *module);
HIDDEN void pingbatch_forget(int devices);

static PyObject *cell_cache = NULL; /* int H3 index -> str */
static PyObject *device_cache = NULL; /* device id -> the one str object for it */
static PyObject *k_device_id, *k_seq, *k_ts, *k_lat, *k_lon, *k_speed, *k_heading, *k_cell;

#define CACHE_MAX 200000
#define MAX_SPEED 90.0

static const char *MISTYPED = "ping: missing or mistyped field";
static const char *RANGE = "ping: field out of range";

/* 1: a number (exact int or float, not bool) written to *out; 0: not one.
 * An int too large for a double is +-inf: out of every range, as Python's comparison says. */
static int number(PyObject *v, double *out) {
    if (PyFloat_CheckExact(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        double d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            d = _PyLong_Sign(v) < 0 ? -HUGE_VAL : HUGE_VAL;
        }
        *out = d;
        return 1;
    }
    return 0;
}

/* The interned str of cell h (a new reference). */
PyObject *records_cell_str(uint64_t h) {
    PyObject *key = PyLong_FromUnsignedLongLong(h);
    if (key == NULL) return NULL;
    PyObject *hit = PyDict_GetItemWithError(cell_cache, key);
    if (hit != NULL) {
        Py_DECREF(key);
        Py_INCREF(hit);
        return hit;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llx", (unsigned long long)h);
    PyObject *s = PyUnicode_FromStringAndSize(buf, n);
    if (s == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    if (PyDict_GET_SIZE(cell_cache) >= CACHE_MAX) {
        pingbatch_forget(0); /* its cells are this cache's */
        PyDict_Clear(cell_cache);
    }
    if (PyDict_SetItem(cell_cache, key, s) < 0) {
        Py_DECREF(key);
        Py_DECREF(s);
        return NULL;
    }
    Py_DECREF(key);
    return s;
}

/* The one str object for device id ``dev`` (an exact str; a new reference): every dict and set
 * the engine keeps per device then finds it by identity, without comparing the strings (cold
 * memory), as for cells. */
PyObject *records_device(PyObject *dev) {
    if (PyDict_GET_SIZE(device_cache) >= CACHE_MAX) {
        pingbatch_forget(1); /* its devices are this cache's */
        PyDict_Clear(device_cache);
    }
    PyObject *canon = PyDict_SetDefault(device_cache, dev, dev);
    Py_XINCREF(canon);
    return canon;
}

/* check_pings(pings, cell_res, error) -> None: each ping checked and given "cell";
 * raises ``error(reason)`` at the first bad ping (pings before it already carry "cell"). */
static PyObject *check_pings(PyObject *self, PyObject *args) {
    PyObject *list, *error;
    int res;
    if (!PyArg_ParseTuple(args, "O!iO", &PyList_Type, &list, &res, &error)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(list, i);
        const char *why = MISTYPED;
        if (!PyDict_CheckExact(p)) goto bad;
        PyObject *dev = PyDict_GetItemWithError(p, k_device_id);
        PyObject *seq = dev ? PyDict_GetItemWithError(p, k_seq) : NULL;
        PyObject *ts = seq ? PyDict_GetItemWithError(p, k_ts) : NULL;
        PyObject *lat = ts ? PyDict_GetItemWithError(p, k_lat) : NULL;
        PyObject *lon = lat ? PyDict_GetItemWithError(p, k_lon) : NULL;
        PyObject *speed = lon ? PyDict_GetItemWithError(p, k_speed) : NULL;
        PyObject *heading = speed ? PyDict_GetItemWithError(p, k_heading) : NULL;
        if (heading == NULL) {
            if (PyErr_Occurred()) return NULL;
            goto bad;
        }
        double t, la, lo, sp, hd;
        if (!(PyUnicode_CheckExact(dev) && PyLong_CheckExact(seq) && number(ts, &t) && number(lat, &la) &&
              number(lon, &lo) && number(speed, &sp) && number(heading, &hd)))
            goto bad;
        why = RANGE;
        if (!(-90.0 <= la && la <= 90.0 && -180.0 <= lo && lo <= 180.0 && 0.0 <= sp && sp <= MAX_SPEED &&
              0.0 <= hd && hd <= 360.0))
            goto bad;
        PyObject *canon = records_device(dev);
        if (canon == NULL) return NULL;
        int same = canon == dev;
        Py_DECREF(canon); /* the cache holds it */
        if (!same && PyDict_SetItem(p, k_device_id, canon) < 0) return NULL;
        uint64_t h = latlng_to_cell(la, lo, res, 0);
        if (h == 1 && PyErr_Occurred()) return NULL;
        PyObject *c = records_cell_str(h);
        if (c == NULL) return NULL;
        int rc = PyDict_SetItem(p, k_cell, c);
        Py_DECREF(c);
        if (rc < 0) return NULL;
        continue;
    bad:
        PyErr_SetString(error, why);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"check_pings", check_pings, METH_VARARGS, "Check a record's pings and give each its res-9 \"cell\"."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline._records", NULL, -1, methods};

PyMODINIT_FUNC PyInit__records(void) {
    if (load_h3() < 0) return NULL;
    cell_cache = PyDict_New();
    device_cache = PyDict_New();
    if (cell_cache == NULL || device_cache == NULL) return NULL;
#define KEY(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    KEY(k_device_id, "device_id");
    KEY(k_seq, "seq");
    KEY(k_ts, "ts");
    KEY(k_lat, "lat");
    KEY(k_lon, "lon");
    KEY(k_speed, "speed_mps");
    KEY(k_heading, "heading_deg");
    KEY(k_cell, "cell");
#undef KEY
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (pingbatch_add(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
