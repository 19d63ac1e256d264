# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of fastmoe: arithmetic only.

Design note
-----------
fastmoe is built in three layers:

1. Kernels (this file): one pass over the samples per call, ``nogil``, parallel over fixed-size sample
   chunks with OpenMP. No validation and no Python objects in the loops. Outputs are caller-allocated
   arrays named ``*_out``; inputs are C-contiguous float64; ``n_threads`` is passed explicitly.
2. The Python engine validates once, allocates once per fit and owns every decision: ``_problem.py``
   (``Problem``: the data bound to these kernels, their packed Hessians expanded with one sign),
   ``_mstep.py`` (the blockwise Newton M-step), ``_trust_region.py`` (trust-region steps of the
   Newton finish), ``_em.py`` (the EM phase and the Newton finish), ``_monitor.py`` (convergence:
   tolerance, history, why the fit stopped), ``_init.py`` (starts), ``params.py`` (the parameters
   and their free-parameter vector) and ``_predict.py`` (model quantities at given parameters).
3. The public surface (``fastmoe.fit``, ``MoEParams``, ``sample`` ...).

Parameters arrive packed: ``W`` (k, 1 + d_gate) with the gating intercept in column 0, ``V``
(k, K, 1 + d) with the expert intercepts in ``V[:, :, 0]``. ``Z`` is the gating design ``M(X)``
(``Z is X`` for standard gating; the kernels then build and store one design).

Layout: samples are processed in blocks of BLOCK = 64 stored feature-major (``Forward``,
``_load_block``), so the forward pass (logits, softmaxes, responsibilities: ``_forward_block``) runs
with samples in the vector lanes and every Hessian block of a block of samples is one ``dgemm``
(``_block_sums``). The scalar per-sample ``_forward_logspace`` is the fallback for samples whose
every ``pi_i f_i(y)`` underflows.

Determinism: every reduction (log-likelihood, gradients, Hessians) is first summed inside a chunk of
consecutive samples, whose size ``chunk_size`` derives from the problem only (``n`` and, for the
wide Hessian pass, its row width), into that chunk's own row of a partial-sum table; the rows are
then added in chunk order after the parallel region. Which thread handled a chunk never matters, so
results are bitwise identical for any thread count. The exact-Hessian pass, whose rows are as wide as
the whole Hessian, keeps only a *wave* of rows (max(threads, WAVE_BUDGET / width) of them) and folds
each wave into the total in chunk order before the next (``_fold_rows``): the same left-to-right sum
over chunks, so the same bits, with temporaries independent of n.

Numerics: everything is in log space where it can underflow; one max-shifted softmax
(``_log_softmax``, scalar; ``_softmax_lanes``, its vector-lane form) serves the gating, the experts
and the responsibilities, and one ``exp`` per logit gives both the log probability and the
probability. Hessians are accumulated as *negative* Hessians (positive semi-definite, ready for
Cholesky) and only their upper triangles: both the (expert, expert) or (class, class) pair and the
(feature, feature) pair are symmetric, so a block Hessian of ``q`` outer-product pairs is stored as
``q (q + 1) / 2`` pairs times ``p (p + 1) / 2`` entries, both in ``numpy.triu_indices`` order. No
array of size n * k * K is ever formed.
"""

from cython.parallel cimport prange, parallel, threadid
from libc.math cimport exp, log, INFINITY
from libc.stdint cimport int32_t, int64_t
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    /* exp(x) for the max-shifted logits of a softmax (x <= 0). Where the build targets AVX2 or
       AVX-512 this branch-free polynomial vectorises and runs ~6x faster than libm's scalar exp
       (measured: 1.3 vs 7.8 ns per call); on a baseline x86-64 (SSE2) build it would be no faster
       than libm, so libm's exp is used there.
       exp(x) = 2^n exp(r) with n = round(x / ln 2) (the 1.5 * 2^52 shifter rounds), r reduced by a
       two-part ln 2 (Cody-Waite, fdlibm's split: n * LN2_HI is exact), |r| <= ln2 / 2, and exp(r) by
       its degree-13 Taylor polynomial (truncation < 1e-17 relative; measured max error 2.2e-16).
       The polynomial is evaluated as 2 exp(r) (every coefficient doubled: exact, so bit for bit twice
       the plain one) and scaled by 2^(n - 1): the exponent field n + 1022 then stays in 1..2046 for
       every n in -1021..1024, so the result is finite up to libm's overflow threshold (709.78) and
       overflows to inf above it, where 2^n alone would have wrapped into the sign bit (issue 13,
       item 6: 800 gave a negative number, +inf NaN). Arguments above 710 are clamped to 710 (which
       overflows: inf, as libm); NaN propagates (both clamps keep it). Arguments below -708 are
       clamped to -708: the result is then ~3e-308 instead of a subnormal or zero, which no
       probability here can tell apart. */
    #if !(defined(__AVX2__) || defined(__AVX512F__))
    static inline double fastmoe_exp(double x) { return exp(x); }
    #else
    static inline double fastmoe_exp(double x) {
        const double shifter = 6755399441055744.0;
        x = x < -708.0 ? -708.0 : x;
        x = x > 710.0 ? 710.0 : x;
        double t = x * 1.4426950408889634 + shifter;
        double n = t - shifter;
        double r = x - n * 6.93147180369123816490e-01;
        r = r - n * 1.90821492927058770002e-10;
        double p = 3.2118087673643226e-10;
        p = p * r + 4.17535139757361980e-09;
        p = p * r + 5.01042167708834376e-08;
        p = p * r + 5.51146384479717814e-07;
        p = p * r + 5.51146384479717814e-06;
        p = p * r + 4.96031746031746032e-05;
        p = p * r + 3.96825396825396826e-04;
        p = p * r + 2.77777777777777778e-03;
        p = p * r + 1.66666666666666667e-02;
        p = p * r + 8.33333333333333333e-02;
        p = p * r + 3.33333333333333333e-01;
        p = p * r + 1.0;
        p = p * r + 2.0;
        p = p * r + 2.0;
        uint64_t bits, base;
        double scale;
        memcpy(&bits, &t, sizeof bits);
        memcpy(&base, &shifter, sizeof base);
        bits = (bits - base + 1022) << 52;
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
    #endif
    """
    double fastmoe_exp(double x) noexcept nogil




cdef extern from *:
    """
    /* Subnormal doubles flushed to zero (FTZ) and read as zero (DAZ) inside the kernels' parallel
       regions. A fit whose coefficients run off (an expert's intercept heading for a boundary
       maximum, |b| in the thousands) makes probabilities near 1e-308, their products subnormal, and
       every dgemm of the exact-Hessian pass that touches them takes the processor's slow microcode
       path: measured 0.48 s against 0.028 s a pass on issue 12's p6 (30 000 rows, 209 parameters),
       two thirds of a whole default fit. Values below 2.2e-308 carry nothing a log-likelihood,
       gradient or Hessian summed over samples can tell from 0. The caller's mode is restored on leaving,
       so NumPy code on the same thread keeps IEEE subnormals. x86-64 only (MXCSR); a no-op elsewhere. */
    #if defined(__SSE2__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned int fastmoe_flush_subnormals(void) {
        unsigned int old = _mm_getcsr();
        _mm_setcsr(old | 0x8040u);
        return old;
    }
    static inline void fastmoe_restore_fp(unsigned int old) { _mm_setcsr(old); }
    #else
    static inline unsigned int fastmoe_flush_subnormals(void) { return 0u; }
    static inline void fastmoe_restore_fp(unsigned int old) { (void)old; }
    #endif
    """
    unsigned int fastmoe_flush_subnormals() noexcept nogil
    void fastmoe_restore_fp(unsigned int old) noexcept nogil


