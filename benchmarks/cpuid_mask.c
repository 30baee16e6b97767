/* A process that preloads this (LD_PRELOAD) sees a CPU without the instruction sets CPUID_MASK
 * clears, in every library that asks the CPU itself: ONNX Runtime's MLAS, torch's cpuinfo, oneDNN,
 * OpenVINO's own kernels, numpy. It turns on CPUID faulting (Linux ARCH_SET_CPUID, where the CPU
 * has it: flag cpuid_fault), so every CPUID instruction traps; the SIGSEGV handler runs the real one
 * and clears the masked bits. Threads and children inherit it (execve re-arms it through
 * LD_PRELOAD). CPUID_MASK: "leaf.subleaf.reg=bits,..." in hex, reg one of eax ebx ecx edx, bits
 * the ones to clear. Only what CPUID reports changes: the cores, caches and clocks stay this CPU's.
 * Used by benchmarks/cpuid_mask.py; not part of fastmarco. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

enum { MAX_RULES = 32 };

struct rule {
    uint32_t leaf, subleaf;
    int reg; /* 0 eax, 1 ebx, 2 ecx, 3 edx */
    uint32_t clear;
};

static struct rule rules[MAX_RULES];
static int rule_count;
static int armed;
/* The SIGSEGV disposition the program asked for: ours stays installed and hands it every fault
 * that is not a CPUID. */
static struct sigaction program_action;
typedef int (*sigaction_function)(int, const struct sigaction *, struct sigaction *);
static sigaction_function next_sigaction;

static void run_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __asm__ volatile("cpuid"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

static void on_fault(int signal_number, siginfo_t *info, void *context) {
    greg_t *registers = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *at = (const unsigned char *)registers[REG_RIP];
    /* a faulting CPUID is a general protection fault (SI_KERNEL) at a readable instruction */
    if (info->si_code == SI_KERNEL && at[0] == 0x0f && at[1] == 0xa2) {
        int saved_errno = errno;
        uint32_t leaf = (uint32_t)registers[REG_RAX], subleaf = (uint32_t)registers[REG_RCX];
        uint32_t out[4];
        run_cpuid(leaf, subleaf, out);
        for (int i = 0; i < rule_count; ++i) {
            if (rules[i].leaf == leaf && rules[i].subleaf == subleaf) {
                out[rules[i].reg] &= ~rules[i].clear;
            }
        }
        registers[REG_RAX] = out[0];
        registers[REG_RBX] = out[1];
        registers[REG_RCX] = out[2];
        registers[REG_RDX] = out[3];
        registers[REG_RIP] += 2;
        errno = saved_errno;
        return;
    }
    if (program_action.sa_flags & SA_SIGINFO) {
        program_action.sa_sigaction(signal_number, info, context);
    } else if (program_action.sa_handler == SIG_DFL || program_action.sa_handler == SIG_IGN) {
        struct sigaction fallback;
        memset(&fallback, 0, sizeof fallback);
        fallback.sa_handler = SIG_DFL;
        next_sigaction(SIGSEGV, &fallback, NULL); /* the instruction faults again, and the process ends */
    } else {
        program_action.sa_handler(signal_number);
    }
}

/* The program's own SIGSEGV handlers (Python's faulthandler) are kept and chained, never installed. */
int sigaction(int signal_number, const struct sigaction *action, struct sigaction *previous) {
    if (!next_sigaction) next_sigaction = (sigaction_function)dlsym(RTLD_NEXT, "sigaction");
    if (signal_number != SIGSEGV || !armed) return next_sigaction(signal_number, action, previous);
    if (previous) *previous = program_action;
    if (action) program_action = *action;
    return 0;
}

sighandler_t signal(int signal_number, sighandler_t handler) {
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (sigaction(signal_number, &action, &previous) != 0) return SIG_ERR;
    return previous.sa_handler;
}

static void fail(const char *why, const char *detail) {
    fprintf(stderr, "cpuid_mask: %s%s\n", why, detail);
    _exit(3); /* never measure the real CPU under an emulated family's name */
}

static void parse_rules(const char *text) {
    static const char *names[] = {"eax", "ebx", "ecx", "edx"};
    while (*text) {
        char reg[4] = {0};
        unsigned leaf, subleaf, clear;
        int used = 0;
        if (rule_count == MAX_RULES) fail("too many rules in CPUID_MASK: ", text);
        if (sscanf(text, "%x.%x.%3[a-ex]=%x%n", &leaf, &subleaf, reg, &clear, &used) != 4) {
            fail("CPUID_MASK is not leaf.subleaf.reg=bits,...: ", text);
        }
        int index = -1;
        for (int i = 0; i < 4; ++i) {
            if (strcmp(reg, names[i]) == 0) index = i;
        }
        if (index < 0) fail("CPUID_MASK names no register eax, ebx, ecx or edx: ", text);
        rules[rule_count++] = (struct rule){leaf, subleaf, index, clear};
        text += used;
        if (*text == ',') ++text;
    }
}

__attribute__((constructor)) static void arm(void) {
    const char *mask = getenv("CPUID_MASK");
    if (!mask || !*mask) return;
    parse_rules(mask);
    next_sigaction = (sigaction_function)dlsym(RTLD_NEXT, "sigaction");
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_fault;
    sigemptyset(&ours.sa_mask);
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    if (next_sigaction(SIGSEGV, &ours, &program_action) != 0) fail("cannot install the SIGSEGV handler", "");
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fail("this CPU or kernel has no CPUID faulting: ", strerror(errno));
    }
    armed = 1;
}
