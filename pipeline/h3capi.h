/* h3-py's compiled latlng_to_cell for Traverz's C modules, from the C-API table Cython
 * exports (``h3._cy.latlng.__pyx_capi__``): no H3 sources vendored, and cells are exactly
 * h3-py's. Degrees in; returns 1 with a Python exception set on error (Cython's
 * ``except 1``). Each module including this calls ``load_h3()`` in its init. */
#ifndef TRAVERZ_H3CAPI_H
#define TRAVERZ_H3CAPI_H

#include <Python.h>
#include <stdint.h>

typedef uint64_t (*latlng_to_cell_t)(double, double, int, int);

static latlng_to_cell_t latlng_to_cell = NULL;

static int load_h3(void) {
    PyObject *mod = PyImport_ImportModule("h3._cy.latlng");
    if (mod == NULL) return -1;
    PyObject *capi = PyObject_GetAttrString(mod, "__pyx_capi__");
    Py_DECREF(mod);
    if (capi == NULL) return -1;
    PyObject *cap = PyDict_GetItemString(capi, "latlng_to_cell");
    if (cap == NULL) {
        Py_DECREF(capi);
        PyErr_SetString(PyExc_ImportError, "h3._cy.latlng exports no latlng_to_cell");
        return -1;
    }
    /* the capsule's name is the C signature: a changed signature refuses to load */
    latlng_to_cell = (latlng_to_cell_t)PyCapsule_GetPointer(cap, "H3Index (double, double, int, int __pyx_skip_dispatch)");
    Py_DECREF(capi);
    return latlng_to_cell == NULL ? -1 : 0;
}

#endif
