/* pipeline._window's speed window (``pipeline.speed.CellSpeedWindow``): shared declarations.
 * The design is described in pipeline/_speedwin.c. */
#ifndef TRAVERZ_SPEEDWIN_H
#define TRAVERZ_SPEEDWIN_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject *dev; /* an owned str; NULL: a free slot */
    Py_hash_t hash;
} DevSlot;

typedef struct {
    int64_t bin, count;
} HistPair;

/* what one sector holds in one bucket (or in the merge of the closed buckets) */
typedef struct {
    int64_t sec, n;
    double total;
    HistPair *hist; /* in the order bins first came: to_bytes writes them so */
    Py_ssize_t nhist, caphist;
    DevSlot *devs; /* linear-probing set, capdev a power of two (0: none yet) */
    Py_ssize_t ndev, capdev;
} Agg;

/* a float as to_bytes last wrote it: a total or a last_seen seldom changes between two
 * write-backs, and formatting a double the way repr() does is most of to_bytes' time */
typedef struct {
    double v;
    uint8_t len; /* 0: nothing cached */
    char txt[31];
} Fmt;

typedef struct {
    int64_t start;
    Agg *secs; /* in the order sectors first came */
    Py_ssize_t nsecs, capsecs;
    Fmt *fmt; /* the totals of ``secs`` as last written (to_bytes only) */
    Py_ssize_t capfmt;
} Bucket;

/* the seq dedupe of one device in this cell: hwm and the 256 seqs below it (bit i: hwm - i) */
typedef struct {
    PyObject *dev; /* owned str */
    Py_hash_t hash;
    int64_t hwm;
    uint64_t mask[4];
    double last_seen;
    int last_int; /* last_seen came as a Python int: written back as one */
} Seen;

typedef struct {
    PyObject_HEAD
    /* what a counted ping reads first in its first 128 bytes (two cache lines; add_pings
     * prefetches them for the pings ahead): the index, the arrays, the merge's bounds, the counts */
    /* open addressing over ``seen``, idxmask + 1 slots: (hash tag << 32) | entry, IDX_EMPTY when free.
     * The tag (the hash's high bits) lets a probe pass an entry without reading its Seen (a
     * cache miss each, ~5 a miss at 2/3 full: most of the count's time for a device new to the cell) */
    uint64_t *index;
    size_t idxmask;
    Seen *seen; /* in insertion order (what to_bytes writes) */
    Py_ssize_t nseen;
    Bucket *buckets; /* in insertion order */
    Py_ssize_t nbuckets;
    int has_closed;
    int64_t closed_key, closed_open;
    long long added, wake_at;
    /* the rest: growth, the merge's sectors, bookkeeping */
    Py_ssize_t capseen, capbuckets;
    Fmt *seen_fmt; /* the last_seen of ``seen`` as last written (to_bytes only; reset by a sweep) */
    Py_ssize_t capfmt;
    Agg *closed;
    Py_ssize_t nclosed, capclosed;
    double swept_at;
    long long merges;
} Win;

typedef struct {
    double v;
    int is_int;
} Num;

extern PyTypeObject *WinType;
extern PyObject *SeqWindowCls, *SectorBucketCls, *SectorStatsCls, *loads_fn;
extern double BUCKET_S, WINDOW_S, BIN_PER_MPS, SECTOR_WIDTH, DEVICE_TTL_S, SEEN_SWEEP_S;
extern int64_t BUCKET_I;

int parse_num(PyObject *o, Num *out);
int parse_seq(PyObject *o, int64_t *out);
int check_device(PyObject *dev);
int check_now(Num now); /* finite, below 2**53 */
/* CellSpeedWindow.add: 1 counted, 0 not, -1 error */
int win_add(Win *w, PyObject *dev, int64_t seq, Num ts, Num speed, Num heading, Num now);

Py_ssize_t seen_lookup(Win *w, PyObject *dev, Py_hash_t h);
Seen *seen_append(Win *w, PyObject *dev, Py_hash_t h);
Bucket *bucket_append(Win *w, int64_t start);
Agg *agg_append(Agg **arr, Py_ssize_t *n, Py_ssize_t *cap, int64_t sec);
int hist_add(Agg *a, int64_t bin, int64_t count);
int devset_add(Agg *a, PyObject *dev, Py_hash_t h);

/* What win_add will read for a ping, fetched into the cache ahead of it (add_pings, a few pings
 * early): they only read and prefetch, each stage what the one before brought in. h: the
 * device's hash; ts, heading: the ping's. */
void win_ahead_index(const Win *w, Py_hash_t h);
void win_ahead_entry(const Win *w, Py_hash_t h, double ts);
void win_ahead_sector(const Win *w, Py_hash_t h, double ts, double heading);

PyObject *win_to_bytes(PyObject *self, PyObject *unused);
PyObject *win_from_bytes(PyObject *cls, PyObject *raw);
int speedwin_init(PyObject *module);

#endif
