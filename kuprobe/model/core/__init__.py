"""Generic probe code: kernel/kprobes.c and kernel/events/uprobes.c; never names an arch."""