cdef extern from *:
    """
    /* What this module was compiled for (setup.py defines the variant and its flags). */
    #ifndef FASTMOE_VARIANT
    #define FASTMOE_VARIANT "unnamed"
    #endif
    #ifndef FASTMOE_CFLAGS
    #define FASTMOE_CFLAGS ""
    #endif
    #if defined(__AVX512F__)
    #define FASTMOE_VECTOR_ISA "avx512"
    #elif defined(__AVX2__)
    #define FASTMOE_VECTOR_ISA "avx2"
    #elif defined(__SSE2__) || defined(_M_X64)
    #define FASTMOE_VECTOR_ISA "sse2"
    #else
    #define FASTMOE_VECTOR_ISA "generic"
    #endif
    #if defined(__FMA__) || defined(__AVX2__) && defined(_MSC_VER)
    #define FASTMOE_FMA 1
    #else
    #define FASTMOE_FMA 0
    #endif
    #if defined(__AVX2__) || defined(__AVX512F__)
    #define FASTMOE_POLY_EXP 1
    #else
    #define FASTMOE_POLY_EXP 0
    #endif
    #ifdef _OPENMP
    #define FASTMOE_KERNELS_OPENMP 1
    #else
    #define FASTMOE_KERNELS_OPENMP 0
    #endif
    """
    const char* FASTMOE_VARIANT
    const char* FASTMOE_CFLAGS
    const char* FASTMOE_VECTOR_ISA
    int FASTMOE_FMA
    int FASTMOE_POLY_EXP
    int FASTMOE_KERNELS_OPENMP


def build_info():
    """How this kernel module was compiled: ``variant`` (see setup.py), its ``cflags``, the widest
    ``vector_isa`` the compiler targeted, whether it may fuse multiply-adds (``fma``), whether
    ``fastmoe_exp`` is the vectorising polynomial (``polynomial_exp``, else libm's ``exp``) and
    whether it was built with OpenMP."""
    return {
        "variant": FASTMOE_VARIANT.decode(),
        "cflags": FASTMOE_CFLAGS.decode(),
        "vector_isa": FASTMOE_VECTOR_ISA.decode(),
        "fma": bool(FASTMOE_FMA),
        "polynomial_exp": bool(FASTMOE_POLY_EXP),
        "openmp": bool(FASTMOE_KERNELS_OPENMP),
    }


def _exp_for_tests(const double[::1] x, double[::1] out):
    """Test-only (tests/test_kernels.py), not API: ``out[i] = fastmoe_exp(x[i])``.

    Exposes the kernels' exponential, whose arguments inside the kernels are always <= 0, so that its
    behaviour on any argument (overflow, NaN, the clamp below -708) can be checked. The loop
    vectorises like the kernels' loops; its remainder runs the scalar code.
    """
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            out[i] = fastmoe_exp(x[i])


ctypedef fused label_t:
    int32_t
    int64_t

# Chunks of at least CHUNK_MIN samples, and never more than MAX_CHUNKS of them, so that the partial-sum
# table stays small (MAX_CHUNKS rows) even for wide models, while small data still spreads over threads.
cdef Py_ssize_t CHUNK_MIN = 256
cdef Py_ssize_t MAX_CHUNKS = 512
# Samples per block in the fused pass: the Hessian sums run over a block at a time (see newton_pass).
cdef Py_ssize_t BLOCK = 64
# Rows of the partial-sum and scratch tables are padded to 64 bytes so threads never share a cache line.
cdef Py_ssize_t PAD = 8
# The exact-Hessian pass keeps at most this many doubles (2 MB, an L2 cache) of chunk rows at a time,
# and never fewer than one row per thread (see loglik_hessian_pass); wave folds of more entries than
# FOLD_PARALLEL are spread over the threads.
cdef Py_ssize_t WAVE_BUDGET = 1 << 18
cdef Py_ssize_t FOLD_PARALLEL = 1 << 16


cpdef Py_ssize_t chunk_size(Py_ssize_t n_samples, Py_ssize_t max_chunks=MAX_CHUNKS) noexcept nogil:
    """Samples per chunk: at least CHUNK_MIN, and at most ``max_chunks`` chunks (default MAX_CHUNKS).

    The one owner of the chunking rule. It depends on the problem alone (``n_samples``, and a cap
    that a kernel derives from its row width), never on the threads: the thread-count invariance
    rests on it.
    """
    cdef Py_ssize_t c = (n_samples + max_chunks - 1) // max_chunks
    return c if c > CHUNK_MIN else CHUNK_MIN


cdef inline int _threads_for(int n_threads, Py_ssize_t n_chunks) noexcept nogil:
    # Never wake more threads than there are chunks: an idle thread's wake-up costs more than it saves.
    return n_threads if n_threads < n_chunks else <int>n_chunks


cdef inline bint _is_same_design(const double[:, ::1] X, const double[:, ::1] Z) noexcept:
    """Whether the gating design Z is the expert design X itself: same buffer, shape and strides.

    The kernels then build one design for both. The address alone is not enough: a gating callable
    may return a view of X's buffer in another shape (``X.ravel()[:n].reshape(-1, 1)``), which
    shares X's first address but not its rows (issue 13, item 5: a silently wrong log-likelihood).
    """
    return (&Z[0, 0] == &X[0, 0] and Z.shape[0] == X.shape[0] and Z.shape[1] == X.shape[1]
            and Z.strides[0] == X.strides[0] and Z.strides[1] == X.strides[1])


cdef inline Py_ssize_t _padded(Py_ssize_t m) noexcept nogil:
    return (m + PAD - 1) // PAD * PAD


