// fiber_switch_x86_64.h -- the emulator's hand-written context switch on x86-64 (runtime.cpp):
// saves the six callee-saved registers and the stack pointer, a few ns per switch.
//
// Written for both object formats: ELF (Linux) and Mach-O (Intel Macs), whose assemblers
// differ: Mach-O C symbols carry a leading underscore, hide with .private_extern instead of
// .hidden, and know no .type/.size. .ci/run assembles this header for both with clang
// (`-target x86_64-apple-macos11` and the host target); it includes no system header.
#pragma once
#if defined(__x86_64__)
extern "C" void llmetal_emu_switch(void** save_sp, void* to_sp);
extern "C" void llmetal_emu_trampoline();

#if defined(__APPLE__)
#define LLMETAL_ASM_FUNC(n) ".globl _" #n "\n.private_extern _" #n "\n.p2align 4\n_" #n ":\n"
#define LLMETAL_ASM_END(n) ""
#else
#define LLMETAL_ASM_FUNC(n) ".globl " #n "\n.hidden " #n "\n.type " #n ",@function\n.p2align 4\n" #n ":\n"
#define LLMETAL_ASM_END(n) ".size " #n ", .-" #n "\n"
#endif

asm(".text\n"
    LLMETAL_ASM_FUNC(llmetal_emu_switch)
    R"(
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)" LLMETAL_ASM_END(llmetal_emu_switch)
    LLMETAL_ASM_FUNC(llmetal_emu_trampoline)
    R"(
    movq %r12, %rdi
    callq *%r13
    ud2
)" LLMETAL_ASM_END(llmetal_emu_trampoline));
#endif
