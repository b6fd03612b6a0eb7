"""Unit tests: pure Python (the wire codecs against scapy, configuration and CNI
parsing), with hypothesis where the input space is large. Nothing here needs
root, a namespace or a process; these run anywhere in seconds."""
