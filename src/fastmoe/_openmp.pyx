# cython: language_level=3
"""How the extension was built: whether OpenMP is on and how many threads it offers."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTMOE_OPENMP 1
    #else
    #define FASTMOE_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_num_procs(void) { return 1; }
    #endif
    """
    int FASTMOE_OPENMP
    int omp_get_max_threads() nogil
    int omp_get_num_procs() nogil


def openmp_enabled():
    """Return True when the compiled kernels were built with OpenMP (parallel), False when serial."""
    return bool(FASTMOE_OPENMP)


def openmp_max_threads():
    """Threads OpenMP would use by default: ``omp_get_max_threads()``, which honours ``OMP_NUM_THREADS``.

    Returns 1 for a serial build.
    """
    return min(omp_get_max_threads(), omp_get_num_procs())
