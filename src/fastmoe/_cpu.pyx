# cython: language_level=3
"""What this CPU and its operating system can run: the x86-64 microarchitecture level, from CPUID.

Built for the baseline target (no ``-march``) so that it runs everywhere; ``_dispatch`` asks it which
kernel variant to import. A feature counts only when the operating system also saves its registers
(XGETBV): a CPU with AVX-512 under an OS that does not enable the ZMM state cannot run AVX-512 code.
The levels are those of the x86-64 psABI, which ``-march=x86-64-v3`` / ``-v4`` compile for:

- v2: SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B, LAHF/SAHF;
- v3: v2 + AVX, AVX2, FMA, BMI1, BMI2, F16C, LZCNT, MOVBE (and the YMM state enabled);
- v4: v3 + AVX-512 F, BW, CD, DQ, VL (and the opmask and ZMM states enabled; macOS enables them on
  first use, so there only CPUID counts).
"""

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
    #define FASTMOE_X86 1
    #if defined(_MSC_VER)
    #include <intrin.h>
    static void fastmoe_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
        int t[4];
        __cpuidex(t, (int)leaf, (int)sub);
        r[0] = (unsigned)t[0]; r[1] = (unsigned)t[1]; r[2] = (unsigned)t[2]; r[3] = (unsigned)t[3];
    }
    static unsigned long long fastmoe_xgetbv(void) { return _xgetbv(0); }
    #else
    #include <cpuid.h>
    static void fastmoe_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    }
    static unsigned long long fastmoe_xgetbv(void) {
        unsigned lo, hi;
        __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        return ((unsigned long long)hi << 32) | lo;
    }
    #endif
    #define FASTMOE_BIT(x, n) (((x) >> (n)) & 1u)
    /* Registers of the CPUID leaves that hold the features the levels need. */
    static void fastmoe_cpu_regs(unsigned *ecx1, unsigned *ebx7, unsigned *ecx81, unsigned long long *xcr0) {
        unsigned r[4], max_leaf, max_ext;
        *ecx1 = *ebx7 = *ecx81 = 0;
        *xcr0 = 0;
        fastmoe_cpuid(0, 0, r);
        max_leaf = r[0];
        if (max_leaf >= 1) { fastmoe_cpuid(1, 0, r); *ecx1 = r[2]; }
        if (max_leaf >= 7) { fastmoe_cpuid(7, 0, r); *ebx7 = r[1]; }
        fastmoe_cpuid(0x80000000u, 0, r);
        max_ext = r[0];
        if (max_ext >= 0x80000001u) { fastmoe_cpuid(0x80000001u, 0, r); *ecx81 = r[2]; }
        if (FASTMOE_BIT(*ecx1, 27)) *xcr0 = fastmoe_xgetbv();  /* OSXSAVE: XGETBV is available */
    }
    static int fastmoe_x86_level(void) {
        unsigned ecx1, ebx7, ecx81;
        unsigned long long xcr0;
        int v2, v3, v4, zmm_state;
        fastmoe_cpu_regs(&ecx1, &ebx7, &ecx81, &xcr0);
        v2 = FASTMOE_BIT(ecx1, 0) && FASTMOE_BIT(ecx1, 9) && FASTMOE_BIT(ecx1, 13) && FASTMOE_BIT(ecx1, 19) && FASTMOE_BIT(ecx1, 20) && FASTMOE_BIT(ecx1, 23)
             && FASTMOE_BIT(ecx81, 0);
        v3 = v2 && (xcr0 & 0x6) == 0x6 && FASTMOE_BIT(ecx1, 28) && FASTMOE_BIT(ecx1, 12) && FASTMOE_BIT(ecx1, 22) && FASTMOE_BIT(ecx1, 29)
             && FASTMOE_BIT(ebx7, 5) && FASTMOE_BIT(ebx7, 3) && FASTMOE_BIT(ebx7, 8) && FASTMOE_BIT(ecx81, 5);
    #if defined(__APPLE__)
        zmm_state = 1;
    #else
        zmm_state = (xcr0 & 0xe6) == 0xe6;
    #endif
        v4 = v3 && zmm_state && FASTMOE_BIT(ebx7, 16) && FASTMOE_BIT(ebx7, 17) && FASTMOE_BIT(ebx7, 28) && FASTMOE_BIT(ebx7, 30) && FASTMOE_BIT(ebx7, 31);
        return v4 ? 4 : v3 ? 3 : v2 ? 2 : 1;
    }
    static int fastmoe_x86_feature(int which) {
        unsigned ecx1, ebx7, ecx81;
        unsigned long long xcr0;
        fastmoe_cpu_regs(&ecx1, &ebx7, &ecx81, &xcr0);
        switch (which) {
            case 0: return FASTMOE_BIT(ecx1, 20);                                       /* sse4.2 */
            case 1: return FASTMOE_BIT(ecx1, 28) && (xcr0 & 0x6) == 0x6;                /* avx (usable) */
            case 2: return FASTMOE_BIT(ebx7, 5) && (xcr0 & 0x6) == 0x6;                 /* avx2 (usable) */
            case 3: return FASTMOE_BIT(ecx1, 12) && (xcr0 & 0x6) == 0x6;                /* fma (usable) */
            case 4: return (int)FASTMOE_BIT(ebx7, 16);                                  /* avx512f (CPUID) */
            case 5: return (xcr0 & 0xe6) == 0xe6;                               /* zmm state enabled */
        }
        return 0;
    }
    #else
    #define FASTMOE_X86 0
    static int fastmoe_x86_level(void) { return 0; }
    static int fastmoe_x86_feature(int which) { (void)which; return 0; }
    #endif
    """
    int FASTMOE_X86
    int fastmoe_x86_level() nogil
    int fastmoe_x86_feature(int which) nogil


def x86_level():
    """The x86-64 microarchitecture level this CPU and OS support (1 to 4), or 0 on another architecture."""
    return fastmoe_x86_level()


def features():
    """A few CPU features by name (what ``show_config`` prints); empty on other architectures."""
    if not FASTMOE_X86:
        return {}
    names = ("sse4.2", "avx", "avx2", "fma", "avx512f", "zmm_state")
    return {name: bool(fastmoe_x86_feature(i)) for i, name in enumerate(names)}
