/* kuprobe's event layout, shared by the BPF programs and Python (kuprobe/live/events.py
 * mirrors it field by field; tests/unit/test_event_layout.py checks the two agree). */
#ifndef KUPROBE_EVENT_H
#define KUPROBE_EVENT_H

#define KUPROBE_STACK_BYTES 128 /* 16 words of a 64-bit task, 32 of a 32-bit one */

/* struct kuprobe_slot_cfg.flags */
#define KUPROBE_CFG_STREAM    0x1 /* send an event per hit (a handler wants it) */
#define KUPROBE_CFG_RET       0x2 /* attached as a return probe */
#define KUPROBE_CFG_KERNEL    0x4 /* a kprobe: the stack is kernel memory */
#define KUPROBE_CFG_REMOVABLE 0x8 /* honour UPROBE_HANDLER_REMOVE per process */
#define KUPROBE_CFG_OFF       0x10 /* being unregistered: count and record nothing */
#define KUPROBE_CFG_CAPTURE   0x20 /* read memory at the hit (kuprobe_capcfg): a captured event */
#define KUPROBE_CFG_STACK     0x40 /* record the stack (kuprobe_stacks): a captured event */
/* A uretprobe's func where bpf_get_func_ip() gives 0 for uprobes (before Linux 6.6): the
 * entry slot records bp_vaddr in kuprobe_funcs, the return slot reads it back (func_id). */
#define KUPROBE_CFG_FUNC      0x80
/* For tests: behave as if bpf_get_func_ip() gave 0 (kernels before 6.6) */
#define KUPROBE_CFG_NO_FUNC_IP 0x100

/* struct kuprobe_event.flags */
#define KUPROBE_EV_RET     0x1 /* a return event */
#define KUPROBE_EV_NOSTACK 0x2 /* the stack words could not be read */
#define KUPROBE_EV_CAPTURED 0x4 /* a struct kuprobe_event_captured */

/* Memory read at the hit (a probe's Capture declarations, kuprobe/probes.py). */
#define KUPROBE_CAPTURES 4          /* per probe */
#define KUPROBE_CAPTURE_BYTES 256   /* per capture */
/* struct kuprobe_capture_cfg.kind */
#define KUPROBE_CAP_NONE 0
#define KUPROBE_CAP_STR 1 /* a NUL-terminated string, up to size bytes with the NUL */
#define KUPROBE_CAP_BUF 2 /* size bytes */
/* .space */
#define KUPROBE_CAP_USER 0
#define KUPROBE_CAP_KERNEL 1
#define KUPROBE_CAP_AUTO 2 /* kernel if the address's top bit is set (x86_64, arm64) */
/* .src: where the address comes from */
#define KUPROBE_SRC_REG 0     /* pt_regs word number index */
#define KUPROBE_SRC_STACK64 1 /* 64-bit stack word number index */
#define KUPROBE_SRC_STACK32 2 /* 32-bit stack word number index */

struct kuprobe_capture_cfg {
	__u8 kind;
	__u8 space;
	__u8 src;
	__u8 mask32; /* a 32-bit task: the address is 32 bits */
	__u32 index;
	__s64 offset; /* added to the source's value */
	__u32 size;   /* bytes to read, at most KUPROBE_CAPTURE_BYTES */
	__u32 pad;
};

struct kuprobe_slot_captures {
	struct kuprobe_capture_cfg cap[KUPROBE_CAPTURES];
};

struct kuprobe_slot_cfg {
	__u32 flags;
	__u32 tgid;    /* 0: every process */
	__u32 func_id; /* KUPROBE_CFG_FUNC: the registration's key in kuprobe_funcs */
	__u32 pad;
};

struct kuprobe_counts {
	__u64 hits; /* the probe fired (after the pid filter) */
	__u64 lost; /* an event could not be reserved in the ring buffer */
};

struct kuprobe_removed_key {
	__u32 slot;
	__u32 tgid;
};

/* kuprobe_funcs: where a uprobe's entry was hit in a process (KUPROBE_CFG_FUNC) */
struct kuprobe_func_key {
	__u32 func_id;
	__u32 tgid;
};

struct kuprobe_event {
	__u32 slot;
	__u32 flags;
	__u64 ts;       /* bpf_ktime_get_ns() */
	__u64 func_ip;  /* the probed address (uretprobe: the function, see KUPROBE_CFG_FUNC) */
	__u64 pid_tgid; /* bpf_get_current_pid_tgid() */
	char comm[16];
	__u64 regs[KUPROBE_NREGS]; /* struct pt_regs of the trapped context */
	__u8 stack[KUPROBE_STACK_BYTES];
};

/* A captured event: the event, then what was read at the hit. */
struct kuprobe_captured {
	__u64 addr[KUPROBE_CAPTURES]; /* where each was read */
	__s32 len[KUPROBE_CAPTURES];  /* bytes read (a string: with its NUL), or -errno */
	__u8 data[KUPROBE_CAPTURES][KUPROBE_CAPTURE_BYTES];
	__s32 user_stack;   /* kuprobe_stacks id of the user stack, or -errno (-1: not asked) */
	__s32 kernel_stack; /* kuprobe_stacks id of the kernel stack, or -errno */
};

struct kuprobe_event_captured {
	struct kuprobe_event ev;
	struct kuprobe_captured cap;
};

#endif