cdef inline double _max_shift(const double* v, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t j
    cdef double vmax = v[0]
    for j in range(1, m):
        if v[j] > vmax:
            vmax = v[j]
    return vmax


cdef inline double _log_softmax(double* v, double* prob, Py_ssize_t m) noexcept nogil:
    """Turn ``v`` into log-softmax(v) in place, write softmax(v) to ``prob``; return log-sum-exp(v).

    The one scalar softmax of the kernels (``_softmax_lanes`` is its vector-lane form): the max
    shift keeps every ``exp`` argument <= 0, and one ``exp`` per entry serves both outputs. An all
    ``-inf`` row (every term underflowed) is guarded: it stays -inf, gets zero weights and returns
    -inf. ``v`` and ``prob`` must not alias.
    """
    cdef Py_ssize_t j
    cdef double vmax = _max_shift(v, m), total = 0.0, log_total
    if vmax == -INFINITY:
        for j in range(m):
            prob[j] = 0.0
        return vmax
    for j in range(m):
        prob[j] = exp(v[j] - vmax)
        total += prob[j]
    log_total = log(total)
    for j in range(m):
        # (v - max) - log(total), not v - (max + log(total)): with logits of 1e9 (an intercept running
        # off to a boundary maximum) max + log(total) rounds to the logits' ulp, 1e-7, and the
        # log-probabilities, so predict_proba's rows, were off by that (rows summing to 1 +- 5e-8).
        v[j] = (v[j] - vmax) - log_total
        prob[j] = prob[j] / total
    return vmax + log_total


cdef inline void _gate_logits(const double* z, const double* W, Py_ssize_t k, Py_ssize_t dg,
                              double* lg) noexcept nogil:
    cdef Py_ssize_t i, p
    cdef double acc
    for i in range(k):
        acc = W[i * (dg + 1)]
        for p in range(dg):
            acc = acc + W[i * (dg + 1) + 1 + p] * z[p]
        lg[i] = acc


cdef inline void _expert_logits(const double* x, const double* V, Py_ssize_t kK, Py_ssize_t d,
                                double* le) noexcept nogil:
    # V is (k, K, 1 + d): the k * K rows are independent affine maps of x.
    cdef Py_ssize_t r, p
    cdef double acc
    for r in range(kK):
        acc = V[r * (d + 1)]
        for p in range(d):
            acc = acc + V[r * (d + 1) + 1 + p] * x[p]
        le[r] = acc


cdef inline double _forward_logspace(const double* z, const double* x, Py_ssize_t label,
                                     const double* W, const double* V,
                                     Py_ssize_t k, Py_ssize_t K, Py_ssize_t dg, Py_ssize_t d,
                                     double* lg, double* pg, double* le, double* pe,
                                     double* tau) noexcept nogil:
    """One sample at (W, V) in log space: the fallback of ``_forward_block`` for a sample whose every
    ``pi_i f_i(y)`` underflows (logit gaps of several hundred), which the direct probabilities cannot
    represent.

    On exit ``pg`` (k) holds pi, ``pe`` (k*K) the expert probabilities f, ``tau`` (k) the
    responsibilities and ``lg`` the log-responsibilities; returns ``log p(y | x)``.
    """
    cdef Py_ssize_t i
    _gate_logits(z, W, k, dg, lg)
    _expert_logits(x, V, k * K, d, le)
    _log_softmax(lg, pg, k)
    for i in range(k):
        _log_softmax(le + i * K, pe + i * K, K)
        lg[i] = lg[i] + le[i * K + label]
    return _log_softmax(lg, tau, k)


cdef inline void _block_full(const double* v, Py_ssize_t m, double* full, Py_ssize_t l) noexcept nogil:
    """Column ``l`` of a block's design: ``full[:, l] = [1, v]`` (row stride BLOCK)."""
    cdef Py_ssize_t p
    full[l] = 1.0
    for p in range(m):
        full[(1 + p) * BLOCK + l] = v[p]


cdef inline void _block_design(const double* v, Py_ssize_t m, double* full, double* outer,
                               Py_ssize_t l) noexcept nogil:
    """Column ``l`` of a block: ``full[:, l] = [1, v]`` and ``outer[:, l]`` = triu of ``[1, v][1, v]^T``."""
    cdef Py_ssize_t p, q, idx = 0
    cdef double vp
    _block_full(v, m, full, l)
    for p in range(m + 1):
        vp = 1.0 if p == 0 else v[p - 1]
        for q in range(p, m + 1):
            outer[idx * BLOCK + l] = vp * (1.0 if q == 0 else v[q - 1])
            idx = idx + 1


cdef inline void _block_sums(double* coef, Py_ssize_t n_coef, double* design, Py_ssize_t n_design,
                             Py_ssize_t nb, double* out) noexcept nogil:
    """``out[p, m] += sum_l coef[p, l] * design[m, l]`` over the ``nb`` samples of a block.

    Both inputs are feature-major with row stride BLOCK, so this is one dgemm (column-major:
    ``out^T += design^T' coef``): the ``X' diag(w) X`` sandwich of every Hessian block at once.
    Measured against contiguous vectorised dot products (``#pragma omp simd``), dgemm wins at every
    size tried, so there is no crossover to switch at: whole newton_pass at d = 2, 49 vs 67 ns per
    sample on one thread and 30 vs 36 ms per 1e6 samples on two; d = 10, 328 vs 794 ns. (Concurrent
    small dgemm calls scale worse from 1 to 2 threads, 1.64x vs 1.86x, but stay faster.) BLAS is held
    to one thread around the kernels, and the calls see the same operands whatever the OpenMP thread
    count, so results stay bitwise thread-invariant.
    """
    cdef int M = <int>n_design, P = <int>n_coef, L = <int>nb, ld = <int>BLOCK
    cdef double one = 1.0
    if n_coef == 0 or nb == 0:
        return
    dgemm(b"T", b"N", &M, &P, &L, &one, design, &ld, coef, &ld, &one, out, &M)


cdef inline void _block_sums_single(double* coef, Py_ssize_t n_coef, double* design, Py_ssize_t n_design,
                                    Py_ssize_t nb, double* out, float* work) noexcept nogil:
    """:func:`_block_sums` with the block's products in single precision, added to ``out`` in double.

    For Hessians that only steer a search (``loglik_hessian_pass(single=True)``): sgemm does twice the
    work of dgemm per vector instruction, and a block's 64-term sums carry a relative rounding of
    about 1e-6, far below what a trust-region model needs. The sums over blocks stay in double, in the
    same fixed order, so the result is still bitwise independent of the thread count. ``work`` holds
    ``(n_coef + n_design) * BLOCK + n_coef * n_design`` floats.
    """
    cdef int M = <int>n_design, P = <int>n_coef, L = <int>nb, ld = <int>BLOCK
    cdef float one = 1.0, zero = 0.0
    cdef float* c32 = work
    cdef float* d32 = work + n_coef * BLOCK
    cdef float* o32 = d32 + n_design * BLOCK
    cdef Py_ssize_t i, l
    if n_coef == 0 or nb == 0:
        return
    for i in range(n_coef):
        for l in range(nb):
            c32[i * BLOCK + l] = <float>coef[i * BLOCK + l]
    for i in range(n_design):
        for l in range(nb):
            d32[i * BLOCK + l] = <float>design[i * BLOCK + l]
    sgemm(b"T", b"N", &M, &P, &L, &one, d32, &ld, c32, &ld, &zero, o32, &M)
    for i in range(n_design * n_coef):
        out[i] = out[i] + o32[i]


cdef inline void _hessian_block_sums(double* coef, Py_ssize_t n_coef, double* design, Py_ssize_t n_design,
                                     Py_ssize_t nb, double* out, float* work) noexcept nogil:
    """A Hessian block's sums: in double (``work`` NULL) or with single-precision products."""
    if work == NULL:
        _block_sums(coef, n_coef, design, n_design, nb, out)
    else:
        _block_sums_single(coef, n_coef, design, n_design, nb, out, work)


cdef inline void _reduce_rows(const double[:, ::1] partial, Py_ssize_t n_rows, Py_ssize_t width,
                              double* total) noexcept nogil:
    # Chunk order, fixed: the thread-count invariance rests on this loop.
    cdef Py_ssize_t c, j
    for j in range(width):
        total[j] = 0.0
    for c in range(n_rows):
        for j in range(width):
            total[j] = total[j] + partial[c, j]


cdef void _fold_rows(const double* table, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t width,
                     double* total, int n_threads) noexcept nogil:
    """``total[j] += table[c, j]`` for the rows ``c = 0 .. n_rows - 1`` in that order.

    The same left-to-right sum as ``_reduce_rows``, continued across calls: folding a table's rows wave
    after wave gives the very bits of one fold over all of them. Columns are independent, so a wide
    table is folded by column slabs in parallel without changing any sum.
    """
    cdef Py_ssize_t slab = 2048, n_slabs = (width + slab - 1) // slab, b, c, j, lo, hi
    if width * n_rows < FOLD_PARALLEL:
        n_threads = 1
    for b in prange(n_slabs, num_threads=_threads_for(n_threads, n_slabs), schedule="static"):
        lo = b * slab
        hi = lo + slab if lo + slab < width else width
        for c in range(n_rows):
            for j in range(lo, hi):
                total[j] = total[j] + table[c * stride + j]


cdef inline void _softmax_lanes(double* A, Py_ssize_t m, Py_ssize_t nb, double* work, double* total,
                                bint log_out) noexcept nogil:
    """Softmax down the ``m`` rows of ``A`` (row stride BLOCK) for each of ``nb`` sample lanes, in place.

    ``A`` becomes the probabilities, or with ``log_out`` the log-probabilities ``A - max - log(sum exp)``
    (one ``log`` per lane). Samples sit in the vector lanes, so every loop runs over ``nb`` contiguous
    doubles: the exponentials go at the long-array rate of ``fastmoe_exp`` instead of rows of k or K
    entries. ``work`` and ``total`` are rows of scratch (``total`` is used only with ``log_out``).
    """
    cdef Py_ssize_t j, l
    cdef double* a = NULL
    for l in range(nb):
        work[l] = A[l]
    for j in range(1, m):
        a = A + j * BLOCK
        for l in range(nb):
            work[l] = a[l] if a[l] > work[l] else work[l]
    if log_out:
        for l in range(nb):
            total[l] = fastmoe_exp(A[l] - work[l])
        for j in range(1, m):
            a = A + j * BLOCK
            for l in range(nb):
                total[l] = total[l] + fastmoe_exp(a[l] - work[l])
        for l in range(nb):
            work[l] = work[l] + log(total[l])
        for j in range(m):
            a = A + j * BLOCK
            for l in range(nb):
                a[l] = a[l] - work[l]
        return
    for j in range(m):
        a = A + j * BLOCK
        for l in range(nb):
            a[l] = fastmoe_exp(a[l] - work[l])
    for l in range(nb):
        work[l] = A[l]
    for j in range(1, m):
        a = A + j * BLOCK
        for l in range(nb):
            work[l] = work[l] + a[l]
    for l in range(nb):
        work[l] = 1.0 / work[l]
    for j in range(m):
        a = A + j * BLOCK
        for l in range(nb):
            a[l] = a[l] * work[l]


cdef inline void _affine_lanes(const double* coef, Py_ssize_t n_out, Py_ssize_t p, const double* design,
                               Py_ssize_t nb, double* out) noexcept nogil:
    """``out[r, l] = coef[r, :] . design[:, l]`` (design row 0 is the constant 1), lanes = samples."""
    cdef Py_ssize_t r, q, l
    cdef double cq
    cdef double* o = NULL
    cdef const double* src
    for r in range(n_out):
        o = out + r * BLOCK
        cq = coef[r * p]
        for l in range(nb):
            o[l] = cq
        for q in range(1, p):
            cq = coef[r * p + q]
            src = design + q * BLOCK
            for l in range(nb):
                o[l] = o[l] + cq * src[l]


cdef struct Forward:
    # One thread's forward scratch (laid out by _forward_scratch). One sample's quantities, for the
    # scalar fallback _forward_logspace:
    double* lg
    double* pg
    double* le
    double* pe
    double* tau
    # A block of BLOCK samples, feature-major (row stride BLOCK, samples in the vector lanes): the
    # designs [1, x] (UF) and [1, z] (ZF, which is UF when Z is X), the labels (as doubles), then the
    # gating probabilities G (k rows), expert probabilities E (k*K rows), responsibilities T (k rows),
    # log p(y | x) (LL) and two rows of work space.
    double* UF
    double* ZF
    double* LB
    double* G
    double* E
    double* T
    double* LL
    double* work
    double* work2


cdef inline Py_ssize_t _forward_size(Py_ssize_t k, Py_ssize_t K, Py_ssize_t d, Py_ssize_t dg) noexcept nogil:
    """Doubles of one thread's ``Forward`` scratch; a pass's own block rows may follow it."""
    return _padded(2 * k + 2 * k * K + k) + ((d + 1) + (dg + 1) + 1 + k + k * K + k + 3) * BLOCK


cdef inline Forward _forward_scratch(double* base, Py_ssize_t k, Py_ssize_t K, Py_ssize_t d,
                                     Py_ssize_t dg, bint same_design) noexcept nogil:
    """Lay a ``Forward`` out over ``_forward_size`` doubles at ``base``."""
    cdef Forward f
    f.lg = base
    f.pg = f.lg + k
    f.le = f.pg + k
    f.pe = f.le + k * K
    f.tau = f.pe + k * K
    f.UF = base + _padded(2 * k + 2 * k * K + k)
    f.ZF = f.UF + (d + 1) * BLOCK
    f.LB = f.ZF + (dg + 1) * BLOCK
    f.G = f.LB + BLOCK
    f.E = f.G + k * BLOCK
    f.T = f.E + k * K * BLOCK
    f.LL = f.T + k * BLOCK
    f.work = f.LL + BLOCK
    f.work2 = f.work + BLOCK
    if same_design:
        f.ZF = f.UF
    return f


cdef inline void _load_block(Forward f, const double* Xp, const double* Zp, const label_t* y,
                             Py_ssize_t first, Py_ssize_t nb, Py_ssize_t d, Py_ssize_t dg,
                             bint same_design, double* UU, double* ZZ) noexcept nogil:
    """Fill a block's designs and labels from samples ``first .. first + nb - 1``.

    When ``UU`` is not NULL the triu outer products of ``[1, x]`` go there (and those of ``[1, z]`` to
    ``ZZ`` unless Z is X), for passes that accumulate Hessians.
    """
    cdef Py_ssize_t l, s
    for l in range(nb):
        s = first + l
        f.LB[l] = <double>y[s]
        if UU != NULL:
            _block_design(Xp + s * d, d, f.UF, UU, l)
            if not same_design:
                _block_design(Zp + s * dg, dg, f.ZF, ZZ, l)
        else:
            _block_full(Xp + s * d, d, f.UF, l)
            if not same_design:
                _block_full(Zp + s * dg, dg, f.ZF, l)


cdef inline void _forward_block(Forward f, Py_ssize_t nb, const double* W, const double* V,
                                Py_ssize_t k, Py_ssize_t K, Py_ssize_t dg, Py_ssize_t d,
                                const double* Zp, const double* Xp, Py_ssize_t first) noexcept nogil:
    """The forward pass for the ``nb`` samples of a loaded block at once, samples in the vector lanes.

    Reads the block's designs ``f.ZF``, ``f.UF`` (row 0 = 1) and labels ``f.LB``; writes the gating
    probabilities ``f.G``, expert probabilities ``f.E``, responsibilities ``f.T`` and ``log p(y | x)``
    to ``f.LL``. Probabilities are formed directly (one ``exp`` per logit, no ``log``):
    ``tau_i = pi_i f_i(y) / sum_j pi_j f_j(y)`` and a single ``log`` gives the log-likelihood. A sample
    whose every ``pi_i f_i(y)`` underflows is redone by ``_forward_logspace`` (from row ``first + l``
    of X and Z), and its lane overwritten.
    """
    cdef Py_ssize_t i, j, l, label
    cdef double total, inv, ll
    cdef double* G = f.G
    cdef double* E = f.E
    cdef double* T = f.T
    _affine_lanes(W, k, dg + 1, f.ZF, nb, G)
    _softmax_lanes(G, k, nb, f.work, NULL, False)
    _affine_lanes(V, k * K, d + 1, f.UF, nb, E)
    for i in range(k):
        _softmax_lanes(E + i * K * BLOCK, K, nb, f.work, NULL, False)
    for l in range(nb):
        label = <Py_ssize_t>f.LB[l]
        total = 0.0
        for i in range(k):
            T[i * BLOCK + l] = G[i * BLOCK + l] * E[(i * K + label) * BLOCK + l]
            total = total + T[i * BLOCK + l]
        if total > 1e-280:
            inv = 1.0 / total
            for i in range(k):
                T[i * BLOCK + l] = T[i * BLOCK + l] * inv
            f.LL[l] = log(total)
        else:
            ll = _forward_logspace(Zp + (first + l) * dg, Xp + (first + l) * d, label, W, V, k, K, dg, d,
                                   f.lg, f.pg, f.le, f.pe, f.tau)
            for i in range(k):
                G[i * BLOCK + l] = f.pg[i]
                T[i * BLOCK + l] = f.tau[i]
            for j in range(k * K):
                E[j * BLOCK + l] = f.pe[j]
            f.LL[l] = ll


def e_step(const double[:, ::1] X, const double[:, ::1] Z, const label_t[::1] y,
           const double[::1] sample_weight, const double[:, ::1] W, const double[:, :, ::1] V,
           double[:, ::1] resp_out, double[::1] logp_out, int n_threads):
    """Log-likelihood and, optionally, responsibilities and per-sample log-likelihoods.

    Parameters
    ----------
    X : (n, d) expert inputs; Z : (n, d_gate) gating inputs; y : (n,) labels in 0..K-1.
    sample_weight : (n,) or empty for unit weights.
    W : (k, 1 + d_gate); V : (k, K, 1 + d).
    resp_out : (n, k) or (0, k) to skip; logp_out : (n,) or empty to skip. Filled in place.
    n_threads : OpenMP threads.

    Returns
    -------
    loglik : float
        ``sum_n w_n log p(y_n | x_n)``.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], dg = Z.shape[1]
    cdef Py_ssize_t k = W.shape[0], K = V.shape[1]
    cdef Py_ssize_t chunk = chunk_size(n), n_chunks = (n + chunk - 1) // chunk
    cdef bint weighted = sample_weight.shape[0] > 0
    cdef bint want_resp = resp_out.shape[0] > 0, want_logp = logp_out.shape[0] > 0
    # The forward pass runs on blocks of BLOCK samples in the vector lanes, as in newton_pass.
    cdef double[:, ::1] scratch = np.empty((n_threads, _forward_size(k, K, d, dg)))
    cdef double[:, ::1] partial = np.zeros((n_chunks, PAD))
    cdef const double* Xp = &X[0, 0]
    cdef const double* Zp = &Z[0, 0]
    cdef const double* Wp = &W[0, 0]
    cdef const double* Vp = &V[0, 0, 0]
    cdef const label_t* yp = &y[0]
    cdef bint same_design = _is_same_design(X, Z)
    cdef Forward f
    cdef Py_ssize_t c, s, l, i, start, end, bs, be, nb
    cdef double acc, total
    cdef unsigned int fp_mode

    with nogil, parallel(num_threads=_threads_for(n_threads, n_chunks)):
        fp_mode = fastmoe_flush_subnormals()  # per thread: see fastmoe_flush_subnormals
        f = _forward_scratch(&scratch[threadid(), 0], k, K, d, dg, same_design)
        for c in prange(n_chunks, schedule="static"):
            start = c * chunk
            end = start + chunk if start + chunk < n else n
            acc = 0.0
            bs = start
            while bs < end:
                be = bs + BLOCK if bs + BLOCK < end else end
                nb = be - bs
                _load_block(f, Xp, Zp, yp, bs, nb, d, dg, same_design, NULL, NULL)
                _forward_block(f, nb, Wp, Vp, k, K, dg, d, Zp, Xp, bs)
                for l in range(nb):
                    s = bs + l
                    if want_logp:
                        logp_out[s] = f.LL[l]
                    if want_resp:
                        for i in range(k):
                            resp_out[s, i] = f.T[i * BLOCK + l]
                    acc = acc + (sample_weight[s] * f.LL[l] if weighted else f.LL[l])
                bs = be
            partial[c, 0] = acc
        fastmoe_restore_fp(fp_mode)
    total = 0.0
    for c in range(n_chunks):
        total = total + partial[c, 0]
    return total


def newton_pass(const double[:, ::1] X, const double[:, ::1] Z, const label_t[::1] y,
                const double[::1] sample_weight, const double[:, ::1] W, const double[:, :, ::1] V,
                const double[:, ::1] resp_in, double[::1] expert_weight_out,
                double[:, ::1] grad_gate_out, double[:, ::1] hess_gate_out,
                double[:, :, ::1] grad_expert_out, double[:, :, ::1] hess_expert_out,
                int n_threads, bint hessians=True):
    """The fused pass: E-step plus every M-step gradient and negative Hessian, in one sweep.

    At the current parameters, with responsibilities ``tau`` computed on the fly (or read from
    ``resp_in`` when it is not empty, for M-steps from given responsibilities), accumulate:

    - ``expert_weight_out`` (k): ``sum w tau_i``, the soft size of each expert;
    - ``grad_gate_out`` (k - 1, 1 + d_gate): ``sum w (tau_i - pi_i) [1, z]``;
    - ``hess_gate_out`` (k(k-1)/2, m_gate): pair (i <= j, triu order over k - 1 experts) of
      ``sum w pi_i (delta_ij - pi_j) triu([1, z][1, z]^T)``, the negative Hessian;
    - ``grad_expert_out`` (k, K - 1, 1 + d): ``sum w tau_i (1[y = s] - f_is) [1, x]``;
    - ``hess_expert_out`` (k, K(K-1)/2, m_expert): pair (s <= t) of
      ``sum w tau_i f_is (delta_st - f_it) triu([1, x][1, x]^T)``.

    With ``hessians=False`` only the log-likelihood, the expert weights and the gradients are
    accumulated (the Hessian outputs are left as they are): by the Fisher identity these are the
    gradient of the log-likelihood itself, for Newton steps that reuse an earlier Hessian.

    Returns the log-likelihood ``sum_n w_n log p(y_n | x_n)`` at (W, V).
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], dg = Z.shape[1]
    cdef Py_ssize_t k = W.shape[0], K = V.shape[1]
    cdef Py_ssize_t pgd = dg + 1, ped = d + 1
    cdef Py_ssize_t mg = pgd * (pgd + 1) // 2, me = ped * (ped + 1) // 2
    cdef Py_ssize_t ngp = (k - 1) * k // 2, nep = (K - 1) * K // 2
    cdef Py_ssize_t chunk = chunk_size(n), n_chunks = (n + chunk - 1) // chunk
    cdef bint weighted = sample_weight.shape[0] > 0
    cdef bint given_resp = resp_in.shape[0] > 0
    # Layout of one partial-sum row.
    cdef Py_ssize_t o_w = 1, o_gg = o_w + k, o_gh = o_gg + (k - 1) * pgd
    cdef Py_ssize_t o_eg = o_gh + ngp * mg, o_eh = o_eg + k * (K - 1) * ped
    cdef Py_ssize_t width = o_eh + k * nep * me
    # Per-thread scratch: the forward pass's (see Forward), then this pass's rows of a block of BLOCK
    # samples laid out feature-major ([entry][sample]): the coefficients run with samples in the
    # vector lanes, and the Hessian sums are matrix products.
    cdef Py_ssize_t fsize = _forward_size(k, K, d, dg)
    cdef Py_ssize_t nrows = me + mg + (k - 1) + ngp + k * (K - 1) + k * nep + 2
    cdef double[:, ::1] scratch = np.empty((n_threads, fsize + nrows * BLOCK))
    cdef double[:, ::1] partial = np.zeros((n_chunks, _padded(width)))
    cdef double[::1] total = np.empty(width)
    cdef const double* Xp = &X[0, 0]
    cdef const double* Zp = &Z[0, 0]
    cdef const double* Wp = &W[0, 0]
    cdef const double* Vp = &V[0, 0, 0]
    cdef const label_t* yp = &y[0]
    # Standard gating: the gating design is the expert design, so it is built (and stored) once.
    cdef bint same_design = _is_same_design(X, Z)
    cdef Forward f
    cdef double* ZF = NULL
    cdef double* ZZ = NULL
    cdef double* UF = NULL
    cdef double* UU = NULL
    cdef double* RG = NULL
    cdef double* CG = NULL
    cdef double* RE = NULL
    cdef double* CE = NULL
    cdef double* G = NULL
    cdef double* E = NULL
    cdef double* T = NULL
    cdef double* LL = NULL
    cdef double* LB = NULL
    cdef double* WT = NULL
    cdef double* TE = NULL
    cdef double* row = NULL
    cdef double* gi = NULL
    cdef double* gj = NULL
    cdef double* ef = NULL
    cdef double* eu = NULL
    cdef double* dst = NULL
    cdef Py_ssize_t c, l, i, j, e, t, u, m, pair, start, end, bs, be, nb
    cdef double acc, delta
    cdef unsigned int fp_mode

    with nogil, parallel(num_threads=_threads_for(n_threads, n_chunks)):
        fp_mode = fastmoe_flush_subnormals()  # per thread: see fastmoe_flush_subnormals
        f = _forward_scratch(&scratch[threadid(), 0], k, K, d, dg, same_design)
        UF = f.UF
        ZF = f.ZF
        LB = f.LB
        G = f.G
        E = f.E
        T = f.T
        LL = f.LL
        UU = &scratch[threadid(), fsize]
        ZZ = UU + me * BLOCK
        RG = ZZ + mg * BLOCK
        CG = RG + (k - 1) * BLOCK
        RE = CG + ngp * BLOCK
        CE = RE + k * (K - 1) * BLOCK
        WT = CE + k * nep * BLOCK
        TE = WT + BLOCK
        if same_design:
            ZZ = UU
        for c in prange(n_chunks, schedule="static"):
            row = &partial[c, 0]
            start = c * chunk
            end = start + chunk if start + chunk < n else n
            bs = start
            while bs < end:
                be = bs + BLOCK if bs + BLOCK < end else end
                nb = be - bs
                _load_block(f, Xp, Zp, yp, bs, nb, d, dg, same_design,
                            UU if hessians else NULL, ZZ if hessians else NULL)
                for l in range(nb):
                    WT[l] = sample_weight[bs + l] if weighted else 1.0
                _forward_block(f, nb, Wp, Vp, k, K, dg, d, Zp, Xp, bs)
                acc = 0.0
                for l in range(nb):
                    acc = acc + WT[l] * LL[l]
                row[0] = row[0] + acc
                if given_resp:
                    for i in range(k):
                        for l in range(nb):
                            T[i * BLOCK + l] = resp_in[bs + l, i]
                # Gating: soft-label multinomial regression of tau on [1, z].
                pair = 0
                for i in range(k - 1):
                    gi = G + i * BLOCK
                    dst = RG + i * BLOCK
                    for l in range(nb):
                        dst[l] = WT[l] * (T[i * BLOCK + l] - gi[l])
                    if not hessians:
                        continue
                    for j in range(i, k - 1):
                        gj = G + j * BLOCK
                        delta = 1.0 if i == j else 0.0
                        dst = CG + pair * BLOCK
                        for l in range(nb):
                            dst[l] = WT[l] * gi[l] * (delta - gj[l])
                        pair = pair + 1
                # Experts: tau-weighted multinomial regression of y on [1, x].
                for e in range(k):
                    acc = 0.0
                    for l in range(nb):
                        TE[l] = WT[l] * T[e * BLOCK + l]
                        acc = acc + TE[l]
                    row[o_w + e] = row[o_w + e] + acc
                    pair = 0
                    for t in range(K - 1):
                        ef = E + (e * K + t) * BLOCK
                        dst = RE + (e * (K - 1) + t) * BLOCK
                        for l in range(nb):
                            dst[l] = TE[l] * ((1.0 if LB[l] == t else 0.0) - ef[l])
                        if not hessians:
                            continue
                        for u in range(t, K - 1):
                            eu = E + (e * K + u) * BLOCK
                            delta = 1.0 if t == u else 0.0
                            dst = CE + (e * nep + pair) * BLOCK
                            for l in range(nb):
                                dst[l] = TE[l] * ef[l] * (delta - eu[l])
                            pair = pair + 1
                # The block's sums, sum_l coefficient[l] * design[l]: small matrix products.
                _block_sums(RG, k - 1, ZF, pgd, nb, row + o_gg)
                _block_sums(RE, k * (K - 1), UF, ped, nb, row + o_eg)
                if hessians:
                    _block_sums(CG, ngp, ZZ, mg, nb, row + o_gh)
                    _block_sums(CE, k * nep, UU, me, nb, row + o_eh)
                bs = be
        fastmoe_restore_fp(fp_mode)

    _reduce_rows(partial, n_chunks, width, &total[0])
    for e in range(k):
        expert_weight_out[e] = total[o_w + e]
    for i in range(k - 1):
        for m in range(pgd):
            grad_gate_out[i, m] = total[o_gg + i * pgd + m]
    for e in range(k):
        for t in range(K - 1):
            for m in range(ped):
                grad_expert_out[e, t, m] = total[o_eg + (e * (K - 1) + t) * ped + m]
    if not hessians:
        return total[0]
    for pair in range(ngp):
        for m in range(mg):
            hess_gate_out[pair, m] = total[o_gh + pair * mg + m]
    for e in range(k):
        for pair in range(nep):
            for m in range(me):
                hess_expert_out[e, pair, m] = total[o_eh + (e * nep + pair) * me + m]
    return total[0]


