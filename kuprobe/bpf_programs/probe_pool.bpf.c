/* kuprobe's one probe program, compiled once per process by BCC. Every registered probe is
 * a slot: each kernel kprobe/kretprobe/uprobe/uretprobe attachment carries its slot number as
 * the BPF cookie (a perf-event link, or a uprobe_multi link), and the slot's kuprobe_cfg
 * entry says what to do. Registering a probe costs an attach, never a compile.
 *
 * Parameters (compile-time -D, integers only, filled by kuprobe/live/codegen.py):
 *   KUPROBE_NSLOTS, KUPROBE_RINGBUF_PAGES, KUPROBE_NREGS */
#include <uapi/linux/ptrace.h>
#include "kuprobe_event.h"

BPF_ARRAY(kuprobe_cfg, struct kuprobe_slot_cfg, KUPROBE_NSLOTS);
BPF_PERCPU_ARRAY(kuprobe_counts, struct kuprobe_counts, KUPROBE_NSLOTS);
BPF_HASH(kuprobe_removed, struct kuprobe_removed_key, __u8, 4096);
BPF_RINGBUF_OUTPUT(kuprobe_events, KUPROBE_RINGBUF_PAGES);

static __always_inline int kuprobe_fire(struct pt_regs *ctx, __u32 slot)
{
	struct kuprobe_slot_cfg *cfg = kuprobe_cfg.lookup(&slot);
	if (!cfg)
		return 0;
	__u32 flags = cfg->flags;
	if (flags & KUPROBE_CFG_OFF)
		return 0;
	/* The count-only fast path reads nothing more: one array lookup and an increment. */
	if (cfg->tgid || (flags & KUPROBE_CFG_REMOVABLE)) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (cfg->tgid && cfg->tgid != tgid)
			return 0;
		struct kuprobe_removed_key key = {.slot = slot, .tgid = tgid};
		if ((flags & KUPROBE_CFG_REMOVABLE) && kuprobe_removed.lookup(&key))
			return 0;
	}
	struct kuprobe_counts *c = kuprobe_counts.lookup(&slot);
	if (!c)
		return 0;
	c->hits++;
	if (!(flags & KUPROBE_CFG_STREAM))
		return 0;
	struct kuprobe_event *e = kuprobe_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		c->lost++;
		return 0;
	}
	e->slot = slot;
	e->flags = (flags & KUPROBE_CFG_RET) ? KUPROBE_EV_RET : 0;
	e->ts = bpf_ktime_get_ns();
	e->func_ip = bpf_get_func_ip(ctx);
	e->pid_tgid = bpf_get_current_pid_tgid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel(e->regs, sizeof(e->regs), ctx);
	void *sp = (void *)PT_REGS_SP(ctx);
	long err = (flags & KUPROBE_CFG_KERNEL)
		? bpf_probe_read_kernel(e->stack, sizeof(e->stack), sp)
		: bpf_probe_read_user(e->stack, sizeof(e->stack), sp);
	if (err)
		e->flags |= KUPROBE_EV_NOSTACK;
	kuprobe_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

int kuprobe_probe(struct pt_regs *ctx)
{
	__u64 slot = bpf_get_attach_cookie(ctx);
	if (slot >= KUPROBE_NSLOTS)
		return 0;
	return kuprobe_fire(ctx, (__u32)slot);
}
