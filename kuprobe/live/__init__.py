"""The live backend: probes on the running kernel, through BPF programs BCC compiles."""
