"""overlayd as operators and runtimes use it: real daemon processes in node
namespaces (the plugin's ``overlay_daemons``), driven through the local API,
the ``overlay`` CLI and the real ``overlay-cni`` executable with CNI_*
variables, with Debian's CNI plugins as delegates and a real etcd. Needs root."""
