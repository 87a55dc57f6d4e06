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

/* struct kuprobe_event.flags */
#define KUPROBE_EV_RET     0x1 /* a return event */
#define KUPROBE_EV_NOSTACK 0x2 /* the stack words could not be read */

struct kuprobe_slot_cfg {
	__u32 flags;
	__u32 tgid; /* 0: every process */
};

struct kuprobe_counts {
	__u64 hits; /* the probe fired (after the pid filter) */
	__u64 lost; /* an event could not be reserved in the ring buffer */
};

struct kuprobe_removed_key {
	__u32 slot;
	__u32 tgid;
};

struct kuprobe_event {
	__u32 slot;
	__u32 flags;
	__u64 ts;       /* bpf_ktime_get_ns() */
	__u64 func_ip;  /* bpf_get_func_ip(): the probed address (uretprobe: the function) */
	__u64 pid_tgid; /* bpf_get_current_pid_tgid() */
	char comm[16];
	__u64 regs[KUPROBE_NREGS]; /* struct pt_regs of the trapped context */
	__u8 stack[KUPROBE_STACK_BYTES];
};

#endif
