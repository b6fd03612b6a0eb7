"""The toolkit that ships to users: the netns topology, traffic helpers, the
kernel VXLAN twin and the pytest plugin's throughput test beds."""
