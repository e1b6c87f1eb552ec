/* Hide AVX-512 (and VNNI / BF16) from code whose `cpuid` instructions were patched to `int3; nop`.
 *
 * Loaded with LD_PRELOAD by tools/avx2_kernels.py, which copies ONNX Runtime's Python
 * extension and rewrites each `cpuid` (0f a2) in it to `int3; nop` (cc 90). Each one then traps
 * here: the handler runs the real `cpuid` with the caller's EAX/ECX, clears the feature bits an
 * AVX2-only x86-64 host (Haswell to Zen 3) does not have, writes the four registers back and
 * resumes after the two patched bytes. ONNX Runtime (MLAS) then picks its AVX2 kernels, as it
 * would on such a host. It has no switch of its own for that (PyTorch has ATEN_CPU_CAPABILITY,
 * oneDNN ONEDNN_MAX_CPU_ISA, OpenCV OPENCV_CPU_DISABLE, numpy NPY_DISABLE_CPU_FEATURES), and
 * this machine cannot make `cpuid` fault (arch_prctl(ARCH_SET_CPUID) answers ENODEV here).
 *
 * A SIGTRAP that is not one of the patched sites is handed back to the default action.
 * SCCAN_CPUID_MASK_LOG=1 prints, at exit, how many patched calls were answered and how many of
 * them asked leaf 7 (where the AVX-512 flags live).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>
#include <unistd.h>

/* Leaf 7, sub-leaf 0. EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31. */
#define LEAF7_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | \
                   (1u << 30) | (1u << 31))
/* ECX: AVX512_VBMI 1, AVX512_VBMI2 6, AVX512_VNNI 11, AVX512_BITALG 12, AVX512_VPOPCNTDQ 14. */
#define LEAF7_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* EDX: AVX512_4VNNIW 2, AVX512_4FMAPS 3, AVX512_VP2INTERSECT 8, AMX_BF16 22, AVX512_FP16 23,
 * AMX_TILE 24, AMX_INT8 25. */
#define LEAF7_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | \
                   (1u << 25))
/* Leaf 7, sub-leaf 1. EAX: AVX_VNNI 4 (the VEX form, also absent before Alder Lake / Zen 5),
 * AVX512_BF16 5. */
#define LEAF7_1_EAX ((1u << 4) | (1u << 5))

static volatile unsigned long answered, leaf7;

static void on_trap(int sig, siginfo_t *info, void *context) {
    (void)info;
    ucontext_t *uc = context;
    greg_t *reg = uc->uc_mcontext.gregs;
    const unsigned char *next = (const unsigned char *)reg[REG_RIP];
    if (next[-1] != 0xcc || next[0] != 0x90) { /* not a patched cpuid */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    unsigned int leaf = (unsigned int)reg[REG_RAX], sub = (unsigned int)reg[REG_RCX];
    unsigned int a, b, c, d;
    __cpuid_count(leaf, sub, a, b, c, d);
    if (leaf == 7 && sub == 0) {
        b &= ~LEAF7_EBX;
        c &= ~LEAF7_ECX;
        d &= ~LEAF7_EDX;
    } else if (leaf == 7 && sub == 1) {
        a &= ~LEAF7_1_EAX;
    }
    if (leaf == 7) leaf7++;
    answered++;
    /* cpuid writes the 32-bit registers, which zeroes the upper halves. */
    reg[REG_RAX] = a;
    reg[REG_RBX] = b;
    reg[REG_RCX] = c;
    reg[REG_RDX] = d;
    reg[REG_RIP] = (greg_t)(next + 1); /* past the nop */
}

static void report(void) {
    fprintf(stderr, "cpuid_mask: %lu patched cpuid calls answered, %lu of leaf 7, in pid %d\n",
            answered, leaf7, (int)getpid());
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action = {0};
    action.sa_sigaction = on_trap;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTRAP, &action, NULL);
    const char *log = getenv("SCCAN_CPUID_MASK_LOG");
    if (log && log[0] == '1') atexit(report);
}
