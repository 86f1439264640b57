/* pipeline._records.PingBatch: a decoded ping record as an array of C structs (pipeline/_pingbatch.c).
 *
 * The layout is shared by the modules that read a batch without a Python object per ping
 * (pipeline/_window.c's add_pings, pipeline/_movers.c's glide). They are separate extensions:
 * each finds the type with ``pingbatch_import()`` in its init and compares ``Py_TYPE``.
 */
#ifndef TRAVERZ_PINGBATCH_H
#define TRAVERZ_PINGBATCH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* a ping's keys (also the bits of PBPing.ints for the numeric ones) */
enum { PB_DEVICE, PB_SEQ, PB_TS, PB_LAT, PB_LON, PB_SPEED, PB_HEADING, PB_ACC, PB_STATE, PB_NKEYS };
enum { PB_NO_STATE, PB_DRIVING, PB_STOPPED, PB_PARKED };

typedef struct {
    double ts, lat, lon, speed, heading, acc;
    int64_t seq;
    PyObject *dev;  /* owned: the one str object for this device id (_records.c's device cache) */
    PyObject *cell; /* owned: the res cell's interned str (_records.c's cell cache) */
    uint64_t h3;    /* the same cell as an H3 index */
    uint64_t order; /* the JSON's key order: key (order >> 4i) & 15 at position i, nkeys of them */
    uint16_t ints;  /* bit PB_x: that number was a JSON integer literal (a Python int in the dict) */
    uint8_t state;  /* PB_NO_STATE (no "state" key) or the state */
    uint8_t nkeys;
} PBPing;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    PBPing *p;
    PyObject **dicts; /* the pings as dicts, made when first asked for (NULL until then) */
} PingBatch;

#ifndef PINGBATCH_OWNER
/* For consumers in other extension modules: the type, found at import. */
static PyTypeObject *PingBatchType = NULL;

static inline int pingbatch_import(void) {
    PyObject *mod = PyImport_ImportModule("pipeline._records");
    if (mod == NULL) return -1;
    PyObject *t = PyObject_GetAttrString(mod, "PingBatch");
    Py_DECREF(mod);
    if (t == NULL) return -1;
    if (!PyType_Check(t)) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_ImportError, "pipeline._records.PingBatch is not a type");
        return -1;
    }
    PingBatchType = (PyTypeObject *)t; /* kept for the life of the process */
    return 0;
}
#endif

#endif