def q_values(const double[:, ::1] X, const double[:, ::1] Z, const label_t[::1] y,
             const double[::1] sample_weight,
             const double[:, ::1] W_old, const double[:, :, ::1] V_old,
             const double[:, ::1] W_new, const double[:, :, ::1] V_new,
             const double[:, ::1] resp_in, double[::1] q_out, int n_threads):
    """The M-step objectives at trial parameters, with responsibilities from the old ones.

    ``q_out[0] = sum w tau_i(old) log pi_i(new)`` and ``q_out[1 + i] = sum w tau_i(old) log f_i(y | new)``.
    Responsibilities are recomputed on the fly from (W_old, V_old), or read from ``resp_in`` when
    it is not empty: storing them would cost n * k doubles for a pass that is rarely needed. Blocks of
    BLOCK samples in the vector lanes, as in e_step; the new log-probabilities by ``_softmax_lanes``.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], dg = Z.shape[1]
    cdef Py_ssize_t k = W_old.shape[0], K = V_old.shape[1]
    cdef Py_ssize_t chunk = chunk_size(n), n_chunks = (n + chunk - 1) // chunk
    cdef bint weighted = sample_weight.shape[0] > 0
    cdef bint given_resp = resp_in.shape[0] > 0
    # Per-thread scratch: the forward pass's, then the new gating and expert logits of a block.
    cdef Py_ssize_t fsize = _forward_size(k, K, d, dg)
    cdef double[:, ::1] scratch = np.empty((n_threads, fsize + (k + k * K + 1) * BLOCK))
    cdef double[:, ::1] partial = np.zeros((n_chunks, _padded(k + 1)))
    cdef const double* Xp = &X[0, 0]
    cdef const double* Zp = &Z[0, 0]
    cdef const label_t* yp = &y[0]
    cdef bint same_design = _is_same_design(X, Z)
    cdef Forward f
    cdef double* A = NULL
    cdef double* B = NULL
    cdef double* WT = NULL
    cdef double* row = NULL
    cdef Py_ssize_t c, i, l, start, end, bs, be, nb, label
    cdef double r
    cdef unsigned int fp_mode

    with nogil, parallel(num_threads=_threads_for(n_threads, n_chunks)):
        fp_mode = fastmoe_flush_subnormals()  # per thread: see fastmoe_flush_subnormals
        f = _forward_scratch(&scratch[threadid(), 0], k, K, d, dg, same_design)
        A = &scratch[threadid(), fsize]
        B = A + k * BLOCK
        WT = B + k * K * BLOCK
        for c in prange(n_chunks, schedule="static"):
            row = &partial[c, 0]
            start = c * chunk
            end = start + chunk if start + chunk < n else n
            bs = start
            while bs < end:
                be = bs + BLOCK if bs + BLOCK < end else end
                nb = be - bs
                _load_block(f, Xp, Zp, yp, bs, nb, d, dg, same_design, NULL, NULL)
                for l in range(nb):
                    WT[l] = sample_weight[bs + l] if weighted else 1.0
                if given_resp:
                    for i in range(k):
                        for l in range(nb):
                            f.T[i * BLOCK + l] = resp_in[bs + l, i]
                else:
                    _forward_block(f, nb, &W_old[0, 0], &V_old[0, 0, 0], k, K, dg, d, Zp, Xp, bs)
                _affine_lanes(&W_new[0, 0], k, dg + 1, f.ZF, nb, A)
                _softmax_lanes(A, k, nb, f.work, f.work2, True)
                _affine_lanes(&V_new[0, 0, 0], k * K, d + 1, f.UF, nb, B)
                for i in range(k):
                    _softmax_lanes(B + i * K * BLOCK, K, nb, f.work, f.work2, True)
                for l in range(nb):
                    label = <Py_ssize_t>f.LB[l]
                    r = 0.0
                    for i in range(k):
                        r = r + f.T[i * BLOCK + l] * A[i * BLOCK + l]
                        row[1 + i] = row[1 + i] + WT[l] * f.T[i * BLOCK + l] * B[(i * K + label) * BLOCK + l]
                    row[0] = row[0] + WT[l] * r
                bs = be
        fastmoe_restore_fp(fp_mode)
    _reduce_rows(partial, n_chunks, k + 1, &q_out[0])


def predict(const double[:, ::1] X, const double[:, ::1] Z, const double[:, ::1] W,
            const double[:, :, ::1] V, double[:, ::1] log_proba_out, double[:, ::1] gate_out,
            int n_threads):
    """Class log-probabilities ``log sum_i pi_i f_i(s)`` (n, K) and, if ``gate_out`` is not empty,
    the gating probabilities (n, k). No reduction, so no chunk table is needed."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], dg = Z.shape[1]
    cdef Py_ssize_t k = W.shape[0], K = V.shape[1]
    cdef Py_ssize_t n_chunks = (n + CHUNK_MIN - 1) // CHUNK_MIN  # only to size the team
    cdef bint want_gate = gate_out.shape[0] > 0
    cdef Py_ssize_t swidth = 2 * k + 2 * k * K + 2 * k
    cdef double[:, ::1] scratch = np.empty((n_threads, _padded(swidth)))
    cdef const double* Xp = &X[0, 0]
    cdef const double* Zp = &Z[0, 0]
    cdef const double* Wp = &W[0, 0]
    cdef const double* Vp = &V[0, 0, 0]
    cdef double* lg = NULL
    cdef double* pg = NULL
    cdef double* le = NULL
    cdef double* pe = NULL
    cdef double* tmp = NULL
    cdef Py_ssize_t s, i, t
    cdef unsigned int fp_mode

    with nogil, parallel(num_threads=_threads_for(n_threads, n_chunks)):
        fp_mode = fastmoe_flush_subnormals()  # per thread: see fastmoe_flush_subnormals
        lg = &scratch[threadid(), 0]
        pg = lg + k
        le = pg + k
        pe = le + k * K
        tmp = pe + k * K
        for s in prange(n, schedule="static"):
            _gate_logits(Zp + s * dg, Wp, k, dg, lg)
            _log_softmax(lg, pg, k)
            _expert_logits(Xp + s * d, Vp, k * K, d, le)
            for i in range(k):
                _log_softmax(le + i * K, pe + i * K, K)
            for t in range(K):
                for i in range(k):
                    tmp[i] = lg[i] + le[i * K + t]
                log_proba_out[s, t] = _log_softmax(tmp, tmp + k, k)
            if want_gate:
                for i in range(k):
                    gate_out[s, i] = pg[i]
        fastmoe_restore_fp(fp_mode)


