"""Mirror the Linux IPv4 neighbor table into a pinned BPF map for XDP."""

__version__ = "0.1.0"
