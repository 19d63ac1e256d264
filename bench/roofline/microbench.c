/* Roofline micro-benchmark for fastmoe's kernels: attainable rates of the operations they do.
 *
 * Built by bench/roofline/build.py with the flags the running kernel variant got from setup.py (Python's
 * CFLAGS, -O3 -fno-trapping-math, the variant's -march, -fopenmp; no -ffast-math), so the compiler makes the
 * same code-generation choices (vector width, FMA contraction, no reassociation of reductions).
 *
 * Kernels (each timed with T threads working on private buffers; rate = total ops / wall time):
 *   axpy_m<m>  the Hessian/gradient accumulation of newton_pass:
 *                for pair: c = coef[pair]; for j < m: dst[pair*m + j] += c * src[j]
 *              with m = the packed triangle width (6 for d=2, 66 for d=10) and as many pairs as a
 *              partial-sum row of that shape holds (the row stays in L1/L2 like the kernel's).
 *              2 flops per element.
 *   dot_d<d>   the logits loops (_gate_logits/_expert_logits): rows of acc = b + sum_p w_p x_p over a
 *              stream of samples; a sequential reduction (no -ffast-math, so not vectorised).
 *              2 flops per (row, feature).
 *   peak       32 independent a = a * x + y chains (register-resident, vectorised): the FP ceiling.
 *   fexp       fastmoe_exp, copied verbatim from the extern block of src/fastmoe/_kernels.pyx (keep the
 *              two in sync), on an array of arguments in [-20, 0] (as after the max shift): calls/s.
 *   fexp_m<m>  the same in the kernel's shape: rows of m exponentials (m = k K, the flat loop over the
 *              expert logits, or m = k, the gating logits), m a run-time value as in _forward.
 *   exp, log   libm calls on arrays of realistic arguments (exp: [-20, 0]; log: [1, 8] as log of a sum
 *              of probabilities): calls/s. libm exp is what fastmoe_exp falls back to in a portable build.
 *   div        a[i] / b[i] on arrays (the softmax normalisations' reciprocals): divisions/s.
 *
 * Output: one JSON object on stdout.  Usage: microbench [n_threads] [seconds_per_test]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>

/* ---- fastmoe_exp: verbatim copy of the extern block in src/fastmoe/_kernels.pyx ---------------- */
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
/* ---------------------------------------------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static volatile double sink;

/* ---------------------------------------------------------------------------------------------- */
__attribute__((noinline)) static void axpy_rows(double *dst, const double *src, const double *coef,
                                                long n_pairs, long m) {
    for (long p = 0; p < n_pairs; p++) {
        double c = coef[p];
        double *row = dst + p * m;
        for (long j = 0; j < m; j++) row[j] = row[j] + c * src[j];
    }
}

__attribute__((noinline)) static void dot_rows(const double *x, const double *V, long rows, long d,
                                               double *out) {
    for (long r = 0; r < rows; r++) {
        double acc = V[r * (d + 1)];
        for (long p = 0; p < d; p++) acc = acc + V[r * (d + 1) + 1 + p] * x[p];
        out[r] = acc;
    }
}

#define NACC 32
__attribute__((noinline)) static void peak_chains(double *acc, double x, double y, long reps) {
    for (long r = 0; r < reps; r++)
        for (int j = 0; j < NACC; j++) acc[j] = acc[j] * x + y;
}

__attribute__((noinline)) static void exp_array(const double *a, double *out, long n) {
    for (long i = 0; i < n; i++) out[i] = exp(a[i]);
}

__attribute__((noinline)) static void fexp_array(const double *a, double *out, long n) {
    for (long i = 0; i < n; i++) out[i] = fastmoe_exp(a[i]);
}

/* rows of m exponentials, m known at run time only (like k * K in _forward) */
__attribute__((noinline)) static void fexp_rows(const double *a, double *out, long rows, long m) {
    for (long r = 0; r < rows; r++) {
        const double *src = a + r * m;
        double *dst = out + r * m;
        for (long j = 0; j < m; j++) dst[j] = fastmoe_exp(src[j]);
    }
}

__attribute__((noinline)) static void log_array(const double *a, double *out, long n) {
    for (long i = 0; i < n; i++) out[i] = log(a[i]);
}

__attribute__((noinline)) static void div_array(const double *a, const double *b, double *out, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] / b[i];
}

/* ---------------------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    int kind;   /* 0 axpy, 1 dot, 2 peak, 3 exp, 4 log, 5 div, 6 fexp (array), 7 fexp (rows of m) */
    long a, b;  /* axpy: m, n_pairs; dot: d, rows; fexp rows: m */
} test_t;

#define BUF 4096  /* elements per array for exp/log/div: 32 KiB, L1/L2 resident */