cdef inline bint _all_finite(const double* v, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(m):
        if v[i] - v[i] != 0.0:  # inf or NaN (no -ffast-math: this is not folded away)
            return False
    return True


cdef inline Py_ssize_t _inverse_cdf(double* logits, double* prob, Py_ssize_t m, double u) noexcept nogil:
    """The category ``u`` picks from ``softmax(logits)`` by inverse CDF, or -1 where a logit is not finite
    (``prob`` is scratch; ``logits`` is overwritten)."""
    cdef Py_ssize_t i
    cdef double cum = 0.0
    if not _all_finite(logits, m):
        return -1
    _log_softmax(logits, prob, m)
    for i in range(m - 1):
        cum = cum + prob[i]
        if u < cum:
            return i
    return m - 1


def sample_labels(const double[:, ::1] X, const double[:, ::1] Z, const double[:, ::1] W,
                  const double[:, :, ::1] V, const double[:, ::1] uniforms,
                  int64_t[::1] y_out, int64_t[::1] expert_out, int n_threads):
    """Draw the latent expert and the label by inverse CDF from two given uniforms per sample.

    ``uniforms[s, 0]`` picks ``z ~ Categorical(pi(x_s))``, ``uniforms[s, 1]`` picks
    ``y ~ Categorical(f_z(. | x_s))``: the caller's Generator fixes the draw, the thread count does not.
    Where a logit of the gating or of any expert is not finite (a linear predictor overflowed) the
    row's distribution is undefined and its label is -1, for the caller to report, whichever expert the
    draw picks (as ``predict_proba`` raises for such a row): every comparison with NaN fails, so the
    inverse CDF would otherwise fall through to the last expert or class.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], dg = Z.shape[1]
    cdef Py_ssize_t k = W.shape[0], K = V.shape[1]
    cdef Py_ssize_t n_chunks = (n + CHUNK_MIN - 1) // CHUNK_MIN  # only to size the team
    cdef Py_ssize_t swidth = 2 * k + 2 * K
    cdef double[:, ::1] scratch = np.empty((n_threads, _padded(swidth)))
    cdef const double* Xp = &X[0, 0]
    cdef const double* Zp = &Z[0, 0]
    cdef const double* Wp = &W[0, 0]
    cdef const double* Vp = &V[0, 0, 0]
    cdef double* lg = NULL
    cdef double* pg = NULL
    cdef double* le = NULL
    cdef double* pe = NULL
    cdef Py_ssize_t s, i, t, z
    cdef unsigned int fp_mode

    with nogil, parallel(num_threads=_threads_for(n_threads, n_chunks)):
        fp_mode = fastmoe_flush_subnormals()  # per thread: see fastmoe_flush_subnormals
        lg = &scratch[threadid(), 0]
        pg = lg + k
        le = pg + k
        pe = le + K
        for s in prange(n, schedule="static"):
            _gate_logits(Zp + s * dg, Wp, k, dg, lg)
            z = _inverse_cdf(lg, pg, k, uniforms[s, 0])
            t = -1
            for i in range(k if z >= 0 else 0):
                _expert_logits(Xp + s * d, Vp + i * K * (d + 1), K, d, le)
                if not _all_finite(le, K):
                    z = -1
                    break
            if z >= 0:
                _expert_logits(Xp + s * d, Vp + z * K * (d + 1), K, d, le)
                t = _inverse_cdf(le, pe, K, uniforms[s, 1])
            expert_out[s] = z
            y_out[s] = t
        fastmoe_restore_fp(fp_mode)


def loglik_hessian_pass(const double[:, ::1] X, const double[:, ::1] Z, const label_t[::1] y,
                        const double[::1] sample_weight, const double[:, ::1] W, const double[:, :, ::1] V,
                        double[:, ::1] grad_gate_out, double[:, :, ::1] grad_expert_out,
                        double[:, ::1] hess_gg_out, double[:, ::1] hess_ee_out,
                        double[:, :, :, ::1] hess_ge_out, int n_threads, bint single=False):
    """Gradient and negative Hessian of the marginal log-likelihood itself, in one pass.

    Per sample, with ``phi_i = log pi_i + log f_i(y)`` and responsibilities ``tau``, the Hessian of
    ``log p = log sum_i exp(phi_i)`` is ``sum_i tau_i Hess(phi_i) + Cov_tau(grad phi_i)``. The first term
    is the Q-function Hessian of ``newton_pass``; the covariance couples the gating with the experts.
    With ``r_es = 1[y = s] - f_es`` the negative Hessian has the blocks

    - gating (j <= l): ``w [pi_j (delta_jl - pi_l) - tau_j (delta_jl - tau_l)] triu(z z^T)``, in
      ``hess_gg_out`` (k(k-1)/2, m_gate);
    - expert (a = (e, s)) <= (b = (e', t)) over the k(K-1) flattened expert rows:
      ``w [delta_ee' tau_e f_es (delta_st - f_et) - tau_e (delta_ee' - tau_e') r_es r_e't] triu(u u^T)``,
      in ``hess_ee_out`` (P_e (P_e + 1)/2, m_expert) with ``P_e = k(K-1)``;
    - gating j x expert (e, s): ``-w tau_j (delta_je - tau_e) r_es z u^T``, full blocks in ``hess_ge_out``
      (k - 1, k(K-1), 1 + d_gate, 1 + d); when Z is X they are symmetric, and only their triangles are
      summed.

    Gradients are those of ``newton_pass`` (the Fisher identity). Returns the log-likelihood.
    ``single=True`` forms each block's Hessian products in single precision (``_block_sums_single``:
    relative error about 1e-6, for the Newton steps of a search's exploration); the log-likelihood and
    the gradients are always double.

    Samples run in blocks of BLOCK in the vector lanes as in newton_pass (``_forward_block``, the
    coefficients lane by lane, one ``dgemm`` per Hessian block and block of samples). A chunk's sums
    fill one row of the full Hessian's width; the chunks are processed in *waves* of as many rows as
    WAVE_BUDGET allows (at least one per thread), and after each wave its rows are folded into the
    total in chunk order (``_fold_rows``). The total is thus the sum over chunks in chunk order, exactly
    as if every row had been kept, whatever the wave size and the thread count: bitwise
    thread-invariant, with temporaries of max(n_threads, WAVE_BUDGET / width) rows plus per-thread
    block scratch, independent of n. The chunks stay those of ``chunk_size(n, cap)``, the cap (fewer
    chunks for wide rows, at least 16) limiting the rows zeroed and folded per sample.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], dg = Z.shape[1]
    cdef Py_ssize_t k = W.shape[0], K = V.shape[1]
    cdef Py_ssize_t pgd = dg + 1, ped = d + 1
    cdef Py_ssize_t mg = pgd * (pgd + 1) // 2, me = ped * (ped + 1) // 2
    cdef Py_ssize_t ngp = (k - 1) * k // 2, kr = k * (K - 1), nee = kr * (kr + 1) // 2
    cdef Py_ssize_t o_gg = 1, o_eg = o_gg + (k - 1) * pgd, o_hgg = o_eg + kr * ped
    cdef Py_ssize_t o_hee = o_hgg + ngp * mg, o_hge = o_hee + nee * me
    cdef bint same_design = _is_same_design(X, Z)
    # With Z is X the gating x expert blocks sum c z u^T with z = u: symmetric, so only their
    # triangles are accumulated (me entries, not pgd * ped): 17% of the dgemm work at d = 10, k = 4, K = 5.
    cdef Py_ssize_t mge = me if same_design else pgd * ped
    cdef Py_ssize_t width = o_hge + (k - 1) * kr * mge, stride = _padded(width)
    cdef Py_ssize_t max_chunks = (1 << 22) // width
    if max_chunks > MAX_CHUNKS:
        max_chunks = MAX_CHUNKS
    if max_chunks < 16:
        max_chunks = 16
    cdef Py_ssize_t chunk = chunk_size(n, max_chunks), n_chunks = (n + chunk - 1) // chunk
    # Rows per wave: a memory budget, at least one row per thread, at most every chunk. The result does
    # not depend on it (see the docstring), so it may depend on the thread count.
    cdef Py_ssize_t wave = WAVE_BUDGET // stride
    if wave < n_threads:
        wave = n_threads
    if wave > n_chunks:
        wave = n_chunks
    if wave < 1:
        wave = 1
    cdef bint weighted = sample_weight.shape[0] > 0
    # Per-thread scratch: the forward pass's (see Forward), then this pass's rows of a block.
    cdef Py_ssize_t fsize = _forward_size(k, K, d, dg)
    cdef Py_ssize_t nrows = me + mg + pgd * ped + kr + (k - 1) + kr + ngp + nee + (k - 1) * kr + 1
    cdef double[:, ::1] scratch = np.empty((n_threads, fsize + nrows * BLOCK))
    # Single-precision block scratch (single=True): the widest coefficient rows, design and product.
    cdef Py_ssize_t n_coef_max = max(ngp, nee, (k - 1) * kr), n_design_max = max(mg, me, mge)
    cdef Py_ssize_t fwork = (n_coef_max + n_design_max) * BLOCK + n_coef_max * n_design_max
    cdef float[:, ::1] work32 = np.empty((n_threads, fwork if single else 1), dtype=np.float32)
    cdef double[:, ::1] table = np.empty((wave, stride))
    cdef double[::1] total = np.zeros(width)
    cdef const double* Xp = &X[0, 0]
    cdef const double* Zp = &Z[0, 0]
    cdef const double* Wp = &W[0, 0]
    cdef const double* Vp = &V[0, 0, 0]
    cdef const label_t* yp = &y[0]
    cdef Forward f
    cdef double* UU = NULL
    cdef double* ZZ = NULL
    cdef double* ZU = NULL
    cdef double* RS = NULL
    cdef double* RG = NULL
    cdef double* RE = NULL
    cdef double* CG = NULL
    cdef double* CEE = NULL
    cdef double* CGE = NULL
    cdef double* WT = NULL
    cdef float* W32 = NULL
    cdef double* row = NULL
    cdef double* dst = NULL
    cdef double* src = NULL
    cdef double* gj = NULL
    cdef double* gi = NULL
    cdef double* tj = NULL
    cdef double* ti = NULL
    cdef double* te = NULL
    cdef double* te2 = NULL
    cdef double* ef = NULL
    cdef double* ef2 = NULL
    cdef double* ra = NULL
    cdef double* rb = NULL
    cdef Py_ssize_t first, last, c, l, i, j, e, e2, t, t2, a, b, m, pair, start, end, bs, be, nb
    cdef double delta, delta_t, coef
    cdef unsigned int fp_mode

    for first in range(0, n_chunks, wave):
        last = first + wave if first + wave < n_chunks else n_chunks
        with nogil, parallel(num_threads=_threads_for(n_threads, last - first)):
            fp_mode = fastmoe_flush_subnormals()  # per thread: see fastmoe_flush_subnormals
            f = _forward_scratch(&scratch[threadid(), 0], k, K, d, dg, same_design)
            UU = &scratch[threadid(), fsize]
            ZZ = UU + me * BLOCK
            ZU = ZZ + mg * BLOCK
            RS = ZU + pgd * ped * BLOCK
            RG = RS + kr * BLOCK
            RE = RG + (k - 1) * BLOCK
            CG = RE + kr * BLOCK
            CEE = CG + ngp * BLOCK
            CGE = CEE + nee * BLOCK
            WT = CGE + (k - 1) * kr * BLOCK
            W32 = &work32[threadid(), 0] if single else NULL
            if same_design:
                ZZ = UU
            for c in prange(first, last, schedule="static"):
                row = &table[c - first, 0]
                for j in range(width):
                    row[j] = 0.0
                start = c * chunk
                end = start + chunk if start + chunk < n else n
                bs = start
                while bs < end:
                    be = bs + BLOCK if bs + BLOCK < end else end
                    nb = be - bs
                    _load_block(f, Xp, Zp, yp, bs, nb, d, dg, same_design, UU, ZZ)
                    for l in range(nb):
                        WT[l] = sample_weight[bs + l] if weighted else 1.0
                    _forward_block(f, nb, Wp, Vp, k, K, dg, d, Zp, Xp, bs)
                    for l in range(nb):
                        row[0] = row[0] + WT[l] * f.LL[l]
                    # The gating x expert design z u^T, row by row (its triangle UU when Z is X).
                    for i in range(0 if same_design else pgd):
                        gi = f.ZF + i * BLOCK
                        for m in range(ped):
                            src = f.UF + m * BLOCK
                            dst = ZU + (i * ped + m) * BLOCK
                            for l in range(nb):
                                dst[l] = gi[l] * src[l]
                    # Residuals r_es and the expert gradients (Fisher identity: those of the Q functions).
                    for a in range(kr):
                        e = a // (K - 1)
                        t = a - e * (K - 1)
                        te = f.T + e * BLOCK
                        ef = f.E + (e * K + t) * BLOCK
                        ra = RS + a * BLOCK
                        dst = RE + a * BLOCK
                        for l in range(nb):
                            ra[l] = (1.0 if f.LB[l] == t else 0.0) - ef[l]
                            dst[l] = WT[l] * te[l] * ra[l]
                    # Gating x gating.
                    pair = 0
                    for j in range(k - 1):
                        gj = f.G + j * BLOCK
                        tj = f.T + j * BLOCK
                        dst = RG + j * BLOCK
                        for l in range(nb):
                            dst[l] = WT[l] * (tj[l] - gj[l])
                        for i in range(j, k - 1):
                            gi = f.G + i * BLOCK
                            ti = f.T + i * BLOCK
                            delta = 1.0 if i == j else 0.0
                            dst = CG + pair * BLOCK
                            for l in range(nb):
                                dst[l] = WT[l] * (gj[l] * (delta - gi[l]) - tj[l] * (delta - ti[l]))
                            pair = pair + 1
                    # Expert x expert, over flattened rows a = (e, t) <= b = (e2, t2).
                    pair = 0
                    for a in range(kr):
                        e = a // (K - 1)
                        t = a - e * (K - 1)
                        te = f.T + e * BLOCK
                        ef = f.E + (e * K + t) * BLOCK
                        ra = RS + a * BLOCK
                        for b in range(a, kr):
                            e2 = b // (K - 1)
                            t2 = b - e2 * (K - 1)
                            te2 = f.T + e2 * BLOCK
                            rb = RS + b * BLOCK
                            dst = CEE + pair * BLOCK
                            delta = 1.0 if e == e2 else 0.0
                            if e == e2:
                                ef2 = f.E + (e * K + t2) * BLOCK
                                delta_t = 1.0 if t == t2 else 0.0
                                for l in range(nb):
                                    coef = -te[l] * (delta - te2[l]) * ra[l] * rb[l]
                                    coef = coef + te[l] * ef[l] * (delta_t - ef2[l])
                                    dst[l] = WT[l] * coef
                            else:
                                for l in range(nb):
                                    coef = -te[l] * (delta - te2[l]) * ra[l] * rb[l]
                                    dst[l] = WT[l] * coef
                            pair = pair + 1
                    # Gating x expert: full (1 + d_gate) x (1 + d) blocks.
                    for j in range(k - 1):
                        tj = f.T + j * BLOCK
                        for a in range(kr):
                            e = a // (K - 1)
                            te = f.T + e * BLOCK
                            ra = RS + a * BLOCK
                            delta = 1.0 if j == e else 0.0
                            dst = CGE + (j * kr + a) * BLOCK
                            for l in range(nb):
                                dst[l] = -WT[l] * tj[l] * (delta - te[l]) * ra[l]
                    _block_sums(RG, k - 1, f.ZF, pgd, nb, row + o_gg)
                    _block_sums(RE, kr, f.UF, ped, nb, row + o_eg)
                    _hessian_block_sums(CG, ngp, ZZ, mg, nb, row + o_hgg, W32)
                    _hessian_block_sums(CEE, nee, UU, me, nb, row + o_hee, W32)
                    _hessian_block_sums(CGE, (k - 1) * kr, UU if same_design else ZU, mge, nb, row + o_hge, W32)
                    bs = be
            fastmoe_restore_fp(fp_mode)
        # Chunk order across and within waves: the thread-count invariance rests on this fold.
        with nogil:
            _fold_rows(&table[0, 0], stride, last - first, width, &total[0], n_threads)

    for j in range(k - 1):
        for m in range(pgd):
            grad_gate_out[j, m] = total[o_gg + j * pgd + m]
    for e in range(k):
        for t in range(K - 1):
            for m in range(ped):
                grad_expert_out[e, t, m] = total[o_eg + (e * (K - 1) + t) * ped + m]
    for pair in range(ngp):
        for m in range(mg):
            hess_gg_out[pair, m] = total[o_hgg + pair * mg + m]
    for pair in range(nee):
        for m in range(me):
            hess_ee_out[pair, m] = total[o_hee + pair * me + m]
    for j in range(k - 1):
        for a in range(kr):
            for i in range(pgd):
                for m in range(ped):
                    if not same_design:
                        hess_ge_out[j, a, i, m] = total[o_hge + (j * kr + a) * mge + i * ped + m]
                    else:  # entry (min, max) of the block's row-major upper triangle
                        t, t2 = (i, m) if i <= m else (m, i)
                        hess_ge_out[j, a, i, m] = total[o_hge + (j * kr + a) * mge
                                                        + t * ped - t * (t - 1) // 2 + t2 - t]
    return total[0]
