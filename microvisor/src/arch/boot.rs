//! PVH entry: the 32-bit trampoline QEMU jumps to, the PVH ELF note that names
//! it, and the switch to 64-bit mode running in the hypervisor's high half.
//! Owns the boot page tables (identity + slot 261 over the first GiB) until
//! `mm::paging` replaces them. Must never be called after boot.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .boot.data, "aw"
    .balign 4096
    .globl boot_pml4
boot_pml4: .fill 512, 8, 0
boot_pdpt: .fill 512, 8, 0
boot_pd:   .fill 512, 8, 0
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .globl boot_gdtr
boot_gdtr:
    .word 23
    .long boot_gdt

    .section .bss
    .balign 16
boot_stack: .space 131072
    .globl boot_stack_top
boot_stack_top:

    .section .boot.text, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi
    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $512, %ecx
1:  mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b
    movl $(boot_pd + 3), boot_pdpt
    movl $(boot_pdpt + 3), boot_pml4
    movl $(boot_pdpt + 3), boot_pml4 + 261 * 8
    mov $bsp64, %ebp
    jmp boot_enter_long_mode

    /* Shared by the boot CPU and the APs (arch::smp), in 32-bit protected
       mode with flat segments: the boot page tables, PAE, EFER (LME, NXE,
       SCE), paging, the boot GDT; then 64-bit mode with DS, ES, SS = 0x10,
       FS and GS null, continuing at the low address in %ebp. %esi is kept. */
    .globl boot_enter_long_mode
boot_enter_long_mode:
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $0x901, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $2f
    .code64
2:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov %ebp, %ebp
    jmp *%rbp

bsp64:
    movabs $boot_stack_top, %rsp
    mov %esi, %edi
    movabs ${entry}, %rax
    call *%rax
3:  hlt
    jmp 3b
    .text
"#,
    entry = sym crate::kernel_main,
    options(att_syntax)
);