static double run_once(const test_t *t, long reps, double *ops_out) {
    double total_ops = 0.0;
    double t0 = now();
#pragma omp parallel reduction(+ : total_ops)
    {
        unsigned seed = 12345u;
#ifdef _OPENMP
        seed += 7919u * (unsigned)omp_get_thread_num();
#endif
        double ops = 0.0, check = 0.0;
        if (t->kind == 0) {
            long m = t->a, np = t->b;
            double *dst = calloc(np * m, sizeof(double)), *src = malloc(m * sizeof(double));
            double *coef = malloc(np * sizeof(double));
            for (long j = 0; j < m; j++) src[j] = 1.0 + 1e-3 * j;
            for (long p = 0; p < np; p++) coef[p] = 1e-6 * (p + 1);
            for (long r = 0; r < reps; r++) axpy_rows(dst, src, coef, np, m);
            check = dst[np * m - 1];
            ops = 2.0 * m * np * reps;
            free(dst); free(src); free(coef);
        } else if (t->kind == 1) {
            long d = t->a, rows = t->b, n_x = 512;
            double *x = malloc(n_x * d * sizeof(double)), *V = malloc(rows * (d + 1) * sizeof(double));
            double *out = malloc(rows * sizeof(double));
            for (long i = 0; i < n_x * d; i++) x[i] = (double)rand_r(&seed) / RAND_MAX - 0.5;
            for (long i = 0; i < rows * (d + 1); i++) V[i] = (double)rand_r(&seed) / RAND_MAX;
            for (long r = 0; r < reps; r++) {
                for (long s = 0; s < n_x; s++) {
                    dot_rows(x + s * d, V, rows, d, out);
                    check += out[rows - 1];
                }
            }
            ops = 2.0 * d * rows * n_x * reps;
            free(x); free(V); free(out);
        } else if (t->kind == 2) {
            double acc[NACC];
            for (int j = 0; j < NACC; j++) acc[j] = 1.0 + j * 1e-3;
            peak_chains(acc, 0.999999, 1e-7, reps * 1000);
            for (int j = 0; j < NACC; j++) check += acc[j];
            ops = 2.0 * NACC * 1000.0 * reps;
        } else {
            double *a = malloc(BUF * sizeof(double)), *b = malloc(BUF * sizeof(double));
            double *out = malloc(BUF * sizeof(double));
            for (long i = 0; i < BUF; i++) {
                double u = (double)rand_r(&seed) / RAND_MAX;
                a[i] = t->kind == 4 ? 1.0 + 7.0 * u : -20.0 * u;
                b[i] = 1.0 + u;
            }
            long rows = t->kind == 7 ? BUF / t->a : 0;
            for (long r = 0; r < reps; r++) {
                if (t->kind == 3) exp_array(a, out, BUF);
                else if (t->kind == 4) log_array(a, out, BUF);
                else if (t->kind == 6) fexp_array(a, out, BUF);
                else if (t->kind == 7) fexp_rows(a, out, rows, t->a);
                else div_array(a, b, out, BUF);
                check += out[r % (t->kind == 7 ? rows * t->a : BUF)];
            }
            ops = (double)(t->kind == 7 ? rows * t->a : BUF) * reps;
            free(a); free(b); free(out);
        }
        sink = check;
        total_ops += ops;
    }
    double elapsed = now() - t0;
    *ops_out = total_ops;
    return elapsed;
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 1;
    double seconds = argc > 2 ? atof(argv[2]) : 0.3;
#ifdef _OPENMP
    omp_set_num_threads(n_threads);
#else
    n_threads = 1;
#endif
    /* axpy shapes: m = triangle width; pairs = a partial-sum row's worth of blocks
       (d=2,k=3,K=3: 3 gate + 9 expert pairs of 6; d=10,k=4,K=5: 6 + 40 pairs of 66). */
    test_t tests[] = {
        {"axpy_m6", 0, 6, 12},   {"axpy_m66", 0, 66, 46}, {"axpy_m3", 0, 3, 14}, {"axpy_m11", 0, 11, 19},
        {"dot_d2", 1, 2, 12},    {"dot_d10", 1, 10, 24},
        {"peak", 2, 0, 0},       {"exp", 3, 0, 0},        {"log", 4, 0, 0},      {"div", 5, 0, 0},
        /* fastmoe_exp: long array, then the kernel's loop lengths (k K = 9, 20; k = 3, 4) */
        {"fexp", 6, 0, 0},       {"fexp_m9", 7, 9, 0},    {"fexp_m20", 7, 20, 0},
        {"fexp_m3", 7, 3, 0},    {"fexp_m4", 7, 4, 0},
    };
    int n_tests = sizeof(tests) / sizeof(tests[0]);
    printf("{\"n_threads\": %d, \"openmp\": %d, \"rates\": {", n_threads,
#ifdef _OPENMP
           1
#else
           0
#endif
    );
    for (int i = 0; i < n_tests; i++) {
        double ops, elapsed;
        long reps = 1;
        /* grow reps until one run takes ~seconds/4, then take the best of 3 runs of that size */
        for (;;) {
            elapsed = run_once(&tests[i], reps, &ops);
            if (elapsed > seconds / 4 || reps > (1L << 40)) break;
            reps *= 2;
        }
        double best = ops / elapsed;
        for (int k = 0; k < 3; k++) {
            elapsed = run_once(&tests[i], reps, &ops);
            if (ops / elapsed > best) best = ops / elapsed;
        }
        printf("%s\"%s\": %.6e", i ? ", " : "", tests[i].name, best);
        fflush(stdout);
    }
    printf("}}\n");
    return 0;
}
