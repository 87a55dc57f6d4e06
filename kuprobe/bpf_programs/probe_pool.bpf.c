/* kuprobe's one probe program, compiled once per process by BCC. Every registered probe is
 * a slot: each kernel kprobe/kretprobe/uprobe/uretprobe attachment carries its slot number as
 * the BPF cookie (a perf-event link, or a uprobe_multi link), and the slot's kuprobe_cfg
 * entry says what to do. Registering a probe costs an attach, never a compile.
 *
 * Parameters (compile-time -D, integers only, filled by kuprobe/live/codegen.py):
 *   KUPROBE_NSLOTS, KUPROBE_RINGBUF_PAGES, KUPROBE_NREGS, KUPROBE_REG_SP, KUPROBE_REG_IP
 *
 * struct pt_regs stays incomplete here: the program copies it whole (KUPROBE_NREGS words) and
 * takes the stack pointer from the copy (word KUPROBE_REG_SP), and the instruction pointer
 * from ctx (word KUPROBE_REG_IP), so no kernel header defines it: <uapi/linux/ptrace.h> alone
 * was a third of the compile. */
#include "kuprobe_event.h"

BPF_ARRAY(kuprobe_cfg, struct kuprobe_slot_cfg, KUPROBE_NSLOTS);
BPF_PERCPU_ARRAY(kuprobe_counts, struct kuprobe_counts, KUPROBE_NSLOTS);
BPF_ARRAY(kuprobe_capcfg, struct kuprobe_slot_captures, KUPROBE_NSLOTS);
BPF_STACK_TRACE(kuprobe_stacks, 4096); /* stacks of the probes that ask (--stack) */
BPF_HASH(kuprobe_removed, struct kuprobe_removed_key, __u8, 4096);
BPF_RINGBUF_OUTPUT(kuprobe_events, KUPROBE_RINGBUF_PAGES);
/* Runs of the program in progress, per slot and CPU (a run stays on its CPU: the kernel
 * disables migration around it). Unregistering sets KUPROBE_CFG_OFF, then waits for the
 * slot's sum to reach 0: every run that missed the flag has then finished its event. */
BPF_PERCPU_ARRAY(kuprobe_inflight, __s64, KUPROBE_NSLOTS);
/* Where a uprobe with a uretprobe was hit, per registration and process (KUPROBE_CFG_FUNC):
 * the uretprobe's func on kernels whose bpf_get_func_ip() gives 0 for uprobes (before 6.6).
 * A process evicted or never seen here leaves it 0, and Python reads its mappings instead. */
BPF_TABLE("lru_hash", struct kuprobe_func_key, __u64, kuprobe_funcs, 16384);

/* The probe-read helpers under our own names. BCC's front end (0.26) looks each call it sees
 * to bpf_probe_read_{kernel,user}[_str] up in /proc/kallsyms (check_bpf_probe_read_user()),
 * to fall back to bpf_probe_read on kernels before 5.5; the pool needs 5.8+ anyway (the ring
 * buffer, checked before the compile). The compile's private view (kuprobe/live/bcc.py)
 * answers BCC's kallsyms questions from a small file; these names keep them from being asked
 * where that view is refused. */
