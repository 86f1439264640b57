/* Reading the restricted JSON our fast paths take — a cursor, whitespace, plain strings — and JSON
 * numbers exactly as orjson reads them (the grammar scan and the correctly rounded fast paths).
 * Shared by the ingest's body scan (pipeline/ingest/_fastpings.c) and the stream side's record
 * decode (pipeline/_pingbatch.c). Header-only: each extension compiles its own copy. */
#ifndef TRAVERZ_JSONREAD_H
#define TRAVERZ_JSONREAD_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>

typedef struct {
    const char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static inline int eat(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string without escapes, control or non-ASCII bytes (the opening quote is next): its inside. */
static inline int plain_string(Cursor *c, const char **s, Py_ssize_t *n) {
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *q = ++c->p;
    while (q < c->end && *q != '"') {
        unsigned char b = (unsigned char)*q;
        if (b < 0x20 || b >= 0x80 || b == '\\') return 0;
        q++;
    }
    if (q >= c->end) return 0;
    *s = c->p;
    *n = q - c->p;
    c->p = q + 1;
    return 1;
}

/* Clinger's fast path needs each double operation rounded once (not through a wider register) */
#define EXACT_DOUBLE_OPS (FLT_EVAL_METHOD == 0)

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#if LDBL_MANT_DIG >= 64
static const long double LPOW10[] = {1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
                                     1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
                                     1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
#endif

/* m / 10^k correctly rounded to a double, for m < 2^64 and k <= 27, through one long double
 * division (m and 5^k, so 10^k, are exact in a 64-bit mantissa): the long double quotient is
 * within half its ulp of the true one, so unless it lies within an ulp of a midpoint between two
 * doubles, the true quotient rounds to the same double. 0 (the caller parses exactly) near a
 * midpoint, or where long double has no 64-bit mantissa. */
static int wide(uint64_t m, int k, double *out) {
#if LDBL_MANT_DIG >= 64
    long double q = (long double)m / LPOW10[k];
    double d = (double)q;
    if (d == 0.0 || !isfinite(d)) return 0;
    long double tol = fabsl(q) * LDBL_EPSILON * 2.0L;
    long double lo = ((long double)d + (long double)nextafter(d, 0.0)) / 2.0L;
    long double hi = ((long double)d + (long double)nextafter(d, HUGE_VAL)) / 2.0L;
    if (fabsl(q - lo) <= tol || fabsl(q - hi) <= tol) return 0;
    *out = d;
    return 1;
#else
    (void)m, (void)k, (void)out;
    return 0;
#endif
}

/* A JSON number's parts (RFC 8259 grammar): up to 19 significant digits in m, the power of ten,
 * whether digits were dropped past the 19th, whether it is an integer literal, where it ends. */
typedef struct {
    const char *end;
    uint64_t m;
    long exp10;
    int neg, dropped, integer;
} JsonNum;

/* 1: a JSON number starts at q (before e), its parts in *n; 0: not one. */
static inline int json_number_scan(const char *q, const char *e, JsonNum *n) {
    int neg = 0, sig = 0, dropped = 0, integer = 1;
    long exp10 = 0;
    uint64_t m = 0;
    if (q < e && *q == '-') {
        neg = 1;
        q++;
    }
    if (q >= e) return 0;
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        for (; q < e && *q >= '0' && *q <= '9'; q++) {
            if (sig < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                sig++;
            } else {
                exp10++;
                dropped = 1;
            }
        }
    } else {
        return 0;
    }
    if (q < e && *q == '.') {
        integer = 0;
        q++;
        if (q >= e || *q < '0' || *q > '9') return 0;
        for (; q < e && *q >= '0' && *q <= '9'; q++) {
            if (sig < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                exp10--;
                if (m) sig++; /* a fraction's leading zeros are not significant */
            } else {
                dropped = 1;
            }
        }
    }
    if (q < e && (*q == 'e' || *q == 'E')) {
        integer = 0;
        q++;
        int eneg = 0;
        long ev = 0;
        if (q < e && (*q == '+' || *q == '-')) eneg = *q++ == '-';
        if (q >= e || *q < '0' || *q > '9') return 0;
        for (; q < e && *q >= '0' && *q <= '9'; q++)
            if (ev < 100000) ev = ev * 10 + (*q - '0');
        exp10 += eneg ? -ev : ev;
    }
    n->end = q, n->m = m, n->exp10 = exp10, n->neg = neg, n->dropped = dropped, n->integer = integer;
    return 1;
}

/* The number's double when a fast path gives it correctly rounded: exact for a mantissa up to 2^53
 * and a power of ten up to 22 (one IEEE operation on two exact operands: Clinger's fast path), or
 * 16 to 19 digits through wide() (a double's shortest repr, as phones write it). 0: neither. */
static inline int json_double_fast(const JsonNum *n, double *value) {
    if (EXACT_DOUBLE_OPS && !n->dropped && n->m <= (UINT64_C(1) << 53) && n->exp10 >= -22 && n->exp10 <= 22) {
        double d = (double)n->m;
        d = n->exp10 < 0 ? d / POW10[-n->exp10] : d * POW10[n->exp10];
        *value = n->neg ? -d : d;
        return 1;
    }
    if (!n->dropped && n->exp10 >= -27 && n->exp10 <= 0 && wide(n->m, (int)-n->exp10, value)) {
        if (n->neg) *value = -*value;
        return 1;
    }
    return 0;
}

#endif
