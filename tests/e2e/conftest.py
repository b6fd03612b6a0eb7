"""End to end in network namespaces: nodes (``Node`` engines) and pods (real
TAPs), built with ``overlay.testing.cluster`` on the plugin's
``overlay_topology``, checked with real traffic (ping, verified TCP, iperf3),
tshark captures and the kernel's own VXLAN device as a peer; and real podman
containers on overlayd nodes (``test_podman.py``). Needs root."""