static long (*kuprobe_read_kernel)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_kernel;
static long (*kuprobe_read_user)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_user;
static long (*kuprobe_read_kernel_str)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_kernel_str;
static long (*kuprobe_read_user_str)(void *dst, __u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_user_str;

/* A uretprobe's handlers get func: kernel/events/uprobes.c's ri->func, the bp_vaddr of the
 * function's entry, which bpf_get_func_ip() reads only since Linux 6.6 ("bpf: Add
 * bpf_get_func_ip support for uprobe link"); before, it gives 0 for every uprobe. So the
 * entry slot of a probe with a uretprobe (KUPROBE_CFG_FUNC) notes bp_vaddr where it gives 0:
 * handle_swbp() has set the ip to bp_vaddr before handler_chain() runs the consumers (on
 * every arch, and so does the uprobe syscall of x86's optimised uprobes), and the consumers
 * run before prepare_uretprobe() takes the return address, so a return of a call entered
 * while the probe was registered follows a run of its entry slot in that process. (A call
 * entered before finds nothing, func_id being this registration's: Python's fallback.) */
static __always_inline __u64 kuprobe_func_ip(struct pt_regs *ctx, __u32 flags)
{
	return (flags & KUPROBE_CFG_NO_FUNC_IP) ? 0 : bpf_get_func_ip(ctx);
}

static __always_inline void kuprobe_note_func(struct pt_regs *ctx, __u32 flags, __u32 func_id)
{
	if (kuprobe_func_ip(ctx, flags))
		return; /* the return run reads it itself */
	struct kuprobe_func_key key = {.func_id = func_id,
				       .tgid = bpf_get_current_pid_tgid() >> 32};
	__u64 ip = ((__u64 *)ctx)[KUPROBE_REG_IP];
	kuprobe_funcs.update(&key, &ip);
}

static __always_inline void kuprobe_fill(struct pt_regs *ctx, struct kuprobe_event *e,
					 __u32 slot, __u32 flags, __u32 func_id)
{
	e->slot = slot;
	e->flags = (flags & KUPROBE_CFG_RET) ? KUPROBE_EV_RET : 0;
	e->ts = bpf_ktime_get_ns();
	e->func_ip = kuprobe_func_ip(ctx, flags);
	e->pid_tgid = bpf_get_current_pid_tgid();
	if (!e->func_ip && (flags & KUPROBE_CFG_FUNC)) {
		struct kuprobe_func_key key = {.func_id = func_id, .tgid = e->pid_tgid >> 32};
		__u64 *func = kuprobe_funcs.lookup(&key);
		if (func)
			e->func_ip = *func;
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	kuprobe_read_kernel(e->regs, sizeof(e->regs), ctx);
	void *sp = (void *)e->regs[KUPROBE_REG_SP];
	long err = (flags & KUPROBE_CFG_KERNEL)
		? kuprobe_read_kernel(e->stack, sizeof(e->stack), sp)
		: kuprobe_read_user(e->stack, sizeof(e->stack), sp);
	if (err)
		e->flags |= KUPROBE_EV_NOSTACK;
}

/* Read what the slot's captures name, on the spot: the address from a register or a stack
 * word of the snapshot just taken, plus an offset. Only integers come from the map. */
static __always_inline void kuprobe_capture(struct kuprobe_event *e,
					    struct kuprobe_captured *out,
					    struct kuprobe_slot_captures *sc)
{
#pragma clang loop unroll(disable)
	for (int i = 0; i < KUPROBE_CAPTURES; i++) {
		struct kuprobe_capture_cfg *c = &sc->cap[i];
		out->addr[i] = 0;
		out->len[i] = 0;
		if (c->kind == KUPROBE_CAP_NONE)
			continue;
		__u32 idx = c->index;
		__u64 base = 0;
		if (c->src == KUPROBE_SRC_REG) {
			if (idx >= KUPROBE_NREGS)
				continue;
			base = e->regs[idx];
		} else if (c->src == KUPROBE_SRC_STACK64) {
			if (idx >= KUPROBE_STACK_BYTES / 8)
				continue;
			base = ((__u64 *)e->stack)[idx];
		} else {
			if (idx >= KUPROBE_STACK_BYTES / 4)
				continue;
			base = ((__u32 *)e->stack)[idx];
		}
		__u64 addr = base + c->offset;
		if (c->mask32)
			addr &= 0xffffffff;
		out->addr[i] = addr;
		__u32 n = c->size;
		if (n > KUPROBE_CAPTURE_BYTES)
			n = KUPROBE_CAPTURE_BYTES;
		int kernel = c->space == KUPROBE_CAP_KERNEL ||
			     (c->space == KUPROBE_CAP_AUTO && (addr >> 63));
		long r;
		if (c->kind == KUPROBE_CAP_STR) {
			r = kernel ? kuprobe_read_kernel_str(out->data[i], n, (void *)addr)
				   : kuprobe_read_user_str(out->data[i], n, (void *)addr);
		} else {
			r = kernel ? kuprobe_read_kernel(out->data[i], n, (void *)addr)
				   : kuprobe_read_user(out->data[i], n, (void *)addr);
			if (r == 0)
				r = n;
		}
		out->len[i] = r;
	}
}

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
	if ((flags & (KUPROBE_CFG_FUNC | KUPROBE_CFG_RET)) == KUPROBE_CFG_FUNC)
		kuprobe_note_func(ctx, flags, cfg->func_id);
	if (!(flags & KUPROBE_CFG_STREAM))
		return 0;
	if (flags & (KUPROBE_CFG_CAPTURE | KUPROBE_CFG_STACK)) {
		struct kuprobe_slot_captures *sc = kuprobe_capcfg.lookup(&slot);
		if (!sc)
			return 0;
		struct kuprobe_event_captured *ec = kuprobe_events.ringbuf_reserve(sizeof(*ec));
		if (!ec) {
			c->lost++;
			return 0;
		}
		kuprobe_fill(ctx, &ec->ev, slot, flags, cfg->func_id);
		ec->ev.flags |= KUPROBE_EV_CAPTURED;
		kuprobe_capture(&ec->ev, &ec->cap, sc);
		ec->cap.user_stack = -1;
		ec->cap.kernel_stack = -1;
		if (flags & KUPROBE_CFG_STACK) {
			if (flags & KUPROBE_CFG_KERNEL)
				ec->cap.kernel_stack = kuprobe_stacks.get_stackid(ctx, 0);
			else
				ec->cap.user_stack = kuprobe_stacks.get_stackid(ctx, BPF_F_USER_STACK);
		}
		kuprobe_events.ringbuf_submit(ec, BPF_RB_NO_WAKEUP);
		return 0;
	}
	struct kuprobe_event *e = kuprobe_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		c->lost++;
		return 0;
	}
	kuprobe_fill(ctx, e, slot, flags, cfg->func_id);
	kuprobe_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

int kuprobe_probe(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	if (cookie >= KUPROBE_NSLOTS)
		return 0;
	__u32 slot = cookie;
	__s64 *inflight = kuprobe_inflight.lookup(&slot);
	if (!inflight)
		return 0;
	/* A fetching atomic is fully ordered (a full barrier on every JIT): the count is
	 * visible before kuprobe_fire() reads the slot's flags. Its pair is the unregistering
	 * side's store of KUPROBE_CFG_OFF, a full barrier, and its read of these counts. */
	if (__sync_fetch_and_add(inflight, 1) < 0)
		return 0;
	kuprobe_fire(ctx, slot);
	__sync_fetch_and_add(inflight, -1);
	return 0;
}
